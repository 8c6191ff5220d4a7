"""The lifecycle's steps with their parameters resolved from a preset.

The CLI's `easel run local`, the KFP components and Python users all call these: one
function per step, taking a preset name (plus overrides) and URIs, returning a JSON-ready
summary. A step resolves configuration (a preset name, overrides as a dict or the KFP edge's
JSON) and calls the library: the logic lives there (lineage in tracking, gate settings in
evaluate/gates, sidecar gathering in recaption/job, job arguments in cluster/pytorchjob).
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable

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


def kfp_value(value: Any) -> Any:
    """A summary as KFP can pass it to the next task: None is not a KFP value (a task receiving a
    dict with a None inside fails before it starts), so unknown entries are left out; tuples and
    numpy scalars become lists and plain numbers."""
    if isinstance(value, dict):
        return {str(k): kfp_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [kfp_value(v) for v in value if v is not None]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def publish(summary: dict, metrics=None, artifact=None, scalars: tuple[str, ...] = ()) -> dict:
    """Show a step's summary in the Kubeflow UI: its numeric `metrics` on a KFP Metrics artifact
    (the run comparison view reads these), and `scalars` (counts, version ids, the MLflow run id)
    as metadata of an output artifact (the artifact and lineage views show them). Returns summary."""
    import math
    if metrics is not None:
        for key, value in sorted((summary.get("metrics") or {}).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                metrics.log_metric(str(key), float(value))
    if artifact is not None:
        artifact.metadata.update({k: summary[k] for k in scalars
                                  if isinstance(summary.get(k), (str, int, float, bool))})
    return summary


def _summary(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return kfp_value(fn(*args, **kwargs))
    return wrapper


def _overrides(overrides: dict | str | None) -> dict:
    """Overrides arrive as a dict (Python) or a JSON string (KFP parameters, '' = none)."""
    if isinstance(overrides, str):
        return json.loads(overrides) if overrides.strip() else {}
    return dict(overrides or {})


def _cfg(preset: str, overrides: dict | str | None) -> dict:
    return load_preset(preset, _overrides(overrides) or None)


@_summary
def synth_step(out: str, preset: str = "tiny", overrides: dict | str | None = None,
               seed: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """Write a raw Shapes-world source of the preset's size."""
    from model_code.data.synth import synthesize
    d = _cfg(preset, overrides)["data"]
    return synthesize(out, n=int(d["n"]), size=int(d["size"]),
                      seed=int(seed if seed is not None else d.get("seed", 0)),
                      curated_fraction=float(d["curated_fraction"]), workers=workers)


@_summary
def source_step(artifact_path: str, source: str = "", workdir: str = "", preset: str = "tiny",
                overrides: dict | str | None = None, seed: int | None = None) -> dict[str, Any]:
    """The raw data a pipeline ingests: `source` as given (an image folder, WebDataset tars, a
    parquet/CSV manifest or shapes://...; it stays where it is and the artifact refers to it), or,
    when empty, a Shapes world synthesized at the preset's size. input_location(artifact_path)
    leads to it either way."""
    if source:
        storage.write_text(storage.join(artifact_path, REF_FILE), json.dumps({"uri": source}))
        return {"source": source, "synthesized": False}
    summary = synth_step(output_location(artifact_path, workdir, "raw"), preset, overrides, seed=seed)
    return {**summary, "source": summary["out"], "synthesized": True}


