from kfp import dsl
from kfp.dsl import Dataset, Input, Output, HTML

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate(dataset: Input[Dataset], preset: str, overrides: str, report: Output[HTML]) -> dict:
    """The Great Expectations suite and its HTML report. A failed suite does not fail this step (a
    failed task publishes no artifacts, and the report is what the user needs then): its result
    says success false, and the require_valid step after it stops the run."""
    from easel.steps import input_location, validate_step
    return validate_step(input_location(dataset.path), preset, overrides, report_path=report.path, require=False)
