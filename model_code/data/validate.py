"""The data-quality gate: Great Expectations suites over an ingested dataset.

`validate(dataset_dir)` checks four tables with GX 1.x, one saved suite each:

- manifest: schema (columns present, types), nulls, image sizes (width == height == the
  ingest size), caption lengths (per record and their distribution: mean and quantiles),
  uniqueness (key, sha256), hash formats, values in sets (split, shard files that exist,
  opt_out), scene graphs that parse as JSON;
- dataset: one row of dataset-level numbers from dataset.json and the three tables: the
  quarantine and duplicate ratios against thresholds, the balance input = accepted +
  quarantined + duplicates, table sizes equal to the counts, the source kind, the held-out share;
- quarantine: every record has a known reason;
- duplicates: every duplicate points at a record that was kept.

The suites are saved, versioned JSON beside this module: model_code/data/expectations/
easel_<table>.json, in GX's ExpectationSuite format (meta.easel: version, note, parameters). They
are the only definition of the expectations: no code builds them. What depends on the
thresholds, on the dataset or on other code (ratios, sizes, the shard files found, known reasons)
is a suite parameter, {"$PARAMETER": name} in the JSON, whose values suite_parameters() computes
and the Checkpoint run passes to GX (expectation_parameters).

They run through a GX Checkpoint, one ValidationDefinition per table (each table a parquet
batch of a pandas filesystem data source). With html_report the context is file-backed: a GX
project beside the report (project_dir: DIR/validation_gx for DIR/validation.json; for an
s3:// report it runs in a temporary directory and is synced to that URI) whose Checkpoint runs
UpdateDataDocsAction, so the Data Docs site at validation_gx/gx/uncommitted/data_docs/local_site/
index.html lists every run; without it the context is ephemeral and only the report is written.

The result is {"success", "failed_expectations", "report", "statistics", "data_docs", ...}; a
JSON report is written to DIR/validation.json unless report_path says otherwise. DVC ignores
validation.json/validation.html and validation_gx/ (.dvcignore, version.IGNORED_NAMES), so
validating does not change the dataset's version. `require_valid` raises ValidationFailed for
pipelines.

Thresholds (DEFAULT_THRESHOLDS; a preset's `data.validate` overrides them through steps.py):
    max_quarantine_ratio, max_duplicate_ratio   quarantined / input, duplicates / input
    min_rows                                    manifest rows
    min_caption_len, max_caption_len            per caption, characters (None: ingest's limit)
    caption_len_mean                            [lo, hi] of the mean caption length
    caption_len_quantiles                       {q: [lo, hi]} (None = unbounded)
    max_heldout_fraction                        heldout rows / rows
    size                                        expected width == height (None: dataset.json)
    allow_opted_out                             None: dataset.json's keep_opted_out
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from model_code import storage

# ---------------------------------------------------------------- configuration
DEFAULT_THRESHOLDS: dict[str, Any] = {
    "max_quarantine_ratio": 0.10,
    "max_duplicate_ratio": 0.10,
    "min_rows": 1,
    "min_caption_len": 1,
    "max_caption_len": None,
    # mean caption length in characters: below 3 the "captions" are empty-ish tokens; the seeds'
    # long synthetic captions are ~1000 characters, so a mean above 2000 means a broken field
    "caption_len_mean": [3, 2000],
    "caption_len_quantiles": {"0.05": [1, None], "0.5": [3, 2000], "0.95": [None, 10000]},
    "max_heldout_fraction": 0.5,
    "size": None,
    "allow_opted_out": None,
}
FALLBACK_MAX_CAPTION_LEN = 20_000  # ingest's default max_caption_chars

TABLES = ("manifest", "dataset", "quarantine", "duplicates")
# the saved suites, one per table: easel_<table>.json (GX's ExpectationSuite JSON)
SUITES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expectations")
CHECKPOINT = "easel_validation"
DATA_DOCS_SITE = "local_site"  # the site a file-backed GX project gets by default
GX_SUFFIX = "_gx"              # DIR/validation.json -> the GX project DIR/validation_gx
REPORT_NAME = "validation.json"


class ValidationFailed(RuntimeError):
    """The suite failed; .result is validate()'s result (with the report path)."""

    def __init__(self, result: dict):
        self.result = result
        super().__init__(summary_text(result))


