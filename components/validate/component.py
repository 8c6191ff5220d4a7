from kfp import dsl
from kfp.dsl import Dataset, Input, Output, HTML

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate(dataset: Input[Dataset], preset: str, overrides: str, report: Output[HTML]) -> dict:
    """The Great Expectations suite; a failed suite fails the step (and stops the run)."""
    from easel.steps import input_location, validate_step
    return validate_step(input_location(dataset.path), preset, overrides, report_path=report.path)
