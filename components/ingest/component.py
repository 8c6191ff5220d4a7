from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(raw: Input[Dataset], preset: str, overrides: str, workdir: str,
           dataset: Output[Dataset]) -> dict:
    """Decode, verify, normalise, dedup and shard a source; bad records are quarantined."""
    from easel.steps import ingest_step, input_location, output_location, publish
    summary = ingest_step(input_location(raw.path), output_location(dataset.path, workdir, "dataset"),
                          preset, overrides)
    return publish(summary, artifact=dataset,
                   scalars=("input", "accepted", "quarantined", "duplicates", "shards", "size", "out"))
