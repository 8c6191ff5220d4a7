"""Evaluation metrics, each a plain function of images, embeddings or models.

    prompt following   the oracle parses every generated image into a scene graph and the caption
                       parser checks the prompt's constraints against it: the fraction of
                       constraints met and exact match (all met), per category and per constraint
                       kind. T2I-CompBench's categories with a perfect judge instead of a VLM.
    clip_score         mean cosine of (image, prompt) under our CLIP (raw cosine, not x100).
    frechet_distance   FID's formula in our CLIP's image-embedding space, against held-out real images.
    diversity          mean pairwise cosine distance (1 - cos) among the samples of one prompt
                       (DALL-E 2's diversity axis, measured instead of asked of humans).
    dvae_metrics       reconstruction PSNR and codebook usage (perplexity, dead codes) of the dVAE.
    captioner_metrics  fact recall / precision / hallucination of recaption sidecars (DALL-E 3).

Images are PIL images (what Generator.generate returns) unless a docstring says otherwise.
"""
from __future__ import annotations

import math
import random
from itertools import combinations
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from model_code.data import oracle, shapes
from model_code.evaluate import geneval
from model_code.text.caption_parser import parse_caption, score_caption, score_image

CONSTRAINT_KINDS = ("object", "count", "relation", "background")


# ---------------------------------------------------------------- prompt following
def score_images(prompt: dict, images: Sequence[Image.Image], parse=oracle.parse_image) -> list[dict]:
    """One row per image: the oracle's parse of it scored against the prompt's constraints."""
    if "geneval" in prompt:   # GenEval's tasks: GenEval's rules, one verdict per image
        rows = []
        for k, img in enumerate(images):
            scene = parse(img)
            ok, reason = geneval.judge(scene, prompt["geneval"])
            rows.append({"prompt_id": prompt.get("id"), "category": prompt.get("category", "prompt"),
                         "text": prompt["text"], "sample": k, "exact": float(ok), "constraint": float(ok),
                         "n_constraints": 1, "failed": [reason] if reason else [],
                         "invalid": shapes.invalid_reason(scene),
                         "kinds": {"geneval": [int(ok), 1]}, "seen": prompt.get("seen"),
                         "revised": prompt.get("revised"), **_object_counts(scene)})
        return rows
    constraints = parse_caption(prompt["text"])
    rows = []
    for k, img in enumerate(images):
        scene = parse(img)
        s = score_image(scene, constraints)
        kinds: dict[str, list[bool]] = {}
        for r in s["results"]:
            kinds.setdefault(r["kind"], []).append(bool(r["ok"]))
        rows.append({"prompt_id": prompt.get("id"), "category": prompt.get("category", "prompt"),
                     "text": prompt["text"], "sample": k, "exact": float(s["exact"]),
                     "constraint": float(s["fraction"]), "n_constraints": s["n_constraints"],
                     "failed": [r["constraint"] for r in s["results"] if not r["ok"]],
                     "invalid": s["invalid"],
                     "kinds": {kd: [sum(v), len(v)] for kd, v in kinds.items()},
                     "seen": prompt.get("seen"), "revised": prompt.get("revised"), **_object_counts(scene)})
    return rows


def _object_counts(scene: dict) -> dict[str, int]:
    """Objects the oracle found, and how many of them have no world shape (oracle.BLOB): a model
    that draws soft blobs shows here before any prompt is met."""
    objs = scene.get("objects") or []
    return {"objects": len(objs), "blobs": sum(o.get("shape") == oracle.BLOB for o in objs)}


def summarize_following(rows: Iterable[dict]) -> dict[str, Any]:
    """Per category: exact and constraint accuracy (mean over images), and accuracy per constraint
    kind (constraints met / checked). `overall` is the macro mean over categories, so that a
    category with many prompts does not outweigh the others."""
    per: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = per.setdefault(r["category"], {"exact": [], "constraint": [], "kinds": {}, "invalid": [],
                                           "seen": [], "heldout": [], "objects": 0, "blobs": 0})
        c["exact"].append(r["exact"])
        c["objects"] += r.get("objects", 0)
        c["blobs"] += r.get("blobs", 0)
        c["invalid"].append(bool(r.get("invalid")))
        if r.get("seen") is not None:   # compositions seen in training vs held out, apart
            c["seen" if r["seen"] else "heldout"].append(r["exact"])
        c["constraint"].append(r["constraint"])
        for kd, (ok, n) in r["kinds"].items():
            acc = c["kinds"].setdefault(kd, [0, 0])
            acc[0] += ok
            acc[1] += n
    out: dict[str, Any] = {}
    for cat, c in per.items():
        out[cat] = {"exact": float(np.mean(c["exact"])), "constraint": float(np.mean(c["constraint"])),
                    "images": len(c["exact"]), "invalid": float(np.mean(c["invalid"])),
                    **{f"exact_{k}": float(np.mean(c[k])) for k in ("seen", "heldout") if c[k]},
                    **{f"images_{k}": len(c[k]) for k in ("seen", "heldout") if c[k]},
                    **({"blob": c["blobs"] / c["objects"]} if c["objects"] else {}),
                    **{f"{kd}_acc": ok / n for kd, (ok, n) in sorted(c["kinds"].items()) if n}}
    overall = ({"exact": float(np.mean([v["exact"] for v in out.values()])),
                "constraint": float(np.mean([v["constraint"] for v in out.values()]))} if out else {})
    if out:   # share of images that are not Shapes scenes at all (noise, blank, clutter)
        overall["invalid"] = float(np.mean([v["invalid"] for v in out.values()]))
        objects = sum(c["objects"] for c in per.values())
        if objects:   # share of all drawn objects that have no world shape (soft blobs)
            overall["blob"] = sum(c["blobs"] for c in per.values()) / objects
    ge = geneval.overall({t: v["exact"] for t, v in out.items()})
    if ge is not None:   # Shapes-GenEval: the mean of GenEval's six tasks
        overall["geneval"] = ge
    return {"per_category": out, "overall": overall}


