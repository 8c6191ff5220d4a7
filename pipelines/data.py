"""The data pipeline: source (or the Shapes world) -> ingest -> validate -> version."""
from kfp import dsl

from pipelines.lifecycle import data_stage
from pipelines.params import documented


@dsl.pipeline(name="easel-data",
              description="Ingest a source (or a synthesized Shapes world), validate it and version it")
@documented()
def data_pipeline(source: str = "", dataset_version: str = "", preset: str = "tiny", overrides: str = "",
                  seed: int = 0, workdir: str = "") -> dict:
    _, ver = data_stage(preset, overrides, seed, workdir, source, dataset_version)
    return ver.output
