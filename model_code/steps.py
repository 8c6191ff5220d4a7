"""The lifecycle's steps with their parameters resolved from a preset.

The CLI's `easel run local`, the KFP components and Python users all call these: one
function per step, taking a preset name (plus overrides) and URIs, returning a JSON-ready
summary. The step does nothing but resolve configuration and call the library.
"""
from __future__ import annotations

import json
from typing import Any

from model_code import storage
from model_code.config import load_preset

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


def _cfg(preset: str, overrides: dict | str | None) -> dict:
    if isinstance(overrides, str):
        overrides = json.loads(overrides) if overrides.strip() else None
    return load_preset(preset, overrides)


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
    """Run the validation suite; raises ValidationFailed (the run stops) when it fails."""
    from model_code.data.validate import require_valid
    d = _cfg(preset, overrides)["data"]
    return require_valid(dataset, thresholds=d.get("validate"), report_path=report_path)


def version_step(dataset: str) -> dict[str, Any]:
    """The dataset's version id and lineage (DVC content hash + git revision)."""
    from model_code.data.version import lineage
    return {"dataset": dataset, **lineage(dataset)}
