from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(bundle: Input[Model], dataset: Input[Dataset], preset: str, overrides: str, name: str, workdir: str,
             metrics: Output[Metrics], report: Output[Markdown]) -> dict:
    """Prompt following (oracle-judged), CLIP score, FD, diversity, dVAE and captioner metrics."""
    from easel.steps import evaluate_step, input_location, output_location, publish
    result = evaluate_step(input_location(bundle.path), input_location(dataset.path),
                           output_location(report.path + ".d", workdir, name), preset, overrides,
                           markdown_path=report.path)
    return publish(result, metrics)
