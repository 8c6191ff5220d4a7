"""The data-quality gate: a Great Expectations suite over an ingested dataset.

`validate(dataset_dir)` checks four tables with GX 1.x (an ephemeral context: nothing is
written but our own report):

- manifest: schema (columns present, types), nulls, image sizes (width == height == the
  ingest size), caption lengths (per record and their distribution: mean and quantiles),
  uniqueness (key, sha256), hash formats, values in sets (split, shard files that exist,
  opt_out), scene graphs that parse as JSON;
- dataset: one row of dataset-level numbers from dataset.json and the three tables: the
  quarantine and duplicate ratios against thresholds, the balance input = accepted +
  quarantined + duplicates, table sizes equal to the counts, the source kind, the held-out share;
- quarantine: every record has a known reason;
- duplicates: every duplicate points at a record that was kept.

The result is {"success", "failed_expectations", "report", "statistics", ...}; a JSON report
(and optionally HTML) is written to DIR/validation.json unless report_path says otherwise.
DVC ignores validation.json/validation.html (.dvcignore), so validating does not change the
dataset's version. `require_valid` raises ValidationFailed for pipelines.

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
import html
import json
import math
import os
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

# Column -> kind; the manifest schema of docs/architecture.md ("Data on disk").
MANIFEST_TYPES: dict[str, str] = {
    "key": "str", "shard": "str", "sha256": "str", "phash": "str",
    "width": "int", "height": "int", "orig_width": "int", "orig_height": "int",
    "orig_mode": "str", "orig_format": "str", "caption": "str", "curated_caption": "str",
    "scene": "str", "source": "str", "license": "str", "opt_out": "bool", "split": "str",
    "caption_len": "int",
}
NULLABLE = ("curated_caption", "scene", "license")
SPLITS = ("train", "heldout")
# GX type names: numeric/bool columns are checked by dtype, object columns value by value
TYPE_LISTS = {
    "int": ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "Int32", "Int64"],
    "str": ["str"],
    "bool": ["bool", "boolean"],
}
DUPLICATE_KINDS = ("exact", "near")
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
def _expectations(meta: dict, th: dict, shard_names: list[str], tables: dict[str, pd.DataFrame]
                  ) -> dict[str, list]:
    """{table: [GX expectation, ...]} for the four tables."""
    import great_expectations.expectations as gxe

    params = meta.get("parameters") or {}
    size = th["size"] or meta.get("size") or params.get("size")
    max_cap = th["max_caption_len"] or params.get("max_caption_chars") or FALLBACK_MAX_CAPTION_LEN
    allow_opt = th["allow_opted_out"]
    if allow_opt is None:
        allow_opt = bool(params.get("keep_opted_out", False))
    m = tables["manifest"]
    present = [c for c in MANIFEST_TYPES if c in m.columns]  # a missing column fails once, below

    man: list = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(MANIFEST_TYPES), exact_match=False,
                                         description="every manifest column is present"),
        gxe.ExpectTableRowCountToBeBetween(min_value=th["min_rows"], description="enough records"),
    ]
    for col in present:
        kind = MANIFEST_TYPES[col]
        man.append(gxe.ExpectColumnValuesToBeInTypeList(
            column=col, type_list=TYPE_LISTS[kind], description=f"{col} is {kind}"))
        # int and bool columns are checked by dtype, and a null turns an int column into float64
        # and a bool one into object: only text columns need their own null check
        if kind == "str" and col not in NULLABLE:
            man.append(gxe.ExpectColumnValuesToNotBeNull(column=col, description=f"{col} has no nulls"))
    has = set(present)
    if size and {"width", "height"} <= has:
        for col in ("width", "height"):
            man.append(gxe.ExpectColumnValuesToBeBetween(
                column=col, min_value=size, max_value=size, description=f"{col} == ingest size {size}"))
    if "caption_len" in has:
        man += [
            gxe.ExpectColumnValuesToBeBetween(column="caption_len", min_value=th["min_caption_len"],
                                              max_value=max_cap, description="caption length in bounds"),
            gxe.ExpectColumnMeanToBeBetween(column="caption_len", min_value=th["caption_len_mean"][0],
                                            max_value=th["caption_len_mean"][1],
                                            description="mean caption length in bounds"),
            gxe.ExpectColumnQuantileValuesToBeBetween(
                column="caption_len",
                quantile_ranges={"quantiles": [float(q) for q in th["caption_len_quantiles"]],
                                 "value_ranges": list(th["caption_len_quantiles"].values())},
                description="caption length distribution (quantiles) in bounds"),
        ]
    if "caption" in has:  # caption_len could lie; the text itself must also be in bounds
        man.append(gxe.ExpectColumnValueLengthsToBeBetween(
            column="caption", min_value=th["min_caption_len"], max_value=max_cap,
            description="caption text length in bounds"))
    for col in ("key", "sha256"):
        if col in has:
            man.append(gxe.ExpectColumnValuesToBeUnique(column=col, description=f"{col} is unique"))
    if "sha256" in has:
        man.append(gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$",
                                                      description="sha256 is 64 hex digits"))
    if "phash" in has:
        man.append(gxe.ExpectColumnValuesToMatchRegex(column="phash", regex=r"^[0-9a-f]{16}$",
                                                      description="phash is 16 hex digits (64 bits)"))
    if "split" in has:
        man += [gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS),
                                                description="split is train or heldout"),
                gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=["train"],
                                                           description="there is training data")]
    if "shard" in has:
        man.append(gxe.ExpectColumnValuesToBeInSet(column="shard", value_set=shard_names,
                                                   description="every record's shard file exists"))
    if "scene" in has:
        man.append(gxe.ExpectColumnValuesToBeJsonParseable(column="scene",
                                                           description="scene graphs are JSON"))
    if "opt_out" in has and not allow_opt:
        man.append(gxe.ExpectColumnValuesToBeInSet(column="opt_out", value_set=[False],
                                                   description="no opted-out record is kept"))
    for col in ("orig_width", "orig_height"):
        if col in has:
            man.append(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=params.get("min_side", 1),
                                                         description=f"{col} >= ingest min_side"))

    from model_code.data import sources
    ds_exp = [
        gxe.ExpectColumnValuesToBeBetween(column="quarantine_ratio", min_value=0,
                                          max_value=th["max_quarantine_ratio"],
                                          description="quarantined / input within max_quarantine_ratio"),
        gxe.ExpectColumnValuesToBeBetween(column="duplicate_ratio", min_value=0,
                                          max_value=th["max_duplicate_ratio"],
                                          description="duplicates / input within max_duplicate_ratio"),
        gxe.ExpectColumnValuesToBeBetween(column="unaccounted", min_value=0, max_value=0,
                                          description="input = accepted + quarantined + duplicates"),
        gxe.ExpectColumnValuesToBeBetween(column="heldout_fraction", min_value=0,
                                          max_value=th["max_heldout_fraction"],
                                          description="held-out share within max_heldout_fraction"),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(sources.KINDS),
                                        description="a known source kind"),
    ]
    for a, b in (("manifest_rows", "accepted"), ("quarantine_rows", "quarantined"),
                 ("duplicate_rows", "duplicates"), ("shards_found", "shards")):
        ds_exp.append(gxe.ExpectColumnPairValuesToBeEqual(column_A=a, column_B=b,
                                                          description=f"{a} == dataset.json {b}"))

    from model_code.data import ingest
    quar = [gxe.ExpectColumnValuesToNotBeNull(column="reason", description="every quarantined record has a reason"),
            gxe.ExpectColumnValuesToBeInSet(column="reason", value_set=list(ingest.REASONS),
                                            description="quarantine reasons are known ones")]
    dup = [gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(DUPLICATE_KINDS),
                                           description="duplicate kind is exact or near"),
           # kept_key_missing (see _duplicates_frame) rather than kept_key in a value_set of
           # every key: GX serialises a value_set per metric, 3 minutes for 200k keys
           gxe.ExpectColumnValuesToBeNull(column="kept_key_missing",
                                          description="every duplicate points at a kept record")]
    return {"manifest": man, "dataset": ds_exp, "quarantine": quar, "duplicates": dup}


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


def _run_gx(frames: dict[str, pd.DataFrame], expectations: dict[str, list]) -> list[dict]:
    """Validate each frame with its expectations; one plain dict per expectation result."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("easel")
    out = []
    for table, exps in expectations.items():
        batch = (source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
                 .get_batch(batch_parameters={"dataframe": frames[table]}))
        # batch.validate (not a ValidationDefinition): nothing goes through GX's result store,
        # whose JSON encoder chokes on numpy bools in quantile results
        res = batch.validate(gx.ExpectationSuite(name=f"easel_{table}", expectations=exps))
        for r in res.results:
            cfg = r.expectation_config
            kw = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
            cols = [kw[c] for c in ("column", "column_A", "column_B") if c in kw]
            name = f"{cfg.type}({', '.join(cols)})" if cols else cfg.type
            if table != "manifest":
                name = f"{table}.{name}"
            err = (r.exception_info or {}).get("exception_message") if not r.success else None
            observed = _observed(r.result)
            if table == "dataset" and "column" in kw:  # one row: the value itself says it all
                observed = {"observed_value": _jsonable(frames[table][kw["column"]].iloc[0])}
            out.append({"name": name, "table": table, "success": bool(r.success),
                        "description": cfg.description, "kwargs": _brief(_jsonable(kw)),
                        "observed": observed, **({"error": err} if err else {})})
    return out


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


