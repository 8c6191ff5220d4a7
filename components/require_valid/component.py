from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def require_valid(validation: dict) -> dict:
    """Stop the run when the validation suite failed. A step of its own, so that the validate
    step (which never fails on a failed suite) has already published its HTML report to the UI."""
    from easel.steps import require_valid_step
    return require_valid_step(validation)
