"""The sizes and small helpers the component tests share: the tiny preset shrunk through the
components' `overrides` parameter (60 images in two shards, two optimizer steps per network,
one prompt per evaluation category)."""
import json

from kfp import dsl

PRESET = "tiny"
N_IMAGES = 60
STEPS = 2  # optimizer steps per network: enough to write, resume-tag and log a real run
OVERRIDES = {
    "data": {"n": N_IMAGES, "shard_size": 32},  # two shards: the recaption fan-out has two items
    "train": {"steps": {p: STEPS for p in ("dvae", "transformer", "clip", "captioner", "prior", "decoder",
                                           "upsampler")},
              "batch_size": 8, "log_every": 1},
    "recaption": {"max_retries": 0},  # an untrained captioner is rejected anyway: no regeneration
    "evaluate": {"n_per_category": 1, "samples_per_prompt": 2, "heldout_images": 8, "grid_prompts": 1},
    "prior": {"sample_steps": 2}, "decoder": {"sample_steps": 2}, "upsampler": {"sample_steps": 2},
}
OV = json.dumps(OVERRIDES)  # KFP parameters carry overrides as a JSON string
GENERATOR_POLICY = "blend"  # the lifecycle's default caption policy for the generators
BROKEN_KEY, DUPLICATE_KEY = "broken-png", "copy-of-first"  # the bad records added before ingest


def with_overrides(**sections) -> str:
    """OV with some sections deep-merged (e.g. stricter gates); still a JSON string."""
    from model_code.config import deep_merge
    return json.dumps(deep_merge(OVERRIDES, sections))


def location(artifact: dsl.Artifact) -> str:
    """The data behind an artifact (follows the reference a component writes with a workdir)."""
    from easel.steps import input_location
    return input_location(artifact.path)