def _html(report: dict) -> str:
    rows = "\n".join(
        f"<tr class={'ok' if e['success'] else 'fail'}><td>{'pass' if e['success'] else 'FAIL'}</td>"
        f"<td>{html.escape(e['name'])}</td><td>{html.escape(e.get('description') or '')}</td>"
        f"<td><code>{html.escape(json.dumps(e['observed'])[:400])}</code></td></tr>"
        for e in report["expectations"])
    stats = html.escape(json.dumps(report["statistics"], indent=1))
    verdict = "passed" if report["success"] else "FAILED"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Validation: {html.escape(report['dataset'])}</title>
<style>body{{font-family:sans-serif}} td{{padding:2px 8px;vertical-align:top}} .fail{{background:#fdd}}
.ok{{background:#efe}}</style></head><body>
<h1>Validation {verdict}: {html.escape(report['dataset'])}</h1>
<p>{len(report['failed_expectations'])} of {len(report['expectations'])} expectations failed;
Great Expectations {html.escape(report['great_expectations_version'])}, {html.escape(report['created'])}</p>
<table><tr><th></th><th>expectation</th><th>meaning</th><th>observed</th></tr>
{rows}</table><h2>Statistics</h2><pre>{stats}</pre></body></html>
"""


def validate(dataset_dir: str, thresholds: dict | None = None, report_path: str | None = None,
             html_report: bool | str = False) -> dict:
    """Run the suite on an ingested dataset (a directory or URI).

    Returns {"success", "failed_expectations" (names), "report" (path), "statistics",
    "dataset", "failures" (name, description, observed of each failed expectation)}.
    Writes the full report to report_path (default DIR/validation.json) and, with
    html_report, an HTML page beside it (same name, .html), or at html_report when that is a path."""
    import great_expectations as gx

    th = resolve_thresholds(thresholds)
    meta, root, tables = _load(dataset_dir)
    shard_uris = storage.ls(storage.join(root, "shards"), "*.tar")
    shard_names = [f"shards/{u.rstrip('/').rsplit('/', 1)[-1]}" for u in shard_uris]
    row = _dataset_row(meta, tables, len(shard_names))
    frames = {"manifest": tables["manifest"], "dataset": row,
              "quarantine": tables["quarantine"], "duplicates": _duplicates_frame(tables)}
    results = _run_gx(frames, _expectations(meta, th, shard_names, tables))

    failed = [e for e in results if not e["success"]]
    report_path = report_path or storage.join(dataset_dir, REPORT_NAME)
    report = {"dataset": dataset_dir, "success": not failed,
              "failed_expectations": [e["name"] for e in failed],
              "statistics": _statistics(meta, tables, row), "thresholds": th,
              "expectations": results, "great_expectations_version": gx.__version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    storage.write_text(report_path, json.dumps(report, indent=1, sort_keys=False) + "\n")
    if html_report:
        base = report_path[:-5] if report_path.endswith(".json") else report_path
        storage.write_text(html_report if isinstance(html_report, str) else base + ".html", _html(report))
    return {"success": report["success"], "failed_expectations": report["failed_expectations"],
            "report": report_path, "statistics": report["statistics"], "dataset": dataset_dir,
            "failures": [{k: e.get(k) for k in ("name", "description", "observed", "error")} for e in failed]}


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
