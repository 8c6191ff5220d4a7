"""The lifecycle on the embedded default: the KFP pipeline run by `kfp.local`.

`run_local` is what `easel run local` calls. It runs the same pipeline definition that is
uploaded to the Kubeflow UI (pipelines/lifecycle.py) through KFP's SubprocessRunner, with a
stable work directory so that a re-run after a kill resumes (each step resumes from what it
finds there), then serves the promoted model on 127.0.0.1, asks it for a handful of images,
and writes a report.
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

RECIPES = {"dalle": ("dalle",), "unclip": ("unclip",), "all": ("dalle", "unclip")}
DEMO_PROMPTS = ("a red circle", "a big blue square to the left of a small yellow triangle",
                "three green stars", "a purple cross above an orange circle on a beige background")


def _run_pipeline(pipeline_fn, pipeline_root: str, **params) -> Any:
    from kfp import local
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
               raise_on_error=True)
    return pipeline_fn(**params)


def local_threads(concurrent: int) -> int:
    """Torch threads for each of `concurrent` tasks kfp.local runs at once on this machine (a
    fan-out's iterations): a share of its cores, since OpenMP threads of processes that outnumber
    the cores spin against each other (5x slower recaption on 2 cores; docs/benchmarks.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, concurrent))


def model_names(prefix: str = "easel") -> dict[str, str]:
    return {"dalle": f"{prefix}-dalle", "unclip": f"{prefix}-unclip"}