def resolve_thresholds(thresholds: dict | None) -> dict:
    """DEFAULT_THRESHOLDS updated with `thresholds`; unknown keys or bad values are errors."""
    out = copy.deepcopy(DEFAULT_THRESHOLDS)
    for k, v in (thresholds or {}).items():
        if k not in DEFAULT_THRESHOLDS:
            raise ValueError(f"unknown validation threshold {k!r}: expected one of "
                             f"{', '.join(sorted(DEFAULT_THRESHOLDS))}")
        out[k] = copy.deepcopy(v)
    for k in ("max_quarantine_ratio", "max_duplicate_ratio", "max_heldout_fraction"):
        if not isinstance(out[k], (int, float)) or not 0 <= out[k] <= 1:
            raise ValueError(f"threshold {k} must be a number in [0, 1], got {out[k]!r}")
    for k in ("min_rows", "min_caption_len"):
        if not isinstance(out[k], int) or out[k] < 0:
            raise ValueError(f"threshold {k} must be a non-negative integer, got {out[k]!r}")
    for k in ("max_caption_len", "size"):
        if out[k] is not None and (not isinstance(out[k], int) or out[k] <= 0):
            raise ValueError(f"threshold {k} must be a positive integer or null, got {out[k]!r}")
    out["caption_len_mean"] = _range("caption_len_mean", out["caption_len_mean"])
    q = out["caption_len_quantiles"]
    if not isinstance(q, dict) or not q:
        raise ValueError(f"threshold caption_len_quantiles must be a mapping quantile -> [lo, hi], got {q!r}")
    parsed = {}
    for key, rng in q.items():
        try:
            qf = float(key)
        except (TypeError, ValueError):
            qf = -1.0
        if not 0 <= qf <= 1:
            raise ValueError(f"threshold caption_len_quantiles: {key!r} is not a quantile in [0, 1]")
        parsed[str(qf)] = _range(f"caption_len_quantiles[{key}]", rng)
    out["caption_len_quantiles"] = dict(sorted(parsed.items(), key=lambda kv: float(kv[0])))
    if out["allow_opted_out"] is not None and not isinstance(out["allow_opted_out"], bool):
        raise ValueError(f"threshold allow_opted_out must be true, false or null, got {out['allow_opted_out']!r}")
    return out


def _range(name: str, rng: Any) -> list:
    if (not isinstance(rng, (list, tuple)) or len(rng) != 2
            or any(v is not None and not isinstance(v, (int, float)) for v in rng)):
        raise ValueError(f"threshold {name} must be [lo, hi] (numbers or null), got {rng!r}")
    lo, hi = rng
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"threshold {name}: lo {lo} > hi {hi}")
    return [lo, hi]


# ---------------------------------------------------------------- loading
def _read_parquet(uri: str) -> pd.DataFrame:
    with storage.open_uri(uri, "rb") as f:
        return pd.read_parquet(f)


def _load(dataset_dir: str) -> tuple[dict, str, dict[str, pd.DataFrame]]:
    """(dataset.json of the ingested root, root dir, {manifest, quarantine, duplicates})."""
    from model_code.data import dataset as ds
    if not storage.exists(storage.join(dataset_dir, "dataset.json")):
        raise ValueError(f"dataset_dir={dataset_dir}: not an ingested dataset (no dataset.json); "
                         f"run `easel data ingest` first")
    root = ds.shards_root(dataset_dir)  # a recaptioned dataset validates its parent's tables
    meta = ds.info(root)
    tables = {}
    for name in ("manifest", "quarantine", "duplicates"):
        uri = storage.join(root, f"{name}.parquet")
        if not storage.exists(uri):
            raise ValueError(f"dataset_dir={dataset_dir}: {name}.parquet is missing in {root}")
        tables[name] = _read_parquet(uri)
    return meta, root, tables


