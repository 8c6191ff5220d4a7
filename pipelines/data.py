"""The data pipeline: synthesize -> ingest -> validate -> version."""
from kfp import dsl

from pipelines.lifecycle import data_stage


@dsl.pipeline(name="easel-data", description="Shapes-world synthesis, ingest, validation and versioning")
def data_pipeline(preset: str = "tiny", overrides: str = "", seed: int = 0, workdir: str = "") -> dict:
    _, ver = data_stage(preset, overrides, seed, workdir)
    return ver.output