def run_local(preset: str = "tiny", recipe: str = "all", out: str = "runs/local",
              overrides: list[str] | dict | None = None, caption_policy: str = "blend",
              serve: bool = True) -> dict[str, Any]:
    """Run the lifecycle locally; returns the summary of DESIGN.md's contract:
    mlflow_uri, model, version, gates_passed, report (plus per-recipe details)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be dalle, unclip or all, got {recipe!r}")
    if caption_policy not in ("original", "short", "long", "blend"):
        raise ValueError(f"caption_policy must be original, short, long or blend, got {caption_policy!r}")
    cfg = load_preset(preset, overrides)  # fail fast on a bad preset or override
    over = dict(overrides or {})
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    # One MLflow store for the run, shared by every pipeline task (they inherit the environment).
    os.environ.setdefault("EASEL_HOME", out)
    from model_code import tracking
    mlflow_uri = tracking.configure()
    t0 = time.time()
    from pipelines.lifecycle import RECAPTION_GROUPS, lifecycle_pipeline
    names = model_names()
    _run_pipeline(lifecycle_pipeline, os.path.join(out, "kfp"), preset=preset, recipe=recipe,
                  caption_policy=caption_policy, overrides=json.dumps(over) if over else "",
                  recaption_groups=RECAPTION_GROUPS, recaption_threads=local_threads(RECAPTION_GROUPS),
                  seed=int(cfg["data"].get("seed", 0)), dalle_model=names["dalle"],
                  unclip_model=names["unclip"], workdir=os.path.join(out, "work"))
    results = {r: release_summary(names[r]) for r in RECIPES[recipe]}
    demos = {}
    for r, res in results.items():
        if not res["promoted"]:   # the gate rejected it: reported, never served
            print(f"{r}: {res['model']} version {res['version']} did not pass its gate and was not "
                  f"promoted or served: {'; '.join(res['reasons']) or 'see the gate record'}",
                  file=__import__("sys").stderr)
    if serve:
        from model_code.serve.demo import serve_and_generate
        for r in [r for r in RECIPES[recipe] if results[r]["promoted"]]:
            demos[r] = serve_and_generate(f"models:/{names[r]}@production", os.path.join(out, "served", r),
                                          DEMO_PROMPTS, name=names[r])
    serve_cmds = {r: serve_command(names[r]) for r in RECIPES[recipe] if results[r]["promoted"]}
    report = write_report(out, preset, recipe, results, demos, mlflow_uri, time.time() - t0, serve_cmds)
    first = results[RECIPES[recipe][0]]
    summary = {"mlflow_uri": mlflow_uri, "model": first["model"], "version": first["version"],
               "gates_passed": all(r["gate"] == "passed" for r in results.values()),
               "report": report, "out": out, "recipes": results,
               "seconds": round(time.time() - t0, 1),
               "mlflow_ui": f"mlflow ui --backend-store-uri {mlflow_uri}", "serve": serve_cmds}
    lines = [f"report: {report}", f"MLflow UI: {summary['mlflow_ui']}"]
    lines += [f"serve {r}: {c}" for r, c in serve_cmds.items()]
    print("\n".join(lines), file=__import__("sys").stderr)
    return summary


def serve_command(model: str) -> str:
    """The exact shell command that serves what this run promoted: the run keeps its registry under
    its own directory (EASEL_HOME=--out), which a plain `easel serve` started later would not find."""
    import shlex
    from model_code import tracking
    where = (f"EASEL_HOME={shlex.quote(tracking.easel_home())}" if tracking.uses_embedded_store()
             else f"MLFLOW_TRACKING_URI={shlex.quote(tracking.tracking_uri())}")
    return f"{where} easel serve --model models:/{model}@production"


def release_summary(name: str) -> dict[str, Any]:
    """What the registry says about a recipe's model after the run: the version this run
    registered (the newest), its gate verdict, and whether it holds production."""
    from model_code.registry.registry import gate_record, list_versions
    versions = list_versions(name)
    if not versions:
        raise RuntimeError(f"the run registered no version of {name}")
    latest = versions[-1]
    record = gate_record(name, latest["version"]) or {}
    return {"model": name, "version": latest["version"], "gate": latest["gate"],
            "promoted": "production" in latest["aliases"],
            "metrics": record.get("metrics", {}), "reasons": record.get("reasons", []),
            "lineage": json.loads(latest["tags"].get("easel.lineage", "{}"))}


def write_report(out: str, preset: str, recipe: str, results: dict, demos: dict, mlflow_uri: str,
                 seconds: float, serve_cmds: dict[str, str] | None = None) -> str:
    """A Markdown report: the data, every recipe's gated metrics and lineage, and the images the
    served model returned."""
    lines = [f"# Easel lifecycle run: preset `{preset}`, recipe `{recipe}`", "",
             f"Finished in {seconds / 60:.1f} min. Open the MLflow UI on this run with:", "",
             f"    mlflow ui --backend-store-uri {mlflow_uri}", ""]
    first = next(iter(results.values()))
    ds = first["lineage"].get("dataset")
    if ds and storage.exists(storage.join(ds, "dataset.json")):
        from model_code.data.dataset import info, sample_images
        meta = info(ds)
        sample_images(ds, 8).save(os.path.join(out, "data-samples.png"))
        lines += ["## Data", "", f"- dataset version: `{first['lineage'].get('dataset_version')}`",
                  f"- records in: {meta.get('input')}, accepted: {meta.get('accepted')}, "
                  f"quarantined: {meta.get('quarantined')}, duplicates: {meta.get('duplicates')}", "",
                  "![data samples](data-samples.png)", ""]
    for r, res in results.items():
        lines += [f"## {r}: `{res['model']}` version {res['version']} (gate: {res['gate']}"
                  f"{'' if res['promoted'] else '; not promoted, not served'})", ""]
        if res["metrics"]:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
                      for k, v in sorted(res["metrics"].items())]
            lines.append("")
        if res["reasons"]:
            lines += ["Gate reasons:", ""] + [f"- {x}" for x in res["reasons"]] + [""]
        lines += [f"Lineage: `{json.dumps(res['lineage'], default=str)}`", ""]
        if r in demos:
            d = demos[r]
            lines += [f"Served on {d['url']} and asked for {len(d['prompts'])} prompts "
                      f"(C2PA verified: {d['provenance_valid']}/{d['images']}):", "",
                      f"![{r} served samples]({os.path.relpath(d['grid'], out)})", ""]
        if serve_cmds and r in serve_cmds:
            lines += ["Serve it again (the registry lives in this run's directory):", "",
                      f"    {serve_cmds[r]}", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