# ---------------------------------------------------------------- the suites
def load_suites() -> dict[str, dict]:
    """{table: the saved suite, as GX's JSON (ExpectationSuite.to_json_dict())}, read from
    model_code/data/expectations/easel_<table>.json: the suites live there, nothing builds them."""
    out = {}
    for table in TABLES:
        with open(os.path.join(SUITES_DIR, f"easel_{table}.json"), encoding="utf-8") as f:
            out[table] = json.load(f)
    return out


def suite_parameter_names(suite: dict) -> set[str]:
    """The names of the {"$PARAMETER": name} values in a suite's expectation kwargs."""
    def walk(x: Any) -> set[str]:
        if isinstance(x, dict):
            if set(x) == {"$PARAMETER"}:
                return {x["$PARAMETER"]}
            return set().union(*(walk(v) for v in x.values())) if x else set()
        if isinstance(x, list):
            return set().union(*(walk(v) for v in x)) if x else set()
        return set()
    return set().union(*(walk(e["kwargs"]) for e in suite["expectations"])) if suite["expectations"] else set()


def suite_parameters(meta: dict, th: dict, shard_names: list[str]) -> dict[str, Any]:
    """The value of every suite parameter: what depends on the thresholds, on the dataset
    (dataset.json, the shard files found) or on other code (source kinds, quarantine reasons).
    GX substitutes them at validation time; the saved suites say {"$PARAMETER": name}."""
    from model_code.data import ingest, sources
    params = meta.get("parameters") or {}
    allow_opt = th["allow_opted_out"]
    if allow_opt is None:
        allow_opt = bool(params.get("keep_opted_out", False))
    quantiles = th["caption_len_quantiles"]
    return {
        # easel_manifest
        "min_rows": th["min_rows"],
        # None when dataset.json has no size: the width/height expectations then fail with GX's
        # "min_value and max_value cannot both be None" (ingest always records the size)
        "size": th["size"] or meta.get("size") or params.get("size"),
        "min_caption_len": th["min_caption_len"],
        "max_caption_len": th["max_caption_len"] or params.get("max_caption_chars") or FALLBACK_MAX_CAPTION_LEN,
        "caption_len_mean_min": th["caption_len_mean"][0],
        "caption_len_mean_max": th["caption_len_mean"][1],
        "caption_len_quantiles": {"quantiles": [float(q) for q in quantiles],
                                  "value_ranges": [list(r) for r in quantiles.values()]},
        # a list whose length varies with the dataset is a parameter like any other value
        "shard_names": list(shard_names),
        "opt_out_values": [False, True] if allow_opt else [False],
        "min_side": params.get("min_side", 1),
        # easel_dataset
        "max_quarantine_ratio": th["max_quarantine_ratio"],
        "max_duplicate_ratio": th["max_duplicate_ratio"],
        "max_heldout_fraction": th["max_heldout_fraction"],
        "source_kinds": list(sources.KINDS),
        # easel_quarantine
        "quarantine_reasons": list(ingest.REASONS),
    }


