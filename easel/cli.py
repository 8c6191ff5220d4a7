"""The `easel` command: argument parsing and calls into the library, no logic of its own.

Every command prints human-readable progress to stderr; with `--json` the last line of stdout
is one JSON object (the summary). Exit status 0 on success; on failure a one-line reason on
stderr and a non-zero status (2 for bad usage, 1 for everything else).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable

log = logging.getLogger("easel")


class UsageError(Exception):
    """Bad arguments: exit status 2."""


# ---------------------------------------------------------------- handlers
# Each handler takes the parsed args and returns the summary dict. Imports are local so that
# `easel --help` stays fast and a missing optional dependency only breaks its own command.

def _data_overrides(a, flags: dict[str, str]) -> dict:
    """The flags a user gave, as overrides of the preset's `data:` section (unset flags: the
    preset's values, so `easel data ...` and `easel run local` agree on one preset)."""
    data = {key: getattr(a, attr) for key, attr in flags.items() if getattr(a, attr) is not None}
    return {"data": data} if data else {}


def _data_synth(a) -> dict:
    from easel.steps import synth_step
    over = _data_overrides(a, {"n": "n", "size": "size", "seed": "seed", "curated_fraction": "curated_fraction"})
    return synth_step(a.out, a.preset, over, workers=a.workers)


def _data_ingest(a) -> dict:
    from easel.steps import ingest_step
    over = _data_overrides(a, {"size": "size", "shard_size": "shard_size", "heldout_fraction": "heldout_fraction",
                               "caption_control": "caption_control", "allow_roots": "allow_root"})
    return ingest_step(a.src, a.out, a.preset, over, kind=a.kind, workers=a.workers, progress=not a.quiet)


def _data_validate(a) -> dict:
    from model_code.data.validate import summary_text, validate
    thresholds = {}
    if a.max_quarantine_ratio is not None:
        thresholds["max_quarantine_ratio"] = a.max_quarantine_ratio
    if a.max_duplicate_ratio is not None:
        thresholds["max_duplicate_ratio"] = a.max_duplicate_ratio
    res = validate(a.dataset, thresholds=thresholds or None, report_path=a.report, html_report=a.data_docs)
    print(summary_text(res), file=sys.stderr)
    if res.get("data_docs"):
        print(f"Data Docs: {res['data_docs']}", file=sys.stderr)
    if not res["success"]:
        # the summary still goes to stdout for scripts; the exit status says it failed
        _emit(a, res)
        raise SystemExit(_fail(f"validation failed: {', '.join(res['failed_expectations'])} "
                               f"(report: {res['report']})"))
    return res


def _data_version(a) -> dict:
    from model_code.data.version import lineage
    return lineage(a.dataset)


def _set_overrides(a, option: str = "set") -> dict | None:
    """--set KEY=VALUE ... (or another repeatable KEY=VALUE option, e.g. --sampling) -> an overrides
    dict: the CLI is where `a.b=c` strings end."""
    from model_code.config import parse_overrides
    given = getattr(a, option)
    return parse_overrides(given) if given else None


def _run_local(a) -> dict:
    from easel.lifecycle import run_local
    return run_local(preset=a.preset, recipe=a.recipe, out=a.out, overrides=_set_overrides(a))


# -- easel model (the registry: model_code.registry)
def _train(a) -> dict:
    from model_code.train.run import train_part
    deps = _kv_pairs(a.dep, "--dep")
    return train_part(a.part, a.preset, data=a.data, out=a.out, deps=deps or None,
                      overrides=_set_overrides(a), resume=not a.restart)


def _recaption(a) -> dict:
    from model_code.recaption.job import recaption
    return recaption(a.dataset, a.out, captioner=a.captioner, tokenizer=a.tokenizer, clip=a.clip,
                     shards=a.shard or None, preset=a.preset, top_p=a.top_p, temperature=a.temperature,
                     progress=not a.quiet, threads=a.threads)