def prompt_following(prompts: Sequence[dict], images: Sequence[Sequence[Image.Image]],
                     parse=oracle.parse_image) -> dict[str, Any]:
    """prompts[i] with its samples images[i] -> {"per_category", "overall", "rows"}."""
    if len(prompts) != len(images):
        raise ValueError(f"images: one list per prompt expected, got {len(images)} for {len(prompts)} prompts")
    rows = [r for p, ims in zip(prompts, images) for r in score_images(p, ims, parse)]
    return {**summarize_following(rows), "rows": rows}


def chance_following(prompts: Sequence[dict], scenes: Sequence[dict], samples: int = 1,
                     seed: int = 0) -> dict[str, Any]:
    """Prompt following of a model that ignores the prompt but draws perfect images from the
    data: each prompt is scored against `samples` random true scene graphs of real images (no
    oracle needed). The floor a generator must clear to show that it reads the prompt."""
    if not scenes:
        raise ValueError("scenes: chance_following needs at least one real scene graph")
    rng = random.Random(seed)
    rows = [r for p in prompts
            for r in score_images(p, [rng.choice(scenes) for _ in range(samples)], parse=lambda s: s)]
    return summarize_following(rows)


# ---------------------------------------------------------------- CLIP-space metrics
@torch.no_grad()
def clip_score(generator, images: Sequence[Image.Image], prompts: Sequence[str],
               batch_size: int = 64) -> float:
    """Mean cosine similarity of each image with its prompt under the generator's CLIP."""
    if len(images) != len(prompts):
        raise ValueError(f"prompts: one per image expected, got {len(prompts)} for {len(images)} images")
    if not images:
        raise ValueError("images: clip_score needs at least one image")
    scores = [generator.clip_scores(list(images[i:i + batch_size]), list(prompts[i:i + batch_size]))
              for i in range(0, len(images), batch_size)]
    return float(torch.cat(scores).mean())