def _duplicates_frame(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """duplicates + kept_key_missing: the kept_key when no manifest record has it, else null."""
    d = tables["duplicates"].copy()
    keys = tables["manifest"]["key"] if "key" in tables["manifest"].columns else pd.Series([], dtype=object)
    kept = d["kept_key"] if "kept_key" in d.columns else pd.Series([None] * len(d), dtype=object)
    d["kept_key_missing"] = kept.where(~kept.isin(keys), None).astype(object)
    return d


def _dataset_row(meta: dict, tables: dict[str, pd.DataFrame], shards_found: int) -> pd.DataFrame:
    m, q, d = tables["manifest"], tables["quarantine"], tables["duplicates"]
    n_in = int(meta.get("input", len(m) + len(q) + len(d)))
    accepted = int(meta.get("accepted", len(m)))
    quarantined = int(meta.get("quarantined", len(q)))
    duplicates = int(meta.get("duplicates", len(d)))
    heldout = int((m["split"] == "heldout").sum()) if "split" in m.columns else 0
    return pd.DataFrame([{
        "input": n_in, "accepted": accepted, "quarantined": quarantined, "duplicates": duplicates,
        "manifest_rows": len(m), "quarantine_rows": len(q), "duplicate_rows": len(d),
        "quarantine_ratio": quarantined / n_in if n_in else 0.0,
        "duplicate_ratio": duplicates / n_in if n_in else 0.0,
        "unaccounted": n_in - accepted - quarantined - duplicates,
        "heldout_fraction": heldout / len(m) if len(m) else 0.0,
        "kind": str(meta.get("kind", "")),
        "shards": int(meta.get("shards", shards_found)), "shards_found": shards_found,
    }])


def _plain_success(store: Any) -> None:
    """Let this result store (one context's instance; nothing global) take numpy bools.

    GX 1.24's expect_column_quantile_values_to_be_between returns success=np.all(...), a numpy
    bool whatever the data's dtypes, and under marshmallow 4 the result schema's Boolean field
    passes it on to json.dumps, which rejects it: every ValidationDefinition run stores its result
    (file or in-memory store alike), so the run would fail. Converting the frames cannot help;
    each result's success becomes a Python bool just before GX serializes the suite result."""
    serialize = store.serialize

    def _serialize(value):
        for r in value.results:
            if r.success is not None and not isinstance(r.success, bool):
                r.success = bool(r.success)
        return serialize(value)

    store.serialize = _serialize


def _exception_message(r: Any) -> str | None:
    """The error of a result that raised: GX 1.x gives {"exception_message": ...} or, when a
    metric failed, {metric id: {"exception_message": ...}}."""
    info = r.exception_info or {}
    if info.get("exception_message"):
        return info["exception_message"]
    for v in info.values():
        if isinstance(v, dict) and v.get("exception_message"):
            return v["exception_message"]
    return None


def _run_gx(frames: dict[str, pd.DataFrame], suites: dict[str, dict], params: dict[str, Any],
            dataset: str, project: str | None) -> tuple[list[dict], dict | None]:
    """Run the suites through a GX Checkpoint: one ValidationDefinition per table.

    project: a local directory, the root of a file-backed GX project, whose Checkpoint also
    runs UpdateDataDocsAction; None: an ephemeral context and no Data Docs. Returns (one plain
    dict per expectation result, {"index": site index.html, "pages": {table: its page}} or None)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with tempfile.TemporaryDirectory(prefix="easel-gx-") as scratch:
        # A Checkpoint hands every ValidationDefinition the same batch_parameters, so four
        # in-memory frames cannot be passed to one run: each table is a parquet file of a
        # pandas filesystem data source instead (scratch files: the Data Docs name the dataset
        # in each batch's metadata, and the path of a file that is gone after the run)
        for table, frame in frames.items():
            frame.to_parquet(os.path.join(scratch, f"{table}.parquet"), index=False)
        ctx = (gx.get_context(mode="file", project_root_dir=project) if project
               else gx.get_context(mode="ephemeral"))
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        _plain_success(ctx.validation_results_store)
        source = ctx.data_sources.add_or_update_pandas_filesystem("easel", base_directory=scratch)
        vds = []
        for table in TABLES:
            saved = suites[table]
            suite = gx.ExpectationSuite(name=saved["name"], expectations=saved["expectations"],
                                        meta=saved["meta"], notes=saved.get("notes"))
            batch = (source.add_parquet_asset(table, batch_metadata={"dataset": dataset, "table": table})
                     .add_batch_definition_path("all", path=f"{table}.parquet"))
            vds.append(gx.ValidationDefinition(name=saved["name"], data=batch, suite=suite))
        actions = [gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")] if project else []
        # add_or_update saves the ValidationDefinitions and their suites with it (a file-backed
        # project keeps them, replaced by the saved JSON's on each run)
        checkpoint = ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=CHECKPOINT, validation_definitions=vds, actions=actions, result_format="SUMMARY"))
        run = checkpoint.run(expectation_parameters=params)

    by_suite = {res.suite_name: (key, res) for key, res in run.run_results.items()}
    out, pages = [], {}
    for table in TABLES:
        key, res = by_suite[suites[table]["name"]]
        if project:
            url = ctx.get_docs_sites_urls(resource_identifier=key, site_name=DATA_DOCS_SITE)[0]["site_url"]
            pages[table] = _file_url_path(url)
        for r in res.results:
            cfg = r.expectation_config
            kw = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}  # parameters filled in
            cols = [kw[c] for c in ("column", "column_A", "column_B") if c in kw]
            name = f"{cfg.type}({', '.join(cols)})" if cols else cfg.type
            if table != "manifest":
                name = f"{table}.{name}"
            err = _exception_message(r) if not r.success else None
            absent = [c for c in cols if c not in frames[table].columns]
            # the saved suite runs as it is: each expectation on a column the table lacks fails
            # (besides expect_table_columns_to_match_set), and GX's words for it vary
            if err and absent:
                err = f"no column {absent[0]!r} in the {table} table"
            observed = _observed(r.result)
            if table == "dataset" and "column" in kw:  # one row: the value itself says it all
                observed = {"observed_value": _jsonable(frames[table][kw["column"]].iloc[0])}
            out.append({"name": name, "table": table, "success": bool(r.success),
                        "description": cfg.description, "kwargs": _brief(_jsonable(kw)),
                        "observed": observed, **({"error": err} if err else {})})
    docs = None
    if project:
        index = ctx.get_docs_sites_urls(site_name=DATA_DOCS_SITE)[0]["site_url"]
        docs = {"index": _file_url_path(index), "pages": pages}
    return out, docs


def _file_url_path(url: str) -> str:
    from urllib.parse import unquote, urlparse
    return unquote(urlparse(url).path) if url.startswith("file:") else url


def _observed(result: dict) -> dict:
    keep = {}
    for k in ("observed_value", "element_count", "unexpected_count", "unexpected_percent",
              "partial_unexpected_list", "details"):
        if k in (result or {}):
            keep[k] = result[k]
    if "partial_unexpected_list" in keep:
        keep["partial_unexpected_list"] = keep["partial_unexpected_list"][:10]
    return _brief(_jsonable(keep))


def _jsonable(x: Any) -> Any:
    """numpy scalars/arrays and NaN -> plain JSON values."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy scalar or array
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _brief(x: Any, max_items: int = 20, max_chars: int = 300) -> Any:
    """Long value sets (e.g. every key) and long strings shortened for the report."""
    if isinstance(x, dict):
        return {k: _brief(v, max_items, max_chars) for k, v in x.items()}
    if isinstance(x, list):
        head = [_brief(v, max_items, max_chars) for v in x[:max_items]]
        return head + ([f"... {len(x) - max_items} more"] if len(x) > max_items else [])
    if isinstance(x, str) and len(x) > max_chars:
        return x[:max_chars] + "..."
    return x


# ---------------------------------------------------------------- statistics + report
def _statistics(meta: dict, tables: dict[str, pd.DataFrame], row: pd.DataFrame) -> dict:
    m = tables["manifest"]
    r = row.iloc[0]
    st: dict[str, Any] = {k: _jsonable(r[k]) for k in (
        "input", "accepted", "quarantined", "duplicates", "quarantine_ratio", "duplicate_ratio",
        "heldout_fraction", "shards", "shards_found")}
    st["rows"] = len(m)
    st["size"] = meta.get("size")
    st["kind"] = meta.get("kind")
    if "split" in m.columns:
        st["splits"] = {str(k): int(v) for k, v in m["split"].value_counts().sort_index().items()}
    if "curated_caption" in m.columns:
        st["curated"] = int(m["curated_caption"].notna().sum())
    if "caption_len" in m.columns and len(m):
        cl = pd.to_numeric(m["caption_len"], errors="coerce")
        st["caption_len"] = {"mean": round(float(cl.mean()), 3), "min": _jsonable(cl.min()),
                             "p05": float(cl.quantile(0.05)), "p50": float(cl.quantile(0.5)),
                             "p95": float(cl.quantile(0.95)), "max": _jsonable(cl.max())}
    st["reasons"] = (tables["quarantine"]["reason"].value_counts().to_dict()
                     if "reason" in tables["quarantine"].columns else {})
    return _jsonable(st)


def project_dir(report_path: str) -> str:
    """The GX project beside a report: DIR/validation.json -> DIR/validation_gx (DVC ignores it
    inside a dataset, like the report: .dvcignore, version.IGNORED_NAMES)."""
    base = report_path[:-5] if report_path.endswith(".json") else report_path
    return base + GX_SUFFIX


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _run_with_docs(frames: dict[str, pd.DataFrame], suites: dict[str, dict], params: dict[str, Any],
                   dataset: str, gx_dir: str, page_copy: str | None) -> tuple[list[dict], dict]:
    """_run_gx in the file-backed project gx_dir, a local directory or a URI. A remote project is
    downloaded into a temporary directory (so its Data Docs keep earlier runs), run there, and what
    the run added or changed is uploaded. page_copy: a path that also gets the Data Docs page of the
    first table that failed (else the manifest's), for viewers that show one HTML file."""
    remote = storage.is_remote(gx_dir)
    with tempfile.TemporaryDirectory(prefix="easel-gx-project-") as tmp:
        local = tmp if remote else storage.local_path(gx_dir)
        if remote and storage.exists(storage.join(gx_dir, "gx", "great_expectations.yml")):
            storage.get_dir(gx_dir, local)
        before = _snapshot(local) if remote else {}
        results, docs = _run_gx(frames, suites, params, dataset, local)
        if page_copy:
            failed = [e["table"] for e in results if not e["success"]]
            with open(docs["pages"][failed[0] if failed else "manifest"], encoding="utf-8") as f:
                storage.write_text(page_copy, f.read())
        if remote:
            for rel, stamp in _snapshot(local).items():
                if before.get(rel) != stamp:
                    storage.put_file(os.path.join(local, rel), storage.join(gx_dir, *rel.split(os.sep)))

            def to_uri(path: str) -> str:
                return storage.join(gx_dir, *os.path.relpath(path, local).split(os.sep))
            docs = {"index": to_uri(docs["index"]), "pages": {t: to_uri(p) for t, p in docs["pages"].items()}}
    return results, docs


def validate(dataset_dir: str, thresholds: dict | None = None, report_path: str | None = None,
             html_report: bool | str = False) -> dict:
    """Run the suites on an ingested dataset (a directory or URI).

    Returns {"success", "failed_expectations" (names), "report" (path), "statistics",
    "dataset", "failures" (name, description, observed of each failed expectation),
    "data_docs" (the Data Docs site's index.html, or None)}.
    Writes the full report to report_path (default DIR/validation.json). html_report: also build
    the GX Data Docs site, in the GX project beside the report (project_dir: DIR/validation_gx,
    site at gx/uncommitted/data_docs/local_site/index.html); when html_report is a path, that
    path also gets the Data Docs page of the first failing table (else the manifest's)."""
    import great_expectations as gx

    th = resolve_thresholds(thresholds)
    meta, root, tables = _load(dataset_dir)
    shard_uris = storage.ls(storage.join(root, "shards"), "*.tar")
    shard_names = [f"shards/{u.rstrip('/').rsplit('/', 1)[-1]}" for u in shard_uris]
    row = _dataset_row(meta, tables, len(shard_names))
    frames = {"manifest": tables["manifest"], "dataset": row,
              "quarantine": tables["quarantine"], "duplicates": _duplicates_frame(tables)}
    suites = load_suites()
    params = suite_parameters(meta, th, shard_names)
    report_path = report_path or storage.join(dataset_dir, REPORT_NAME)
    if html_report:
        results, docs = _run_with_docs(frames, suites, params, dataset_dir, project_dir(report_path),
                                       html_report if isinstance(html_report, str) else None)
    else:
        results, docs = _run_gx(frames, suites, params, dataset_dir, None)

    failed = [e for e in results if not e["success"]]
    report = {"dataset": dataset_dir, "success": not failed,
              "failed_expectations": [e["name"] for e in failed],
              "statistics": _statistics(meta, tables, row), "thresholds": th,
              "expectations": results, "great_expectations_version": gx.__version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "suites": {t: {"name": s["name"], "version": s["meta"]["easel"]["version"],
                             "file": f"model_code/data/expectations/{s['name']}.json"} for t, s in suites.items()},
              "suite_parameters": _brief(_jsonable(params)),
              "data_docs": docs["index"] if docs else None,
              "data_docs_pages": docs["pages"] if docs else None}
    storage.write_text(report_path, json.dumps(report, indent=1, sort_keys=False) + "\n")
    return {"success": report["success"], "failed_expectations": report["failed_expectations"],
            "report": report_path, "statistics": report["statistics"], "dataset": dataset_dir,
            "failures": [{k: e.get(k) for k in ("name", "description", "observed", "error")} for e in failed],
            "data_docs": report["data_docs"]}


def summary_text(result: dict) -> str:
    """A few readable lines: verdict, key numbers, each failed expectation with what was seen."""
    st = result.get("statistics") or {}
    verdict = "passed" if result["success"] else f"FAILED ({len(result['failed_expectations'])} expectations)"
    lines = [f"validation of {result.get('dataset', '?')}: {verdict}"]
    if st:
        splits = ", ".join(f"{k} {v}" for k, v in (st.get("splits") or {}).items())
        lines.append(f"  {st.get('rows')} records ({splits}); input {st.get('input')}, quarantined "
                     f"{st.get('quarantined')} ({100 * (st.get('quarantine_ratio') or 0):.1f}%), duplicates "
                     f"{st.get('duplicates')} ({100 * (st.get('duplicate_ratio') or 0):.1f}%)")
    for f in result.get("failures") or [{"name": n} for n in result["failed_expectations"]]:
        seen = _seen(f.get("observed") or {})
        why = f" -- {f['description']}" if f.get("description") else ""
        err = f" (error: {f['error']})" if f.get("error") else ""
        lines.append(f"  FAILED {f['name']}{why}{': ' + seen if seen else ''}{err}")
    lines.append(f"  report: {result.get('report')}")
    return "\n".join(lines)


def _seen(obs: dict) -> str:
    missing = ((obs.get("details") or {}).get("mismatched") or {}).get("missing")
    if missing:
        return f"missing columns {missing}"
    if obs.get("unexpected_count"):
        eg = obs.get("partial_unexpected_list") or []
        return f"{obs['unexpected_count']} unexpected values, e.g. {json.dumps(eg[:3])[:200]}"
    if "observed_value" in obs:
        return f"observed {json.dumps(obs['observed_value'])[:200]}"
    return ""


def require_valid(dataset_dir: str, thresholds: dict | None = None,
                  report_path: str | None = None, **kw) -> dict:
    """validate(), raising ValidationFailed (its message lists the failed expectations)."""
    result = validate(dataset_dir, thresholds=thresholds, report_path=report_path, **kw)
    if not result["success"]:
        raise ValidationFailed(result)
    return result
