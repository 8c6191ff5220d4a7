"""The evaluate-and-promote pipeline: an existing bundle through evaluation, registration, the
gate and promotion (training on an existing dataset: pipelines/train.py)."""
from kfp import dsl
from kfp.dsl import Dataset, Model

from pipelines.lifecycle import release_stage
from pipelines.params import documented


@dsl.pipeline(name="easel-evaluate-promote",
              description="Evaluate a bundle on a dataset's held-out prompts, register it with lineage, "
                          "gate it against thresholds and production, and promote it")
@documented()
def evaluate_promote_pipeline(bundle_uri: str, dataset_uri: str, model_name: str = "easel-dalle",
                              recipe: str = "dalle", preset: str = "tiny", overrides: str = "",
                              gate_config: dict = {}, workdir: str = ""):  # noqa: B006 (a KFP default)
    bundle = dsl.importer(artifact_uri=bundle_uri, artifact_class=Model, reimport=False)
    dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=Dataset, reimport=False)
    release_stage(bundle.output, dataset.output, preset, overrides, model_name, workdir, "candidate", gate_config)