@torch.no_grad()
def embed_images(generator, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
    """(N, D) L2-normalised CLIP image embeddings."""
    if not images:
        return np.zeros((0, int(generator.clip.config["embed_dim"])), np.float64)
    out = [generator.embed_images(list(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().cpu().numpy()


def _cov(x: np.ndarray) -> np.ndarray:
    # one sample has no spread (np.cov would divide by zero and return NaN)
    return np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of embeddings (N, D) and (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)  (Heusel et al., FID).

    tr((S_a S_b)^1/2) is computed as tr((S_a^1/2 S_b S_a^1/2)^1/2), a symmetric PSD matrix whose
    eigenvalues are real: with fewer samples than dimensions the covariances are singular, where
    scipy.linalg.sqrtm of the non-symmetric product returns complex noise; here the result stays
    real and a set against itself gives 0 up to rounding."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs two (N, D) arrays with equal D, got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        raise ValueError("frechet_distance needs at least one embedding in each set")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("frechet_distance: embeddings contain NaN or inf")
    s_a, s_b = _cov(a), _cov(b)
    r = _psd_sqrt(s_a)
    m = r @ s_b @ r                                           # (D, D), symmetric PSD
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    fd = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * cross)
    return max(fd, 0.0)


def pairwise_distance(emb: np.ndarray) -> float:
    """Mean cosine distance (1 - cos) over all pairs of rows of (K, D); needs K >= 2."""
    emb = np.asarray(emb, np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        raise ValueError(f"pairwise_distance needs (K >= 2, D) embeddings, got shape {emb.shape}")
    n = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return float(np.mean([1.0 - n[i] @ n[j] for i, j in combinations(range(len(n)), 2)]))


def diversity(groups: Iterable[np.ndarray]) -> float | None:
    """Mean over prompts of the mean pairwise distance among that prompt's samples; prompts with
    fewer than two samples are skipped; None when no prompt has two."""
    vals = [pairwise_distance(g) for g in groups if len(g) >= 2]
    return float(np.mean(vals)) if vals else None


# ---------------------------------------------------------------- held-out real images
def heldout_records(dataset: str, limit: int | None = None, seed: int = 0,
                    split: str = "heldout") -> list[tuple[str, Image.Image, dict]]:
    """(key, image, manifest row) of the dataset's held-out split, a seeded sample of `limit`.
    Only the shards that hold chosen keys are read."""
    from model_code.data.dataset import iter_records, manifest, shard_list
    df = manifest(dataset)
    if "split" not in df.columns:
        raise ValueError(f"dataset: the manifest of {dataset} has no 'split' column")
    keys = sorted(df.loc[df["split"] == split, "key"])
    if limit is not None and len(keys) > limit:
        keys = sorted(random.Random(seed).sample(keys, limit))
    want = set(keys)
    # the manifest's shard column is relative ("shards/shard-00000.tar"): read only those shards
    names = {s.rsplit("/", 1)[-1] for s in df.loc[df["key"].isin(want), "shard"].dropna()}
    shards = [s for s in shard_list(dataset) if not names or s.rsplit("/", 1)[-1] in names]
    out = [(k, im, row) for k, im, row in iter_records(dataset, shards) if k in want]
    return sorted(out, key=lambda r: r[0])


def images_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    from model_code.generate import to_tensor
    return to_tensor(images, size)


# ---------------------------------------------------------------- dVAE
@torch.no_grad()
def dvae_metrics(dvae, images: Sequence[Image.Image], batch_size: int = 64) -> dict[str, float]:
    """Reconstruction PSNR (dB, mean per image) and codebook usage over a set of real images."""
    from model_code.models.dvae import codebook_usage, psnr
    if not images:
        raise ValueError("images: dvae_metrics needs at least one image")
    size, device = int(dvae.config["image_size"]), next(dvae.parameters()).device
    codes, psnrs, weights = [], [], []
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i:i + batch_size], size).to(device)   # (B, 3, S, S) in [-1, 1]
        c = dvae.encode(x)                                            # (B, g, g)
        psnrs.append(float(psnr(dvae.decode(c), x)))
        weights.append(len(x))
        codes.append(c)
    usage = codebook_usage(torch.cat(codes), dvae.codebook_size)
    return {"psnr": float(np.average(psnrs, weights=weights)), "perplexity": usage["perplexity"],
            "dead_codes": float(usage["dead_codes"]), "used_fraction": usage["used_fraction"]}


# ---------------------------------------------------------------- captioner (recaption sidecars)
def captioner_metrics(dataset: str, limit: int | None = 2000, seed: int = 0,
                      split: str | None = "heldout") -> dict[str, float] | None:
    """Fact recall, precision and hallucinations per caption of the captioner's short and long
    captions (DALL-E 3's recaptions), scored against the scene graphs; None when the dataset has
    no recaption sidecars. Captions that fell back to the original are the web's, not the
    captioner's: they are counted in `<kind>.fallback_rate` and left out of the other numbers.
    Uses the `split` records when the dataset has any, else all records."""
    import pandas as pd
    from model_code.data.dataset import manifest
    from model_code.data.shapes import parse_scene
    from model_code.text.blend import read_sidecars
    side = read_sidecars(dataset)
    if side is None:
        return None
    man = manifest(dataset)[["key", "scene", "split"]]
    df = side.merge(man, on="key", how="inner")
    df = df[df["scene"].notna()]
    if split and (df["split"] == split).any():
        df = df[df["split"] == split]
    if df.empty:
        return None
    if limit is not None and len(df) > limit:
        df = df.sample(n=limit, random_state=seed)
    out: dict[str, float] = {"captions.n": float(len(df))}
    for kind in ("short", "long"):
        if kind not in df.columns:
            continue
        col = f"{kind}_fallback"
        fb = df[col].astype(bool) if col in df.columns else pd.Series(False, index=df.index)
        out[f"{kind}.fallback_rate"] = float(fb.mean())
        own = df[~fb]
        if own.empty:
            continue
        scores = [score_caption(t, parse_scene(s)) for t, s in zip(own[kind], own["scene"])]
        out[f"{kind}.recall"] = float(np.mean([s["recall"] for s in scores]))
        out[f"{kind}.precision"] = float(np.mean([s["precision"] for s in scores]))
        out[f"{kind}.hallucination"] = float(np.mean([s["hallucination"] for s in scores]))
    return out


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a metrics dict (what MLflow and the gates take)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)):
            out[k] = float(v)
    return out
