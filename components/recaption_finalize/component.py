from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def recaption_finalize(parent: Input[Dataset], parts: Input[List[Dataset]], workdir: str,
                       dataset: Output[Dataset]) -> dict:
    """Seal the fan-out's caption sidecars as a new dataset version with lineage to the parent."""
    from easel.steps import input_location, output_location, publish, recaption_finalize_step
    summary = recaption_finalize_step(output_location(dataset.path, workdir, "recaptioned"),
                                      input_location(parent.path), [input_location(p.path) for p in parts])
    return publish(summary, artifact=dataset, scalars=("records", "version", "content_hash", "parent", "path"))