def _evaluate(a) -> dict:
    from model_code.evaluate.evaluate import add_gate_to_report, evaluate
    from model_code.evaluate.gates import check_gate_target, run_gate
    if (a.gate_model is None) != (a.gate_version is None):
        raise UsageError("--gate-model and --gate-version go together: the registered model and the version "
                         "of it that this evaluation gates")
    if a.gate_model:   # a wrong name, version or gate-less preset fails now, not after the evaluation
        check_gate_target(a.gate_model, a.gate_version, a.preset)
    res = evaluate(a.bundle, a.dataset, a.out, preset=a.preset, n_per_category=a.n_per_category,
                   samples_per_prompt=a.samples, seed=a.seed, candidates=a.candidates)
    if a.gate_model:
        # the evaluation's inputs name the recipe, which selects recipe-specific gates
        rec = res["gate"] = run_gate(a.gate_model, a.gate_version, res["metrics"], a.preset, inputs=res.get("inputs"))
        add_gate_to_report(res["report"], rec)
        verdict = (f"gate {rec['verdict']} for {a.gate_model} version {rec['model']['version']}: "
                   f"{'; '.join(rec['reasons'])} (report: {res['report']})")
        if rec["verdict"] != "passed":
            # as `easel data validate`: the summary still goes to stdout, the status says it failed
            _emit(a, res)
            raise SystemExit(_fail(verdict))
        print(verdict, file=sys.stderr)
    return res


def _table(a) -> dict:
    from model_code.evaluate import tables
    b = _kv_pairs(a.bundle, "--bundle")
    need = {"captions": ("original", "synthetic", "blend"), "rerank": ("bundle",),
            "guidance": ("unclip", "text")}[a.table]
    missing = [k for k in need if k not in b]
    if missing or set(b) - set(need):
        raise UsageError(f"table {a.table} takes --bundle {' '.join(k + '=URI' for k in need)}")
    # sampling settings of the bundles' recipe over each bundle's own; the table names a bad key
    common = {"dataset": a.dataset, "out": a.out, "preset": a.preset, "seed": a.seed,
              "sampling": _set_overrides(a, "sampling"),
              "n_per_category": a.n_per_category, "mlflow": not a.no_mlflow, "results_md": a.results_md}
    if a.table == "captions":
        return tables.table_captions(b, samples_per_prompt=a.samples_per_prompt, **common)
    if a.table == "rerank":
        return tables.table_rerank(b["bundle"], **({"budgets": a.budgets} if a.budgets else {}), **common)
    return tables.table_guidance(b["unclip"], b["text"], **({"scales": a.scales} if a.scales else {}),
                                 samples_per_prompt=a.samples_per_prompt, **common)


def _list_of(kind: type, what: str) -> Callable[[str], list]:
    """An argparse type: "1,2,4" -> [1, 2, 4] of `kind`; anything else is a usage error naming the
    option (the table checks the values' range)."""
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    return parse


def _pipeline_compile(a) -> dict:
    from pipelines.compile import compile_all
    return {"pipelines": compile_all(a.out)}


def _pipeline_request(a, cron: str | None = None):
    from easel.pipeline_client import build_request, parse_params
    if not a.dry_run and not a.host:  # before compiling anything
        raise UsageError("--host URL is required (or KF_PIPELINES_ENDPOINT), e.g. http://localhost:8080")
    try:
        params = parse_params(a.param)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return build_request(a.pipeline, params, package_dir=a.package_dir, run_name=a.name,
                         experiment=a.experiment, namespace=a.namespace, service_account=a.service_account,
                         enable_caching=False if a.no_cache else None, cron=cron,
                         max_concurrency=getattr(a, "max_concurrency", 1), catchup=getattr(a, "catchup", False))


def _pipeline_send(a, req) -> dict:
    from easel.pipeline_client import send
    summary = {k: v for k, v in req.as_dict().items() if k not in ("declared", "temporary_dir")}
    if a.dry_run:  # what would be sent, and nothing sent; the package stays for a look
        return {**summary, "sent": False}
    try:
        return {**summary, **send(req, a.host), "sent": True,
                "package_path": None if req.temporary_dir else req.package_path}
    finally:
        req.discard()  # a package compiled into a temporary directory has been sent (or refused)


def _pipeline_submit(a) -> dict:
    return _pipeline_send(a, _pipeline_request(a))


def _pipeline_schedule(a) -> dict:
    return _pipeline_send(a, _pipeline_request(a, cron=a.cron))


