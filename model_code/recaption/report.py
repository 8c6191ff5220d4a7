"""Caption quality report for a recaptioned dataset (DALL-E 3's claim, measured).

On the Shapes world the truth of every image is known (its scene graph), so each caption can be
scored exactly with text/caption_parser.score_caption: precision (stated facts that are true),
recall (true facts stated) and hallucinations (false facts). The report compares the original
alt-text, the synthetic short and long captions (and the curated captions, where the record has
one, as the human reference), with caption lengths in tokens, filter verdicts, CLIP alignment and a
grid of images with their old and new captions.

Output, beside `out_path` (default DATASET/report/captions.md):
    captions.md     the tables, Markdown
    captions.json   every number in the tables
    captions.png    the image grid (alt-text vs long synthetic caption)
and, with mlflow=True and a tracking URI, the same as an MLflow run's metrics and artifacts.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
from typing import Any

import numpy as np
import pandas as pd

from model_code import storage
from model_code.data.shapes import parse_scene

log = logging.getLogger(__name__)
KINDS = ("short", "long")


def load_sidecars(dataset_dir: str) -> pd.DataFrame:
    """All sidecar columns (text/blend.read_sidecars); ValueError when there are none."""
    from model_code.text.blend import read_sidecars
    df = read_sidecars(dataset_dir)
    if df is None:
        raise ValueError(f"caption_report: {dataset_dir} has no caption sidecars (captions/shard-*.parquet)")
    return df


def _score_column(texts: pd.Series, scenes: list[dict]) -> dict[str, float]:
    """Aggregate caption_parser scores: micro precision over all stated facts (a caption that
    states nothing adds nothing to it), mean recall, mean hallucinations per caption."""
    from model_code.text.caption_parser import score_caption
    stated = true_stated = 0
    recalls, halluc, empty = [], [], 0
    for text, scene in zip(texts, scenes):
        s = score_caption(text if isinstance(text, str) else "", scene)
        stated += s["n_stated"]
        true_stated += s["n_stated"] - s["hallucination"]
        recalls.append(s["recall"])
        halluc.append(s["hallucination"])
        empty += s["n_stated"] == 0
    n = max(1, len(recalls))
    return {"n": len(recalls), "precision": true_stated / stated if stated else 0.0,
            "recall": float(np.mean(recalls)) if recalls else 0.0,
            "hallucinations_per_caption": float(np.mean(halluc)) if halluc else 0.0,
            "hallucination_free": float(np.mean([h == 0 for h in halluc])) if halluc else 0.0,
            "states_nothing": empty / n, "facts_stated_per_caption": stated / n}


def _lengths(col: pd.Series) -> dict[str, float]:
    v = col.dropna().to_numpy(dtype=float)
    if not len(v):
        return {}
    return {"mean": float(v.mean()), "p10": float(np.percentile(v, 10)), "p50": float(np.median(v)),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}


def _verdicts(df: pd.DataFrame) -> dict[str, dict]:
    out = {}
    for kind in KINDS:
        vc = df[f"{kind}_verdict"].value_counts()
        n = max(1, len(df))
        reasons = df.loc[df[f"{kind}_reason"] != "", f"{kind}_reason"]
        by_filter = reasons.map(lambda r: "clip" if r.startswith("CLIP") else
                                ("repetition" if r.startswith("repeated") else "length")).value_counts()
        out[kind] = {"pass": int(vc.get("pass", 0)), "retry": int(vc.get("retry", 0)),
                     "fallback": int(vc.get("fallback", 0)),
                     "first_try_pass_rate": vc.get("pass", 0) / n,
                     "final_pass_rate": (vc.get("pass", 0) + vc.get("retry", 0)) / n,
                     "fallback_rate": vc.get("fallback", 0) / n,
                     "mean_retries": float(df[f"{kind}_retries"].mean()),
                     "last_rejection_by_filter": {k: int(v) for k, v in by_filter.items()}}
    return out


def _grid(dataset_dir: str, df: pd.DataFrame, path: str, n: int) -> str | None:
    from model_code.data.dataset import iter_shard, shard_list
    from model_code.viz import image_grid
    keys = dict(zip(df["key"], zip(df["original"], df["long"])))
    images, captions = [], []
    for uri in shard_list(dataset_dir):
        for key, img, _ in iter_shard(uri):
            if key in keys:
                orig, new = keys[key]
                images.append(img)
                captions.append(f"ALT: {orig} || NEW: {new}")
                if len(images) >= n:
                    break
        if len(images) >= n:
            break
    if not images:
        return None
    grid = image_grid(images, captions, cols=4, cell=160, caption_lines=9, chars_per_line=27)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    storage.write_bytes(path, buf.getvalue())
    return path


def caption_report(dataset_dir: str, out_path: str | None = None, n_grid: int = 8, mlflow: bool = False) -> dict:
    """Score the captions of a recaptioned dataset; write Markdown + JSON + PNG. Returns the numbers."""
    from model_code.data.dataset import info, manifest
    meta = info(dataset_dir)
    df = load_sidecars(dataset_dir)
    man = manifest(dataset_dir)  # the parent's manifest (readers follow the lineage pointer)
    cols = [c for c in ("key", "scene", "curated_caption") if c in man.columns]
    df = df.merge(man[cols], on="key", how="left", validate="one_to_one")
    out_path = out_path or storage.join(dataset_dir, "report", "captions.md")
    stem = out_path[:-3] if out_path.endswith(".md") else out_path
    result: dict[str, Any] = {"dataset": dataset_dir, "parent": meta.get("parent"), "records": len(df),
                              "captioner": meta.get("captioner"), "verdicts": _verdicts(df),
                              "tokens": {c: _lengths(df[f"{c}_tokens"]) for c in ("original", *KINDS)
                                         if f"{c}_tokens" in df},
                              "clip_cosine": {c: float(df[f"{c}_clip"].mean()) for c in ("original", *KINDS)
                                              if f"{c}_clip" in df and df[f"{c}_clip"].notna().any()}}
    # quality against the truth, where the records have scene graphs (the Shapes world)
    has_scene = df["scene"].notna() if "scene" in df else pd.Series(False, index=df.index)
    if has_scene.any():
        sub = df[has_scene]
        scenes = [parse_scene(s) for s in sub["scene"]]
        quality = {"original": _score_column(sub["original"], scenes)}
        for kind in KINDS:
            quality[kind] = _score_column(sub[kind], scenes)
            kept = (sub[f"{kind}_verdict"] != "fallback").to_numpy()
            if kept.any():  # the captioner's own captions, without the fallbacks
                quality[f"{kind} (synthetic only)"] = _score_column(
                    sub.loc[kept, kind], [s for s, k in zip(scenes, kept) if k])
        if "curated_caption" in sub:
            cur = sub["curated_caption"].notna().to_numpy()
            if cur.any():
                quality["curated (human reference)"] = _score_column(
                    sub.loc[cur, "curated_caption"], [s for s, c in zip(scenes, cur) if c])
        result["quality"] = quality
        o, lg = quality["original"], quality["long"]
        result["long_vs_original"] = {"precision_gain": lg["precision"] - o["precision"],
                                      "recall_gain": lg["recall"] - o["recall"]}
    grid_path = _grid(dataset_dir, df, stem + ".png", n_grid) if n_grid else None
    result["grid"] = grid_path
    storage.write_text(stem + ".json", json.dumps(result, indent=2, default=float))
    storage.write_text(out_path, _markdown(result, os.path.basename(grid_path) if grid_path else None))
    result["report"] = out_path
    if mlflow:
        _log_mlflow(result, out_path, stem)
    return result


def _markdown(r: dict, grid_name: str | None) -> str:
    lines = [f"# Caption report: {r['dataset']}", "",
             f"{r['records']} records; parent `{r['parent']}`; captioner `{r['captioner']}`.", ""]
    if "quality" in r:
        lines += ["## Quality against the scene graph (caption_parser.score_caption)", "",
                  "| captions | n | precision | recall | hallucinations / caption | hallucination-free | "
                  "states nothing | facts / caption |", "|---|---|---|---|---|---|---|---|"]
        for name, q in r["quality"].items():
            lines.append(f"| {name} | {q['n']} | {q['precision']:.3f} | {q['recall']:.3f} | "
                         f"{q['hallucinations_per_caption']:.2f} | {q['hallucination_free']:.1%} | "
                         f"{q['states_nothing']:.1%} | {q['facts_stated_per_caption']:.1f} |")
        g = r["long_vs_original"]
        lines += ["", f"Long synthetic vs original alt-text: precision {g['precision_gain']:+.3f}, "
                      f"recall {g['recall_gain']:+.3f}.", ""]
    lines += ["## Lengths (tokens)", "", "| captions | mean | p10 | p50 | p90 | min | max |", "|---|---|---|---|---|---|---|"]
    for name, s in r["tokens"].items():
        if s:
            lines.append(f"| {name} | {s['mean']:.1f} | {s['p10']:.0f} | {s['p50']:.0f} | {s['p90']:.0f} | "
                         f"{s['min']:.0f} | {s['max']:.0f} |")
    lines += ["", "## Filters", "", "| kind | pass (first sample) | pass after retry | fallback to original | "
              "mean retries | last rejection by filter |", "|---|---|---|---|---|---|"]
    for kind, v in r["verdicts"].items():
        lines.append(f"| {kind} | {v['pass']} ({v['first_try_pass_rate']:.1%}) | {v['retry']} | "
                     f"{v['fallback']} ({v['fallback_rate']:.1%}) | {v['mean_retries']:.2f} | "
                     f"{', '.join(f'{k}: {n}' for k, n in v['last_rejection_by_filter'].items()) or '-'} |")
    if r["clip_cosine"]:
        lines += ["", "Mean CLIP image-caption cosine: " +
                  ", ".join(f"{k} {v:.3f}" for k, v in r["clip_cosine"].items()) + "."]
    if grid_name:
        lines += ["", "## Samples (ALT = original alt-text, NEW = long synthetic caption)", "",
                  f"![captions]({grid_name})"]
    return "\n".join(lines) + "\n"


def _flat_metrics(r: dict) -> dict[str, float]:
    out = {}
    for name, q in (r.get("quality") or {}).items():
        key = name.split(" ")[0] + ("_synthetic" if "synthetic" in name else "")
        for m in ("precision", "recall", "hallucinations_per_caption", "hallucination_free"):
            out[f"quality/{key}/{m}"] = q[m]
    for name, s in r["tokens"].items():
        if s:
            out[f"tokens/{name}_mean"] = s["mean"]
    for kind, v in r["verdicts"].items():
        for m in ("first_try_pass_rate", "final_pass_rate", "fallback_rate", "mean_retries"):
            out[f"filters/{kind}_{m}"] = v[m]
    for name, c in r["clip_cosine"].items():
        out[f"clip/{name}_cosine"] = c
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def _log_mlflow(r: dict, md_path: str, stem: str) -> None:
    try:
        from model_code.tracking import log_run
        files = {src: "caption_report" for src in (md_path, stem + ".json", r.get("grid"))
                 if src and storage.exists(src)}
        r["mlflow_run_id"] = log_run("easel-recaption", "caption-report",
                                     {"dataset": r["dataset"], "parent": r["parent"], "captioner": r["captioner"]},
                                     _flat_metrics(r), files=files)
    except Exception as e:  # noqa: BLE001 - the report files are written; tracking is a copy
        log.warning("caption_report: MLflow logging failed: %s", e)
