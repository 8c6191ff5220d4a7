"""The lifecycle's steps with their parameters resolved from a preset.

The CLI's `easel run local`, the KFP components and Python users all call these: one
function per step, taking a preset name (plus overrides) and URIs, returning a JSON-ready
summary. The step does nothing but resolve configuration and call the library.
"""
from __future__ import annotations

import json
import os
from typing import Any

from model_code import storage
from model_code.config import deep_merge, load_preset

REF_FILE = "easel-ref.json"


def output_location(artifact_path: str, workdir: str = "", name: str = "") -> str:
    """Where a step writes its output. With no workdir: the KFP artifact path itself. With a
    workdir (a stable local dir or s3:// prefix): `workdir/name`, and the artifact holds a small
    reference to it, so that a re-run after a kill finds the step's partial work and resumes it,
    and large data stays in the object store instead of being copied between steps."""
    if not workdir:
        return artifact_path
    target = storage.join(workdir, name)
    storage.write_text(storage.join(artifact_path, REF_FILE), json.dumps({"uri": target}))
    return target


def input_location(artifact_path: str) -> str:
    """The data behind an artifact: follows a reference written by output_location."""
    ref = storage.join(artifact_path, REF_FILE)
    if storage.exists(ref):
        return json.loads(storage.read_text(ref))["uri"]
    return artifact_path


def _overrides(overrides: dict | str | None) -> dict:
    """Overrides arrive as a dict (Python) or a JSON string (KFP parameters, '' = none)."""
    if isinstance(overrides, str):
        return json.loads(overrides) if overrides.strip() else {}
    return dict(overrides or {})


def _cfg(preset: str, overrides: dict | str | None) -> dict:
    return load_preset(preset, _overrides(overrides) or None)


def synth_step(out: str, preset: str = "tiny", overrides: dict | str | None = None,
               seed: int | None = None) -> dict[str, Any]:
    """Write a raw Shapes-world source of the preset's size."""
    from model_code.data.synth import synthesize
    d = _cfg(preset, overrides)["data"]
    return synthesize(out, n=int(d["n"]), size=int(d["size"]),
                      seed=int(seed if seed is not None else d.get("seed", 0)),
                      curated_fraction=float(d["curated_fraction"]))


def ingest_step(source: str, out: str, preset: str = "tiny",
                overrides: dict | str | None = None) -> dict[str, Any]:
    """Ingest any supported source at the preset's resolution, with its held-out split."""
    from model_code.data.ingest import ingest
    d = _cfg(preset, overrides)["data"]
    return ingest(source, out, size=int(d["size"]), shard_size=int(d["shard_size"]),
                  heldout_fraction=float(d.get("heldout_fraction", 0.0)), progress=True)


def validate_step(dataset: str, preset: str = "tiny", overrides: dict | str | None = None,
                  report_path: str | None = None) -> dict[str, Any]:
    """Run the validation suite; raises ValidationFailed (the run stops) when it fails.
    The JSON report goes to the dataset's validation.json (DVC ignores it: validating does not
    change the version); report_path, when given, gets the HTML page (the component's HTML
    artifact, which the KFP UI renders)."""
    from model_code.data.validate import require_valid
    d = _cfg(preset, overrides)["data"]
    return require_valid(dataset, thresholds=d.get("validate"), html_report=report_path or False)


def version_step(dataset: str) -> dict[str, Any]:
    """The dataset's version id and lineage (DVC content hash + git revision)."""
    from model_code.data.version import lineage
    return {"dataset": dataset, **lineage(dataset)}


def train_step(part: str, dataset: str, out: str, preset: str = "tiny",
               overrides: dict | str | None = None, deps: dict[str, str] | None = None,
               caption_policy: str = "") -> dict[str, Any]:
    """Train one part (tokenizer, dvae, transformer, clip, captioner, prior, decoder, upsampler)."""
    from model_code.train.run import train_part
    over = _overrides(overrides)
    if caption_policy:  # generator parts only: the captioner keeps its curated captions
        over = deep_merge(over, {"train": {"caption_policy": caption_policy}})
    return train_part(part, preset, data=dataset, out=out, overrides=over or None,
                      deps={k: v for k, v in (deps or {}).items() if v})


def shard_groups_step(dataset: str, groups: int) -> list[list[str]]:
    """Split a dataset's shards into at most `groups` groups (the recaption fan-out)."""
    from model_code.data.dataset import shard_list
    names = [u.rstrip("/").rsplit("/", 1)[-1] for u in shard_list(dataset)]
    groups = max(1, min(int(groups), len(names)))
    return [names[i::groups] for i in range(groups)]


