"""How much a reranker can find among a bundle's candidates: the measurement behind
docs/results.md ("Session 14").

The 80 single-object prompts of `single_object.py` (rewritten as served) get K candidates each,
sampled once; the oracle judges every candidate against the prompt as written. For each budget N,
the best-of-N is taken in each of the K/N disjoint groups of N candidates and averaged, picked by
(a) the oracle itself (an upper bound: what a perfect reranker would keep), (b) the bundle's
CLIP and any other CLIP given with --clip (DALL-E 1's reranking) and (c) the captioner's
log p(prompt | image) (`rerank: captioner`), with the bundle's captioner part or one given with
--captioner. Reports exact and
not-a-scene rates per N; the gap between (a) and (b) is what the reranker loses, the oracle row at
N = 1 is the generator alone.

    python tests/benchmarks/rerank_quality.py BUNDLE [--k 16] [--seed S] [--clip OTHER_CLIP ...] [--captioner DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from single_object import prompts  # noqa: E402

from model_code.evaluate import metrics as M  # noqa: E402
from model_code.evaluate.tables import best_of_groups  # noqa: E402
from model_code.generate import Generator, to_pil  # noqa: E402
from model_code.models.clip import CLIP  # noqa: E402
from model_code.serve.rewrite import BuiltinRewriter  # noqa: E402


def best_of(values: np.ndarray, keys: np.ndarray, n: int) -> float:
    """Mean of `values` (P, K) at the best-of-n picks of `keys` (P, K), over prompts and groups."""
    return round(float(np.take_along_axis(values, best_of_groups(keys, n), 1).mean()), 3)


@torch.no_grad()
def measure(gen: Generator, k: int = 16, seed: int = 0, clips: dict[str, CLIP] | None = None) -> dict:
    asked = prompts()
    rw = BuiltinRewriter()
    texts = [rw.rewrite(p, seed=i).text for i, p in enumerate(asked)]
    images = gen.sample(texts, k, torch.Generator().manual_seed(seed), gen.sampling)   # (P * k, 3, H, W)
    pil = to_pil(images)
    rows = [M.score_images({"text": p}, pil[i * k:(i + 1) * k]) for i, p in enumerate(asked)]   # vs the prompt as written
    exact = np.array([[r["exact"] for r in rs] for rs in rows])                   # (P, k)
    invalid = np.array([[r["invalid"] is not None for r in rs] for rs in rows], dtype=float)
    budgets = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= k]
    out = {"prompts": len(asked), "k": k, "seed": seed,
           "oracle": {n: best_of(exact, exact - 0.5 * invalid, n) for n in budgets}}
    for name, clip in {"bundle": gen.clip, **(clips or {})}.items():
        gen.clip = clip.eval()
        sc = gen.clip_scores(images, [t for t in texts for _ in range(k)]).view(len(asked), k).cpu().numpy()
        out[name] = {n: {"exact": best_of(exact, sc, n), "invalid": best_of(invalid, sc, n)} for n in budgets}
    if gen.captioner is not None:
        sc = gen.caption_logprobs(images, [t for t in texts for _ in range(k)]).view(len(asked), k).cpu().numpy()
        out["captioner"] = {n: {"exact": best_of(exact, sc, n), "invalid": best_of(invalid, sc, n)} for n in budgets}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--k", type=int, default=16, help="candidates sampled per prompt")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (the rewrites stay seeded by prompt index)")
    ap.add_argument("--clip", action="append", default=[], help="another trained CLIP to rerank with")
    ap.add_argument("--captioner", default=None, help="a trained captioner (the bundle's tokenizer) to rerank with")
    a = ap.parse_args()
    gen = Generator.load(a.bundle)
    if a.captioner:
        from model_code.models.coca import CoCa
        gen.captioner = CoCa.from_pretrained(a.captioner).to(gen.device).eval()
    print(json.dumps(measure(gen, a.k, a.seed, {c: CLIP.from_pretrained(c) for c in a.clip})))


if __name__ == "__main__":
    main()
