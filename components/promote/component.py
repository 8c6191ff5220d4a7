from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote(registered: dict, alias: str) -> dict:
    """Move the alias (staging / production) to the version; refused without a passed gate."""
    from easel.steps import promote_step
    return promote_step(registered, alias)