@_summary
def ingest_step(source: str, out: str, preset: str = "tiny", overrides: dict | str | None = None,
                kind: str = "auto", workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Ingest any supported source at the preset's resolution, with its held-out split."""
    from model_code.data.ingest import ingest
    d = _cfg(preset, overrides)["data"]
    # data.allow_roots / data.caption_control: the preset's (or the KFP `overrides`') say on
    # which directories a manifest may point into and what a control character in a caption costs
    opts = {k: d[k] for k in ("allow_roots", "caption_control") if d.get(k) is not None}
    return ingest(source, out, size=int(d["size"]), shard_size=int(d["shard_size"]), kind=kind, workers=workers,
                  heldout_fraction=float(d.get("heldout_fraction", 0.0)), progress=progress, **opts)


@_summary
def validate_step(dataset: str, preset: str = "tiny", overrides: dict | str | None = None,
                  report_path: str | None = None, require: bool = True) -> dict[str, Any]:
    """Run the validation suite; raises ValidationFailed (the run stops) when it fails, unless
    require=False (then the result says success false: see require_valid_step).
    The JSON report goes to the dataset's validation.json (DVC ignores it: validating does not
    change the version); report_path, when given, gets the HTML page (the component's HTML
    artifact, which the KFP UI renders)."""
    from model_code.data.validate import require_valid, validate
    d = _cfg(preset, overrides)["data"]
    return (require_valid if require else validate)(dataset, thresholds=d.get("validate"),
                                                     html_report=report_path or False)


def require_valid_step(validation: dict) -> dict[str, Any]:
    """validate_step's result, passed on when the suite succeeded; ValidationFailed (listing the
    failed expectations) otherwise."""
    from model_code.data.validate import ValidationFailed
    if not isinstance(validation, dict) or not isinstance(validation.get("success"), bool):
        raise ValueError(f"validation: a validate step result with success true|false expected, got {validation!r}")
    if not validation["success"]:
        raise ValidationFailed(validation)
    return validation


@_summary
def version_step(dataset: str, expected: str = "") -> dict[str, Any]:
    """The dataset's version id and lineage (DVC content hash + git revision). With `expected`
    (a version id or its DVC hash), a dataset of other content stops the run here (ValueError),
    before anything trains on it."""
    from model_code.data.version import check_version, lineage
    out = {"dataset": dataset, **lineage(dataset)}
    if expected:
        check_version(out, expected)
    return out


@_summary
def train_step(part: str, dataset: str, out: str, preset: str = "tiny",
               overrides: dict | str | None = None, deps: dict[str, str] | None = None,
               caption_policy: str = "", metrics=None, model=None) -> dict[str, Any]:
    """Train one part (tokenizer, dvae, transformer, clip, captioner, prior, decoder, upsampler).
    metrics / model: the KFP task's Metrics and Model artifacts (final losses and throughput; the
    part, steps, dataset version and MLflow run id as the model's metadata)."""
    from model_code.train.run import train_part
    over = _overrides(overrides)
    if caption_policy:  # generator parts only: the captioner keeps its curated captions
        over = deep_merge(over, {"train": {"caption_policy": caption_policy}})
    res = train_part(part, preset, data=dataset, out=out, overrides=over or None,
                     deps={k: v for k, v in (deps or {}).items() if v})
    return publish(res, metrics, model, ("part", "steps", "samples_seen", "seconds", "dataset_version",
                                          "mlflow_run_id", "preempted"))


def train_task(part: str, dataset, model, metrics, preset: str, overrides: str, caption_policy: str,
               name: str, workdir: str, **deps) -> dict[str, Any]:
    """train_step for a KFP train_* component: the dataset and the trained dependencies (tokenizer=,
    clip=, dvae=) are its input artifacts, the model its output artifact (output_location)."""
    return train_step(part, input_location(dataset.path), output_location(model.path, workdir, name), preset,
                      overrides, deps={k: input_location(a.path) for k, a in deps.items()},
                      caption_policy=caption_policy, metrics=metrics, model=model)


@_summary
def shard_groups_step(dataset: str, groups: int) -> list[list[str]]:
    """Split a dataset's shards into at most `groups` groups (the recaption fan-out)."""
    from model_code.data.dataset import shard_list
    names = [u.rstrip("/").rsplit("/", 1)[-1] for u in shard_list(dataset)]
    groups = max(1, min(int(groups), len(names)))
    return [names[i::groups] for i in range(groups)]


@_summary
def recaption_step(dataset: str, out: str, captioner: str, tokenizer: str, clip: str = "",
                   shards: list[str] | None = None, preset: str = "tiny",
                   overrides: dict | str | None = None, threads: int = 0) -> dict[str, Any]:
    """Recaption some shards of a dataset into caption sidecars under `out` (resumable)."""
    from model_code.recaption.job import recaption
    return recaption(dataset, out, captioner=captioner, tokenizer=tokenizer, clip=clip or None,
                     shards=shards, preset=_cfg(preset, overrides), finalize_out=shards is None,
                     threads=threads)


@_summary
def recaption_finalize_step(out: str, parent: str, parts: list[str] | None = None) -> dict[str, Any]:
    """Gather the sidecars of the fan-out's parts into `out` and seal them as a new dataset
    version with lineage to its parent."""
    from model_code.recaption.job import finalize, gather_sidecars
    gather_sidecars(out, parts or [])
    return finalize(out, parent)


@_summary
def bundle_step(recipe: str, parts: dict[str, str], out: str, preset: str = "tiny",
                dataset: dict | None = None, overrides: dict | str | None = None) -> dict[str, Any]:
    """Assemble the trained parts of a recipe into one generation bundle. Its sampling settings
    are the preset's `sampling.<recipe>` over generate.DEFAULT_SAMPLING; its lineage names the
    dataset version (`dataset`: version_step's summary), the git revision and the MLflow run
    that trained each part (read from the part's train_state.json)."""
    from model_code.generate import read_bundle_meta, save_bundle
    from model_code.tracking import bundle_lineage
    lineage = bundle_lineage(parts, dataset)
    cfg = _cfg(preset, overrides)
    save_bundle(out, recipe, parts, preset=preset, sampling=(cfg.get("sampling") or {}).get(recipe),
                lineage=lineage, config=cfg)
    return {"bundle": out, **read_bundle_meta(out)}


@_summary
def evaluate_step(bundle: str, dataset: str, out: str, preset: str = "tiny",
                  overrides: dict | str | None = None, markdown_path: str | None = None) -> dict[str, Any]:
    """Evaluate a bundle on the dataset's held-out prompts (metrics, tables, grids, report).
    markdown_path: where the report also goes as one self-contained page (its sample grids
    inline: the KFP UI's Markdown artifact view)."""
    from model_code.evaluate.evaluate import evaluate
    res = evaluate(bundle, dataset, out, preset=_cfg(preset, overrides))
    if markdown_path:
        _standalone_markdown(res["report"], markdown_path)
    return res


def _standalone_markdown(src: str, dst: str) -> None:
    from model_code.viz import inline_images
    base = src.rstrip("/").rsplit("/", 1)[0] if "/" in src else "."
    storage.write_text(dst, inline_images(storage.read_text(src), base))


@_summary
def register_step(bundle: str, name: str, lineage: dict | None = None,
                  evaluation: dict | None = None) -> dict[str, Any]:
    """Register a bundle as a new version of `name` in the MLflow registry, with lineage; the
    model is logged into the evaluation's MLflow run when there is one."""
    from model_code.registry.registry import register_bundle
    return register_bundle(bundle, name, lineage=lineage, run_id=(evaluation or {}).get("run_id") or None)


def gate_settings(preset: str = "tiny", overrides: dict | str | None = None,
                  gate_config: dict | str | None = None) -> dict[str, Any]:
    """The preset (with overrides) whose `evaluate:` section has gate_config merged over it
    ({"gates": ..., "margin": ..., "tolerance": ...}, or the same under "evaluate"); ValueError,
    naming the field, for a configuration the gate cannot use."""
    from model_code.evaluate.gates import with_gate_config
    try:
        extra = _overrides(gate_config)
    except json.JSONDecodeError as e:
        raise ValueError(f"gate_config: not a JSON object ({e})") from None
    return with_gate_config(_cfg(preset, overrides), extra)


@_summary
def gate_step(registered: dict, evaluation: dict, preset: str = "tiny",
              overrides: dict | str | None = None, gate_config: dict | str | None = None) -> dict[str, Any]:
    """Judge a registered version (register_step's summary) on its evaluation (evaluate_step's)
    against the preset's gates and the production version; the record goes to MLflow and onto
    the version's tags. gate_config (a dict or JSON: {"gates": {metric: {min|max|...}}, "margin",
    "tolerance"}) is merged over the preset's `evaluate:` section."""
    from model_code.evaluate.gates import run_gate
    cfg = gate_settings(preset, overrides, gate_config)
    # the evaluation's inputs (settings, run id) with the recipe of the version being judged:
    # recipe-specific gates (e.g. dvae.psnr for dalle) need it
    inputs = {**(evaluation.get("inputs") or {}), "bundle_uri": registered.get("uri"),
              "report": evaluation.get("report")}
    inputs["recipe"] = registered.get("recipe") or inputs.get("recipe")
    return run_gate(registered["name"], registered["version"], evaluation["metrics"], cfg, inputs=inputs)


@_summary
def promote_step(registered: dict, alias: str = "production") -> dict[str, Any]:
    """Move an alias to a registered version; refused (GateError) without a passed gate record."""
    from model_code.registry.registry import promote
    return promote(registered["name"], registered["version"], alias=alias, user="pipeline")


def gate_verdict_step(record: dict) -> str:
    """"passed" | "failed" of a gate record (anything else is an error: a malformed record must
    not promote by accident)."""
    verdict = (record or {}).get("verdict")
    if verdict not in ("passed", "failed"):
        raise ValueError(f"record: a gate record with verdict passed|failed expected, got {verdict!r}")
    return verdict


@_summary
def deploy_step(model: str, ref: str = "production", service: str = "", namespace: str = "easel-serving",
                image: str = "", canary_traffic_percent: int = 100, gpus: int = 0,
                timeout: float = 900.0, allow_ungated: bool = False) -> dict[str, Any]:
    """Serve version `ref` (number or alias) of registered model `model` as the KServe
    InferenceService `service` (default: the model's name) and wait until it is ready; an
    existing service switches to the version, with `canary_traffic_percent` of the traffic
    (100: all of it) while KServe keeps the previous one for the rest."""
    from model_code.cluster.inferenceservice import deploy_model
    res = deploy_model(model, ref, service=service or model, namespace=namespace, image=image,
                       canary_traffic_percent=canary_traffic_percent, gpus=gpus, wait=timeout > 0,
                       timeout=timeout, allow_ungated=allow_ungated)
    return {k: v for k, v in res.items() if k != "object"}


LAUNCHERS = ("trainjob", "pytorchjob")


@_summary
def multinode_train_step(part: str, dataset: str, out: str, image: str, preset: str = "base",
                         overrides: dict | str | None = None, deps: dict[str, str] | None = None,
                         caption_policy: str = "", nodes: int = 2, gpus_per_node: int = 8,
                         namespace: str = "kubeflow", launcher: str = "trainjob",
                         timeout: float = 7 * 24 * 3600, submit: bool = True) -> dict[str, Any]:
    """Train one part on several GPU nodes: render the job (one pod per node, torchrun starting
    `easel train` per GPU), submit it and wait until it succeeds (JobFailed / TimeoutError
    otherwise). launcher: trainjob (Kubeflow Trainer v2, the runtime `easel-torch`) or pytorchjob
    (the legacy Training Operator). dataset, out and deps are object-store URIs: the pods share no
    file system. submit=False: only the rendered job (no cluster)."""
    from model_code.cluster.pytorchjob import job_name, job_state, train_args
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    over = _overrides(overrides)
    if caption_policy:
        over = deep_merge(over, {"train": {"caption_policy": caption_policy}})
    _cfg(preset, over)   # an unknown or mistyped setting fails here, not in every pod
    if launcher == "trainjob":
        from model_code.cluster.trainjob import render_trainjob as render, submit_trainjob as send
    else:
        from model_code.cluster.pytorchjob import render_pytorchjob as render, submit_pytorchjob as send
    job = render(part, preset, image, nodes, gpus_per_node, dataset, out, namespace,
                 name=job_name(part, preset, out), extra_args=train_args(deps, over))
    summary = {"part": part, "preset": preset, "launcher": launcher, "kind": job["kind"],
               "job": job["metadata"]["name"], "namespace": namespace, "nodes": nodes,
               "gpus_per_node": gpus_per_node, "out": out}
    if not submit:
        return {**summary, "state": "Rendered", "object": job}
    final = send(job, wait=True, timeout=timeout, exists_ok=True)
    state_file = storage.join(out, "train_state.json")
    trained = json.loads(storage.read_text(state_file)).get("summary", {}) if storage.exists(state_file) else {}
    return {**summary, "state": job_state(final)[0], "train": trained}


def _table(fn, key: str, out: str, markdown_path: str | None, **kwargs) -> dict[str, Any]:
    # results_md=False: a pipeline pod has no checkout of docs/results.md; the section goes to
    # MLflow and to the step's Markdown artifact instead
    res = fn(out=out, results_md=False, **kwargs)
    if markdown_path:
        _standalone_markdown(storage.join(out, f"{key}.md"), markdown_path)
    return {k: res[k] for k in ("rows", "markdown", "run_id", "out", "seconds")}


@_summary
def table_captions_step(original: str, synthetic: str, blend: str, dataset: str, out: str,
                        preset: str = "tiny", overrides: dict | str | None = None,
                        markdown_path: str | None = None) -> dict[str, Any]:
    """The DALL-E 3 table: generators trained on original / 100% synthetic / 95-5 blended captions."""
    from model_code.evaluate.tables import table_captions
    return _table(table_captions, "captions", out, markdown_path,
                  bundles={"original": original, "synthetic": synthetic, "blend": blend}, dataset=dataset,
                  preset=_cfg(preset, overrides))


@_summary
def table_rerank_step(bundle: str, dataset: str, out: str, budgets: list[int] | None = None,
                      preset: str = "tiny", overrides: dict | str | None = None,
                      markdown_path: str | None = None) -> dict[str, Any]:
    """The DALL-E 1 table: prompt following and CLIP score against the reranking budget N."""
    from model_code.evaluate.tables import table_rerank
    kwargs = {"budgets": [int(b) for b in budgets]} if budgets else {}
    return _table(table_rerank, "rerank", out, markdown_path, bundle=bundle, dataset=dataset,
                  preset=_cfg(preset, overrides), **kwargs)


@_summary
def table_guidance_step(unclip: str, text_decoder: str, dataset: str, out: str,
                        scales: list[float] | None = None, preset: str = "tiny",
                        overrides: dict | str | None = None, markdown_path: str | None = None) -> dict[str, Any]:
    """The DALL-E 2 table: diversity and prompt following against guidance scale, unCLIP versus a
    decoder conditioned on text directly."""
    from model_code.evaluate.tables import table_guidance
    kwargs = {"scales": [float(x) for x in scales]} if scales else {}
    return _table(table_guidance, "guidance", out, markdown_path, unclip_bundle=unclip,
                  text_decoder_bundle=text_decoder, dataset=dataset, preset=_cfg(preset, overrides), **kwargs)
