"""The lifecycle on the embedded default: the KFP pipeline run by `kfp.local`.

`run_local` is what `easel run local` calls. It runs the same pipeline definition that is
uploaded to the Kubeflow UI, through KFP's SubprocessRunner, with a stable work directory so
that a re-run after a kill resumes (each step resumes from what it finds there), and writes a
report.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from model_code import storage
from model_code.config import load_preset

log = logging.getLogger(__name__)


def _run_pipeline(pipeline_fn, pipeline_root: str, **params) -> Any:
    from kfp import local
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
               raise_on_error=True)
    run = pipeline_fn(**params)
    return run.output


def run_local(preset: str = "tiny", recipe: str = "all", out: str = "runs/local",
              overrides: list[str] | dict | None = None) -> dict[str, Any]:
    """Run the lifecycle locally; returns the summary (see DESIGN.md's contract)."""
    if recipe not in ("dalle", "unclip", "all"):
        raise ValueError(f"recipe must be dalle, unclip or all, got {recipe!r}")
    cfg = load_preset(preset, overrides)  # fail fast on a bad preset or override
    over = json.dumps({k: v for k, v in cfg.items()}) if overrides else ""
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    work = os.path.join(out, "work")
    t0 = time.time()
    from pipelines.data import data_pipeline
    result = _run_pipeline(data_pipeline, os.path.join(out, "kfp"), preset=preset, overrides=over,
                           seed=int(cfg["data"].get("seed", 0)), workdir=work)
    report = write_report(out, result, preset=preset, seconds=time.time() - t0)
    return {"preset": preset, "recipe": recipe, "dataset": result.get("dataset"),
            "dataset_version": result.get("version"), "report": report, "out": out,
            "seconds": round(time.time() - t0, 1)}


def write_report(out: str, data: dict, preset: str, seconds: float) -> str:
    """A Markdown report with the dataset's counts and a grid of samples with captions."""
    import pandas as pd

    from model_code.data.dataset import sample_images
    ds = data["dataset"]
    man = pd.read_parquet(storage.join(ds, "manifest.parquet"))
    summary = json.loads(storage.read_text(storage.join(ds, "dataset.json")))
    grid_path = os.path.join(out, "samples.png")
    sample_images(ds, 8).save(grid_path)
    lines = [f"# Easel run ({preset})", "",
             f"Finished in {seconds:.0f} s.", "",
             "## Data", "",
             f"- dataset: `{ds}`",
             f"- version: `{data.get('version')}`",
             f"- records in: {summary.get('input')}, accepted: {summary.get('accepted')}, "
             f"quarantined: {summary.get('quarantined')}, duplicates: {summary.get('duplicates')}",
             f"- curated captions: {int(man['curated_caption'].notna().sum())}", "",
             "![samples](samples.png)", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