def recaption_step(dataset: str, out: str, captioner: str, tokenizer: str, clip: str = "",
                   shards: list[str] | None = None, preset: str = "tiny",
                   overrides: dict | str | None = None) -> dict[str, Any]:
    """Recaption some shards of a dataset into caption sidecars under `out` (resumable)."""
    from model_code.recaption.job import recaption
    return recaption(dataset, out, captioner=captioner, tokenizer=tokenizer, clip=clip or None,
                     shards=shards, preset=_cfg(preset, overrides), finalize_out=shards is None)


def recaption_finalize_step(out: str, parent: str, parts: list[str] | None = None) -> dict[str, Any]:
    """Gather the sidecars of the fan-out's parts into `out` and seal them as a new dataset
    version with lineage to its parent."""
    from model_code.recaption.job import finalize
    for part in parts or []:
        if part.rstrip("/") == out.rstrip("/"):
            continue  # the fan-out wrote straight into the shared work dir
        for uri in storage.ls(storage.join(part, "captions"), "*.parquet"):
            storage.write_bytes(storage.join(out, "captions", uri.rstrip("/").rsplit("/", 1)[-1]),
                                storage.read_bytes(uri))
    return finalize(out, parent)


def bundle_step(recipe: str, parts: dict[str, str], out: str, preset: str = "tiny",
                dataset: dict | None = None) -> dict[str, Any]:
    """Assemble the trained parts of a recipe into one generation bundle. Its lineage names the
    dataset version (`dataset`: version_step's summary), the git revision and the MLflow run
    that trained each part (read from the part's train_state.json)."""
    from model_code.data.version import git_revision
    from model_code.generate import read_bundle_meta, save_bundle
    runs = {}
    for part, uri in parts.items():
        state = storage.join(uri, "train_state.json")
        if storage.exists(state):
            runs[part] = json.loads(storage.read_text(state)).get("summary", {}).get("mlflow_run_id")
    lineage = {"dataset_version": (dataset or {}).get("version"), "dataset": (dataset or {}).get("dataset"),
               "git_revision": (dataset or {}).get("git_rev") or git_revision(os.getcwd()),
               "train_run_ids": {k: v for k, v in runs.items() if v}}
    save_bundle(out, recipe, parts, preset=preset, lineage=lineage)
    return {"bundle": out, **read_bundle_meta(out)}


def evaluate_step(bundle: str, dataset: str, out: str, preset: str = "tiny",
                  overrides: dict | str | None = None) -> dict[str, Any]:
    """Evaluate a bundle on the dataset's held-out prompts (metrics, tables, grids, report)."""
    from model_code.evaluate.evaluate import evaluate
    return evaluate(bundle, dataset, out, preset=_cfg(preset, overrides))


def register_step(bundle: str, name: str, lineage: dict | None = None,
                  evaluation: dict | None = None) -> dict[str, Any]:
    """Register a bundle as a new version of `name` in the MLflow registry, with lineage; the
    model is logged into the evaluation's MLflow run when there is one."""
    from model_code.registry.registry import register_bundle
    return register_bundle(bundle, name, lineage=lineage, run_id=(evaluation or {}).get("run_id") or None)


def gate_step(registered: dict, evaluation: dict, preset: str = "tiny",
              overrides: dict | str | None = None) -> dict[str, Any]:
    """Judge a registered version (register_step's summary) on its evaluation (evaluate_step's)
    against the preset's gates and the production version; the record goes to MLflow and onto
    the version's tags."""
    from model_code.evaluate.gates import run_gate
    # the evaluation's inputs (settings, run id) with the recipe of the version being judged:
    # recipe-specific gates (e.g. dvae.psnr for dalle) need it
    inputs = {**(evaluation.get("inputs") or {}), "bundle_uri": registered.get("uri"),
              "report": evaluation.get("report")}
    inputs["recipe"] = registered.get("recipe") or inputs.get("recipe")
    return run_gate(registered["name"], registered["version"], evaluation["metrics"], _cfg(preset, overrides),
                    inputs=inputs)


def promote_step(registered: dict, alias: str = "production") -> dict[str, Any]:
    """Move an alias to a registered version; refused (GateError) without a passed gate record."""
    from model_code.registry.registry import promote
    return promote(registered["name"], registered["version"], alias=alias, user="pipeline")
