"""Shared inputs for the component tests: one tiny chain of real component runs per session,
wired as pipelines/lifecycle.py wires it (synth -> ingest -> tokenizer -> CLIP -> captioner ->
recaption -> generator parts -> bundles -> evaluations). Every fixture below is one kfp.local
task (tests/components/kfp_local.py) whose outputs later tasks take as inputs; a test asks only
for what it checks, so running one file runs only the chain it needs.

Sizes: tests/components/tiny.py. Each task is a subprocess that imports torch (and Lightning
for training), which is most of the time spent.
"""
import json
import os
import shutil

import pytest
from kfp import dsl

from tests.components.kfp_local import init, run, run_parallel
from tests.components.tiny import BROKEN_KEY, DUPLICATE_KEY, GENERATOR_POLICY, OV, PRESET, location


@pytest.fixture(scope="session")
def kfp_local(tmp_path_factory):
    """kfp.local as the lifecycle sets it up, with every store in a temporary directory: the
    tasks are subprocesses that inherit this environment, so MLflow (EASEL_HOME), the pipeline
    root and the work directory all stay out of the repository."""
    root = tmp_path_factory.mktemp("kfp-local")
    env = {"EASEL_HOME": str(root / "easel"),
           # one intra-op thread in every task: the models are tiny and the box has 2 shared cores
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # a tracking URI left by another test would send these runs elsewhere; configure() sets it
    # again (to the store under EASEL_HOME) in-process, so everything is restored afterwards
    keys = [*env, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"]
    saved = {k: os.environ.get(k) for k in keys}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(k, None)
    os.environ.update(env)
    init(str(root / "pipeline-root"))
    yield {"root": root, "workdir": str(root / "work")}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---------------------------------------------------------------- data stage (with a workdir,
# as `easel run local` runs it: artifacts hold references into the work directory)
@pytest.fixture(scope="session")
def synthesized(kfp_local):
    from components.synth.component import synth
    return run(synth, preset=PRESET, overrides=OV, seed=0, workdir=kfp_local["workdir"])


@pytest.fixture(scope="session")
def raw_source(synthesized, kfp_local):
    """The synthesized source plus two bad records, so that ingest has something to quarantine
    and to deduplicate: a truncated PNG and a byte-identical copy of the first image."""
    src = kfp_local["root"] / "raw-with-bad-records"
    shutil.copytree(location(synthesized["raw"]), src)
    first = json.loads((src / "captions.jsonl").read_text().splitlines()[0])
    png = (src / first["file"]).read_bytes()
    (src / "images" / f"{BROKEN_KEY}.png").write_bytes(png[: len(png) // 2])
    (src / "images" / f"{DUPLICATE_KEY}.png").write_bytes(png)
    with open(src / "captions.jsonl", "a") as f:
        for key in (BROKEN_KEY, DUPLICATE_KEY):
            f.write(json.dumps({"key": key, "file": f"images/{key}.png", "caption": "a shape"}) + "\n")
    return dsl.Dataset(uri=str(src))


@pytest.fixture(scope="session")
def ingested(raw_source, kfp_local):
    from components.ingest.component import ingest
    return run(ingest, raw=raw_source, preset=PRESET, overrides=OV, workdir=kfp_local["workdir"])


@pytest.fixture(scope="session")
def dataset(ingested):
    return ingested["dataset"]


@pytest.fixture(scope="session")
def versioned(dataset):
    from components.version.component import version
    return run(version, dataset=dataset)


# ---------------------------------------------------------------- shared parts (no workdir:
# the artifact itself holds the model, as on a cluster with the pipeline's default workdir="")
def train(component, dataset, caption_policy: str = "", **deps):
    return run(component, dataset=dataset, preset=PRESET, overrides=OV, caption_policy=caption_policy,
               name=component.name, workdir="", **deps)


@pytest.fixture(scope="session")
def tokenizer(dataset):
    from components.train_tokenizer.component import train_tokenizer
    return train(train_tokenizer, dataset)


@pytest.fixture(scope="session")
def clip(dataset, tokenizer):
    from components.train_clip.component import train_clip
    return train(train_clip, dataset, tokenizer=tokenizer["model"])


# ---------------------------------------------------------------- recaption stage
@pytest.fixture(scope="session")
def captioner(dataset, tokenizer, clip):
    from components.train_captioner.component import train_captioner
    return train(train_captioner, dataset, tokenizer=tokenizer["model"], clip=clip["model"])


@pytest.fixture(scope="session")
def groups(dataset):
    from components.shard_groups.component import shard_groups
    return run(shard_groups, dataset=dataset, groups=2)


@pytest.fixture(scope="session")
def recaption_part(dataset, captioner, tokenizer, clip, groups):
    """One fan-out item covering every shard group: the items all run this same code, and one
    captioner subprocess instead of one per group keeps the session short."""
    from components.recaption.component import recaption
    shards = [s for group in groups["Output"] for s in group]
    return run(recaption, dataset=dataset, captioner=captioner["model"], tokenizer=tokenizer["model"],
               clip=clip["model"], shards=shards, preset=PRESET, overrides=OV, workdir="", threads=1)


@pytest.fixture(scope="session")
def recaptioned(dataset, recaption_part):
    from components.recaption_finalize.component import recaption_finalize
    return run(recaption_finalize, parent=dataset, parts=[recaption_part["captions"]], workdir="")


# ---------------------------------------------------------------- generator parts (on the
# recaptioned dataset, as in the lifecycle)
@pytest.fixture(scope="session")
def generators(recaptioned, tokenizer, clip):
    """dVAE -> transformer, prior, decoder and upsampler: independent branches of the lifecycle's
    DAG, trained two at a time."""
    from components.train_decoder.component import train_decoder
    from components.train_dvae.component import train_dvae
    from components.train_prior.component import train_prior
    from components.train_transformer.component import train_transformer
    from components.train_upsampler.component import train_upsampler
    ds, text = recaptioned["dataset"], {"tokenizer": tokenizer["model"]}

    def dalle():
        dvae = train(train_dvae, ds)
        return {"dvae": dvae, "transformer": train(train_transformer, ds, GENERATOR_POLICY, dvae=dvae["model"],
                                                   **text)}

    out = run_parallel({
        "dalle": dalle,
        "prior": lambda: train(train_prior, ds, GENERATOR_POLICY, clip=clip["model"], **text),
        "decoder": lambda: train(train_decoder, ds, GENERATOR_POLICY, clip=clip["model"], **text),
        "upsampler": lambda: train(train_upsampler, ds)})
    return {**out.pop("dalle"), **out}


# ---------------------------------------------------------------- bundles and their evaluations
@pytest.fixture(scope="session")
def releases(tokenizer, clip, generators, versioned, recaptioned, captioner):
    """Per recipe: bundle -> evaluate on the recaptioned dataset's held-out prompts; the two
    recipes run side by side. The DALL-E bundle keeps the captioner (as the lifecycle's do, for
    `rerank: captioner`); the unCLIP one is given none (the component's input is optional)."""
    from components.bundle_dalle.component import bundle_dalle
    from components.bundle_unclip.component import bundle_unclip
    from components.evaluate.component import evaluate
    g = {k: v["model"] for k, v in generators.items()}
    shared = {"tokenizer": tokenizer["model"], "clip": clip["model"], "preset": PRESET,
              "dataset": versioned["Output"], "workdir": ""}

    def release(recipe, component, parts):
        bundle = run(component, name=f"bundle-{recipe}", **parts, **shared)
        evaluation = run(evaluate, bundle=bundle["bundle"], dataset=recaptioned["dataset"], preset=PRESET,
                         overrides=OV, name=f"evaluation-{recipe}", workdir="")
        return {"bundle": bundle, "evaluation": evaluation}

    return run_parallel({
        "dalle": lambda: release("dalle", bundle_dalle, {"dvae": g["dvae"], "transformer": g["transformer"],
                                                          "captioner": captioner["model"]}),
        "unclip": lambda: release("unclip", bundle_unclip, {k: g[k] for k in ("prior", "decoder", "upsampler")})})