def _kv_pairs(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _model_bundle(a) -> dict:
    from easel.steps import bundle_step, version_step
    dataset = version_step(a.dataset) if a.dataset else None   # the bundle's lineage names its version
    return bundle_step(a.recipe, _kv_pairs(a.part, "--part"), a.out, preset=a.preset, dataset=dataset,
                       overrides=_set_overrides(a))


def _model_register(a) -> dict:
    from model_code.registry import register_bundle
    return register_bundle(a.bundle, a.name, _kv_pairs(a.lineage, "--lineage"), run_id=a.run_id)


def _model_list(a) -> dict:
    from model_code.registry import list_versions
    versions = list_versions(a.name)
    if not a.json:  # a table for people; scripts take --json
        print(f"{'version':>7}  {'aliases':<20} {'stage':<10} {'gate':<8} {'recipe':<7} created")
        for v in versions:
            print(f"{v['version']:>7}  {','.join(v['aliases']) or '-':<20} {v['stage']:<10} {v['gate']:<8} "
                  f"{v['recipe'] or '-':<7} {v['created']}")
    return {"name": a.name, "versions": versions}


def _model_promote(a) -> dict:
    from model_code.registry import promote
    if a.force and not (a.reason or "").strip():
        raise UsageError("--force needs --reason TEXT (the reason is recorded with the promotion)")
    return promote(a.name, a.version, alias=a.alias, force=a.force, reason=a.reason, user=a.user)


def _model_rollback(a) -> dict:
    from model_code.registry import rollback
    return rollback(a.name, alias=a.alias, reason=a.reason, user=a.user)


def _model_deploy(a) -> dict:
    from model_code.cluster.inferenceservice import deploy_model
    res = deploy_model(a.name, a.ref, service=a.service or a.name, namespace=a.namespace, image=a.image,
                       canary_traffic_percent=a.canary, gpus=a.gpus, wait=a.timeout > 0, timeout=a.timeout,
                       dry_run=a.render, storage_uri=a.storage_uri, allow_ungated=a.allow_ungated)
    if a.render and not a.json:  # the manifest itself, for kubectl apply -f - or a review
        import yaml
        sys.stdout.write(yaml.safe_dump(res["object"], sort_keys=False))
        return None
    return {k: v for k, v in res.items() if k != "object" or a.render}


# -- easel job (model_code.cluster: multi-node training)
def _job(a) -> dict | None:
    from easel.steps import multinode_train_step
    res = multinode_train_step(a.part, a.data, a.out, a.image, a.preset, _set_overrides(a),
                               deps=_kv_pairs(a.dep, "--dep") or None, nodes=a.nodes,
                               gpus_per_node=a.gpus_per_node, namespace=a.namespace, launcher=a.launcher,
                               timeout=a.timeout, submit=a.action == "submit")
    if a.action == "render" and not a.json:   # the manifest itself, for kubectl apply -f -
        import yaml
        sys.stdout.write(yaml.safe_dump(res["object"], sort_keys=False))
        return None
    return res


# -- easel serve (model_code.serve)
def _serve(a) -> dict:
    from model_code.serve import serve
    if a.workers not in (None, 1):
        raise UsageError("--workers: one server process per container (scale with replicas)")
    serve(a.model, name=a.name, host=a.host, port=a.port, role=a.role, predictor_host=a.predictor_host,
          generate_only=a.generate_only, predictor_protocol=a.predictor_protocol,
          config={"allow_ungated": True} if a.allow_ungated else None)
    return {}


# ---------------------------------------------------------------- parser
def version_string() -> str:
    """`easel --version`: the installed package's version and, from a git checkout, its commit."""
    from importlib import metadata
    from model_code import tracking
    try:
        ver = metadata.version("easel")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        ver = "unknown"
    rev = tracking.git_revision()
    return f"easel {ver}" + (f" (git {rev})" if rev else "")


def _global_options(p: argparse.ArgumentParser, default: Any) -> None:
    """-v and --json, accepted before or after the subcommand (`easel -v --json data synth ...`)."""
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    p.add_argument("--json", action="store_true", default=default,
                   help="print a JSON summary as the last line of stdout")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="easel", description="Easel: the lifecycle of DALL-E-family "
                                "text-to-image models, from data to a served model.")
    p.add_argument("--version", action="version", version=version_string())
    _global_options(p, False)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def cmd(parent, name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        # the global options again, so they work after the subcommand too; SUPPRESS keeps a value
        # given before the subcommand from being reset by the subparser's default
        _global_options(sp, argparse.SUPPRESS)
        sp.set_defaults(fn=fn)
        return sp

    data = sub.add_parser("data", help="synthesize, ingest, validate and version datasets")
    dsub = data.add_subparsers(dest="data_cmd", metavar="STEP")
    s = cmd(dsub, "synth", _data_synth, "write a raw Shapes-world source (images, scene graphs, captions)")
    s.add_argument("--out", required=True, help="output directory or URI")
    s.add_argument("--preset", default="tiny", help="where unset options come from: its data: section "
                   "(default tiny: 1200 images at 32 px, 25%% curated)")
    s.add_argument("--n", type=int, default=None, help="number of images (default: the preset's data.n)")
    s.add_argument("--size", type=int, default=None, help="canvas side in pixels, 32-256 (default: data.size)")
    s.add_argument("--seed", type=int, default=None, help="default: data.seed, else 0")
    s.add_argument("--curated-fraction", type=float, default=None,
                   help="fraction of images with a careful descriptive caption (default: data.curated_fraction)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    s = cmd(dsub, "ingest", _data_ingest, "any supported source -> shards + manifest + quarantine")
    s.add_argument("src", help="image folder, WebDataset tars, parquet/CSV manifest, or shapes://n=..,size=..")
    s.add_argument("--out", required=True, help="output dataset directory or URI")
    s.add_argument("--preset", default="tiny", help="where unset options come from: its data: section "
                   "(default tiny: 32 px, 256 records per shard, 10%% held out)")
    s.add_argument("--size", type=int, default=None, help="output resolution, square (default: data.size)")
    s.add_argument("--kind", default="auto", choices=["auto", "folder", "webdataset", "manifest", "shapes"])
    s.add_argument("--shard-size", type=int, default=None, help="records per shard (default: data.shard_size)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--heldout-fraction", type=float, default=None,
                   help="fraction of records marked split=heldout, evaluation only (default: data.heldout_fraction)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--allow-root", action="append", metavar="DIR",
                   help="a local directory a manifest's image paths may point into besides the "
                        "manifest's own (repeatable); paths elsewhere are quarantined")
    s.add_argument("--caption-control", choices=["quarantine", "strip"], default=None,
                   help="captions holding control characters: quarantine them or strip the characters "
                        "(default: data.caption_control, else quarantine)")

    s = cmd(dsub, "validate", _data_validate, "run the Great Expectations suite on an ingested dataset")
    s.add_argument("dataset", help="ingested dataset directory or URI")
    s.add_argument("--report", default=None, help="report path (default DATASET/validation.json)")
    s.add_argument("--max-quarantine-ratio", type=float, default=None)
    s.add_argument("--max-duplicate-ratio", type=float, default=None)
    s.add_argument("--data-docs", action="store_true",
                   help="also build Great Expectations' Data Docs site beside the report (every run listed)")

    s = cmd(dsub, "version", _data_version, "the dataset's version id (DVC hash + git revision) and lineage")
    s.add_argument("dataset")

    run = sub.add_parser("run", help="run the lifecycle")
    rsub = run.add_subparsers(dest="run_cmd", metavar="WHERE")
    s = cmd(rsub, "local", _run_local, "the whole lifecycle on the embedded default (no cluster)")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--recipe", default="all", choices=["dalle", "unclip", "all"])
    s.add_argument("--out", default="runs/local", help="run directory (default runs/local)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="preset override, repeatable")

    s = cmd(sub, "train", _train, "train one part (tokenizer, dvae, transformer, clip, captioner, prior, "
            "decoder, upsampler) on an ingested dataset; resumes from its checkpoint")
    s.add_argument("part", choices=["tokenizer", "dvae", "transformer", "clip", "captioner", "prior", "decoder",
                                    "upsampler"])
    s.add_argument("--preset", default="tiny")
    s.add_argument("--data", required=True, help="ingested (or recaptioned) dataset directory or URI")
    s.add_argument("--out", required=True, help="where the trained part goes (directory or URI)")
    s.add_argument("--dep", action="append", metavar="PART=URI", help="a trained dependency, repeatable")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="preset override, repeatable")
    s.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")

    s = cmd(sub, "recaption", _recaption, "write short and long synthetic captions for a dataset (DALL-E 3)")
    s.add_argument("dataset")
    s.add_argument("--out", required=True, help="the recaptioned dataset (sidecars + dataset.json)")
    s.add_argument("--captioner", required=True, help="a trained CoCa directory/URI or pretrained:PATH")
    s.add_argument("--tokenizer", default=None)
    s.add_argument("--clip", default=None, help="CLIP for the alignment filter ('none' turns it off)")
    s.add_argument("--shard", action="append", help="only these shards (repeatable)")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--temperature", type=float, default=None)
    s.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: every core; give each of several runs on one machine a share)")
    s.add_argument("--quiet", action="store_true")

    s = cmd(sub, "evaluate", _evaluate, "prompt following, CLIP score, FD, diversity of a bundle; report")
    s.add_argument("bundle", help="a generation bundle directory or URI")
    s.add_argument("--dataset", required=True, help="the dataset whose held-out split gives the prompts")
    s.add_argument("--out", required=True)
    s.add_argument("--preset", default="tiny")
    s.add_argument("--n-per-category", type=int, default=None)
    s.add_argument("--samples", type=int, default=None, help="images per prompt")
    s.add_argument("--candidates", type=int, default=None, help="CLIP rerank budget per image")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--gate-model", default=None, help="also gate this registered model's --gate-version")
    s.add_argument("--gate-version", default=None)

    s = cmd(sub, "table", _table, "measure one of the seeds' tables (under --out and in MLflow)")
    s.add_argument("table", choices=["captions", "rerank", "guidance"])
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--preset", default="tiny")
    s.add_argument("--bundle", action="append", metavar="ROLE=URI", required=True,
                   help="captions: original=, synthetic=, blend=; rerank: bundle=; guidance: unclip=, text=")
    s.add_argument("--results-md", default=None, metavar="PATH",
                   help="also rewrite this table's section of a results page, e.g. docs/results.md")
    s.add_argument("--n-per-category", type=int, default=None, help="default: the preset's evaluate section")
    s.add_argument("--samples-per-prompt", type=int, default=None, help="captions, guidance")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--budgets", type=_list_of(int, "integers"), default=None,
                   help="rerank: comma-separated N (default 1,2,4,8,16,32)")
    s.add_argument("--scales", type=_list_of(float, "numbers"), default=None,
                   help="guidance: comma-separated scales (default 1,2,3,4)")
    s.add_argument("--sampling", action="append", metavar="KEY=VALUE",
                   help="a sampling setting of the bundles' recipe (model_code/generate.py DEFAULT_SAMPLING, "
                        "e.g. temperature=0.9), over each bundle's own; repeatable")
    s.add_argument("--no-mlflow", action="store_true")

    pipe = sub.add_parser("pipeline", help="Kubeflow Pipelines: compile for the UI, submit runs, schedule them")
    psub = pipe.add_subparsers(dest="pipeline_cmd", metavar="ACTION")
    s = cmd(psub, "compile", _pipeline_compile, "write every pipeline's YAML (upload it in the Kubeflow UI)")
    s.add_argument("--out", default="pipelines/compiled")

    def run_options(s, what: str) -> None:
        s.add_argument("pipeline", help="a pipeline name (lifecycle, data, recaption, train, train-multinode, "
                       "evaluate-promote, deploy, table-captions, table-rerank, table-guidance) or a compiled .yaml")
        s.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"),
                       help="the Kubeflow Pipelines API or UI URL, e.g. http://localhost:8080 (default "
                            "$KF_PIPELINES_ENDPOINT); a token, if needed, comes from $KF_PIPELINES_TOKEN")
        s.add_argument("--param", action="append", metavar="NAME=VALUE",
                       help="a pipeline parameter, repeatable; checked against the pipeline's declared parameters")
        s.add_argument("--name", default=None, help=f"the {what}'s name (default easel-PIPELINE)")
        s.add_argument("--experiment", default="easel", help="KFP experiment (created if missing; default easel)")
        s.add_argument("--namespace", default=None, help="the profile namespace of a multi-user Kubeflow")
        s.add_argument("--service-account", default="easel-pipeline-runner",
                       help="the Kubernetes service account the steps run as (default easel-pipeline-runner, "
                            "from the platform chart; '' for KFP's default)")
        s.add_argument("--no-cache", action="store_true", help="run every step, ignoring KFP's cache")
        s.add_argument("--package-dir", default=None, help="keep the compiled package here (default: a temp dir)")
        s.add_argument("--dry-run", action="store_true",
                       help="build and check the request (package, arguments) and print it; send nothing")

    s = cmd(psub, "submit", _pipeline_submit, "start one run of a pipeline on Kubeflow Pipelines (kfp.Client)")
    run_options(s, "run")
    s = cmd(psub, "schedule", _pipeline_schedule, "create a recurring run of a pipeline on a cron schedule")
    run_options(s, "recurring run")
    s.add_argument("--cron", required=True,
                   help="when: 5 fields ('0 3 * * *': 03:00 daily) or KFP's 6 (seconds first), or @daily, @every 6h")
    s.add_argument("--max-concurrency", type=int, default=1, help="runs of the schedule at once (default 1)")
    s.add_argument("--catchup", action="store_true",
                   help="after a pause, start every missed run (default: only the latest)")

    model = sub.add_parser("model", help="the model registry: register, list, promote, roll back")
    msub = model.add_subparsers(dest="model_cmd", metavar="ACTION")
    s = cmd(msub, "bundle", _model_bundle, "assemble trained parts into one generation bundle (what "
            "register, evaluate and serve take)")
    s.add_argument("recipe", choices=["dalle", "unclip"])
    s.add_argument("--part", action="append", metavar="PART=URI", required=True,
                   help="a trained part, repeatable: dalle needs tokenizer, clip, dvae, transformer; "
                        "unclip needs tokenizer, clip, prior, decoder (upsampler optional)")
    s.add_argument("--out", required=True, help="the bundle directory or URI")
    s.add_argument("--preset", default="tiny", help="the preset the parts were trained with (its sampling: "
                   "section and resolved config go into the bundle)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="preset override, repeatable")
    s.add_argument("--dataset", default=None, help="the dataset the parts were trained on (its version id "
                   "goes into the bundle's lineage)")
    s = cmd(msub, "register", _model_register, "register a generation bundle as a new model version")
    s.add_argument("bundle", help="bundle directory or URI (bundle.json inside)")
    s.add_argument("--name", required=True, help="registered model name")
    s.add_argument("--lineage", action="append", metavar="KEY=VALUE",
                   help="lineage tag, repeatable (dataset_version, git_revision, ...)")
    s.add_argument("--run-id", default=None, help="log the model into this MLflow run")
    s = cmd(msub, "list", _model_list, "versions with aliases, stages and gate verdicts")
    s.add_argument("name", help="registered model name")
    s = cmd(msub, "promote", _model_promote, "move an alias to a version (needs a passed gate)")
    s.add_argument("name", help="registered model name")
    s.add_argument("version", help="version number")
    s.add_argument("--alias", default="production", choices=["production", "staging"])
    s.add_argument("--force", action="store_true", help="promote without a passed gate (needs --reason)")
    s.add_argument("--reason", default=None, help="why (recorded; required with --force)")
    s.add_argument("--user", default=None, help="who (default $EASEL_USER or the login name)")
    s = cmd(msub, "rollback", _model_rollback, "return an alias to the version that held it before")
    s.add_argument("name", help="registered model name")
    s.add_argument("--alias", default="production", choices=["production", "staging"])
    s.add_argument("--reason", default=None, help="why (recorded)")
    s.add_argument("--user", default=None, help="who (default $EASEL_USER or the login name)")
    s = cmd(msub, "deploy", _model_deploy, "serve a registered version as a KServe InferenceService "
            "(created, or switched to the version; optionally as a canary)")
    s.add_argument("name", help="registered model name")
    s.add_argument("--ref", default="production", help="version number or alias (default production)")
    s.add_argument("--service", default=None, help="InferenceService name (default: the model name)")
    s.add_argument("--namespace", default="easel-serving")
    s.add_argument("--image", required=True, help="the serving image, e.g. REGISTRY/easel-cuda:TAG")
    s.add_argument("--gpus", type=int, default=0, help="GPUs per replica (> 0: on the GPU pool)")
    s.add_argument("--canary", type=int, default=None, metavar="PERCENT",
                   help="traffic share for this version while the previous keeps the rest (default: all)")
    s.add_argument("--timeout", type=float, default=900, help="seconds to wait for Ready (0: do not wait)")
    s.add_argument("--storage-uri", default=None,
                   help="serve these artifacts without the registry: no version or gate is checked or "
                        "claimed (needs --allow-ungated, except with --render)")
    s.add_argument("--allow-ungated", action="store_true",
                   help="deploy a version without a passed gate record (recorded on the InferenceService)")
    s.add_argument("--render", action="store_true",
                   help="print the InferenceService a new deploy would create (YAML; no cluster)")

    s = cmd(sub, "job", _job, "train one part on several GPU nodes: render or submit (and wait for) a "
            "Kubeflow Trainer TrainJob, or a legacy Training Operator PyTorchJob")
    s.add_argument("action", choices=["render", "submit"])
    s.add_argument("part", choices=["tokenizer", "dvae", "transformer", "clip", "captioner", "prior", "decoder",
                                    "upsampler"])
    s.add_argument("--launcher", default="trainjob", choices=["trainjob", "pytorchjob"],
                   help="trainjob: Kubeflow Trainer v2 (runtime easel-torch); pytorchjob: the Training Operator")
    s.add_argument("--preset", default="base", help="a packaged preset (the pods have no local files)")
    s.add_argument("--image", required=True, help="the training image, e.g. REGISTRY/easel-cuda:TAG")
    s.add_argument("--nodes", type=int, default=2)
    s.add_argument("--gpus-per-node", type=int, default=8)
    s.add_argument("--data", required=True, help="s3:// URI of the ingested dataset")
    s.add_argument("--out", required=True, help="s3:// URI for checkpoints and the trained part")
    s.add_argument("--dep", action="append", metavar="PART=URI", help="a trained dependency, repeatable")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="preset override, repeatable")
    s.add_argument("--namespace", default="kubeflow")
    s.add_argument("--timeout", type=float, default=7 * 24 * 3600, help="submit: seconds to wait for the job")

    # easel serve; KServe appends --model_name, --predictor_host, --http_port and --workers to a
    # transformer's arguments, so the underscore spellings are accepted too (and charts/easel-serving
    # passes --model-name)
    s = cmd(sub, "serve", _serve, "the KServe model server (V1, V2, OpenAI images) for a model")
    s.add_argument("--model", default=os.environ.get("EASEL_SERVE_MODEL", "models:/easel-dalle@production"),
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, a bundle directory, s3:// prefix or "
                        "/mnt/models (default $EASEL_SERVE_MODEL or models:/easel-dalle@production)")
    s.add_argument("--name", "--model-name", "--model_name", dest="name", default="easel",
                   help="served model name (URL path)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    s.add_argument("--port", "--http_port", dest="port", type=int, default=8080)
    s.add_argument("--role", default="predictor", choices=["predictor", "transformer"])
    s.add_argument("--predictor-host", "--predictor_host", dest="predictor_host", default=None,
                   metavar="HOST:PORT", help="the predictor a transformer forwards to")
    s.add_argument("--predictor-protocol", "--predictor_protocol", dest="predictor_protocol", default="v1",
                   choices=["v1", "v2"], help="how a transformer talks to its predictor")
    s.add_argument("--generate-only", action="store_true",
                   help="a predictor behind a transformer: generation only (safety, rewriting and "
                        "provenance run in the transformer)")
    s.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--allow-ungated", action="store_true",
                   help="serve a registry version that has no passed gate record (logged, and shown "
                        "in the model's metadata)")
    return p


# ---------------------------------------------------------------- main
def _emit(a, summary: Any) -> None:
    if getattr(a, "json", False):
        print(json.dumps(summary, default=str))
    elif summary is not None:
        for k, v in (summary.items() if isinstance(summary, dict) else []):
            if not isinstance(v, (dict, list)):
                print(f"{k}: {v}")


def _fail(msg: str, code: int = 1) -> int:
    print(f"easel: error: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if not hasattr(a, "fn"):
        parser.print_help(sys.stderr)
        return 2
    try:
        summary = a.fn(a)
    except SystemExit as e:
        run_summary = getattr(e, "summary", None)   # train.run.Preempted: the summary at the stop
        if run_summary is not None:
            _emit(a, run_summary)
            return _fail(f"preempted (SIGTERM) at step {run_summary.get('steps')}; checkpoint written, "
                         f"run the same command again to resume", int(e.code))
        return int(e.code or 0)
    except UsageError as e:
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as e:  # one line for the user; the traceback with -v
        if a.verbose:
            log.exception("failed")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return _fail(f"{type(e).__name__}: {first}" if not isinstance(e, (ValueError, RuntimeError))
                     else first)
    _emit(a, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
