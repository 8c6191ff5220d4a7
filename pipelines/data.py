"""The data pipeline: synthesize -> ingest -> validate -> version."""
from kfp import dsl

from components.ingest.component import ingest
from components.synth.component import synth
from components.validate.component import validate
from components.version.component import version


@dsl.pipeline(name="easel-data", description="Shapes-world synthesis, ingest, validation and versioning")
def data_pipeline(preset: str = "tiny", overrides: str = "", seed: int = 0, workdir: str = "") -> dict:
    raw = synth(preset=preset, overrides=overrides, seed=seed, workdir=workdir).set_display_name("synthesize")
    ing = ingest(raw=raw.outputs["raw"], preset=preset, overrides=overrides, workdir=workdir)
    val = validate(dataset=ing.outputs["dataset"], preset=preset, overrides=overrides)
    ver = version(dataset=ing.outputs["dataset"]).after(val)
    return ver.output
