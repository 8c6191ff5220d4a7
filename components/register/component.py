from kfp import dsl
from kfp.dsl import Input, Model

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(bundle: Input[Model], name: str, evaluation: dict) -> dict:
    """Register the bundle as one MLflow pyfunc model version, tagged with its lineage."""
    from easel.steps import input_location, register_step
    return register_step(input_location(bundle.path), name, evaluation=evaluation)
