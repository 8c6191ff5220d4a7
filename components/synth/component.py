from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def synth(preset: str, overrides: str, seed: int, workdir: str, raw: Output[Dataset]) -> dict:
    """Write a raw Shapes-world source (images, scene graphs, alt-text, curated captions)."""
    from model_code.steps import output_location, synth_step
    summary = synth_step(output_location(raw.path, workdir, "raw"), preset, overrides, seed=seed)
    raw.metadata.update({"n": summary["n"], "size": summary["size"]})
    return summary
