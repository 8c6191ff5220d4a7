"""The recaption pipeline (DALL-E 3): train the captioner on an ingested dataset's curated subset,
write short and long synthetic captions for every image, and seal them as a new dataset version."""
from kfp import dsl

from components.version.component import version
from pipelines import cluster
from pipelines.lifecycle import RECAPTION_GROUPS, import_dataset, recaption_stage, shared_parts
from pipelines.params import documented


@dsl.pipeline(name="easel-recaption",
              description="Captioner on the curated subset -> short + long synthetic captions for every image "
                          "(filtered, original as fallback) -> a new dataset version")
@documented()
def recaption_pipeline(dataset_uri: str, dataset_version: str = "", preset: str = "tiny", overrides: str = "",
                       recaption_groups: int = RECAPTION_GROUPS, recaption_threads: int = 0, workdir: str = "") -> dict:
    imp, _ = import_dataset(dataset_uri, dataset_version)
    tok, clip = shared_parts(imp.output, preset, overrides, workdir)
    rec, _ = recaption_stage(imp.output, tok.outputs["model"], clip.outputs["model"], preset, overrides, workdir,
                             recaption_groups, recaption_threads)
    return cluster.cpu(version(dataset=rec.outputs["dataset"]), cache=False).output
