"""Single-object prompts through a bundle as served: the measurement behind docs/results.md
("Session 11"). The main job's evaluation judges its single-object category on 5 prompts x 4
images; this asks 80 (the five shapes, each in four wordings: "a cross", "a red cross", "one cross",
"a cross shape", 4 of each), rewrites each with the serving rewriter (seeded by the prompt's index, so the repeats of a
wording get different fills), samples one image per prompt and has the oracle judge it against the prompt as
written. Reports the exact rate (GenEval's single-object rule: the asked shape is in a valid
Shapes scene) and the share of images that are no Shapes scene; with --png, a grid of 40.

    python tests/benchmarks/single_object.py BUNDLE [--candidates N] [--seed S] [--set temperature=0.7 ...] [--png grid.png]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.config import parse_overrides  # noqa: E402
from model_code.data import shapes  # noqa: E402
from model_code.data.oracle import parse_image  # noqa: E402
from model_code.generate import Generator  # noqa: E402
from model_code.serve.rewrite import BuiltinRewriter  # noqa: E402
from model_code.text.caption_parser import parse_caption, score_image  # noqa: E402

WORDINGS = ("a {s}", "a {c} {s}", "one {s}", "a {s} shape")


def prompts(per_shape: int = 16) -> list[str]:
    colours = list(shapes.COLORS)
    return [WORDINGS[j % len(WORDINGS)].format(s=s, c=colours[(i + j) % len(colours)])
            for i, s in enumerate(shapes.SHAPES) for j in range(per_shape)]


def measure(gen: Generator, candidates: int | None = 1, png: str | None = None, seed: int = 0, **sampling) -> dict:
    asked = prompts()
    rw = BuiltinRewriter()
    texts = [rw.rewrite(p, seed=k).text for k, p in enumerate(asked)]
    out = gen.generate(texts, n=1, candidates=candidates, seed=seed, **sampling)
    scores = [score_image(parse_image(np.asarray(g.images[0])), parse_caption(p)) for p, g in zip(asked, out)]
    if png:
        from model_code.viz import image_grid
        image_grid([g.images[0] for g in out[::2]][:40], cols=10).save(png)
    return {"n": len(scores), "candidates": candidates, "seed": seed, "sampling": sampling,
            "exact": float(np.mean([s["exact"] for s in scores])),
            "invalid": float(np.mean([s["invalid"] is not None for s in scores]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--candidates", type=int, default=1, help="CLIP rerank budget per image (1 = none)")
    ap.add_argument("--set", action="append", default=[], help="a sampling setting of the recipe, key=value")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (the rewrites stay seeded by prompt index)")
    ap.add_argument("--png", default=None)
    a = ap.parse_args()
    print(json.dumps(measure(Generator.load(a.bundle), a.candidates, a.png, a.seed, **parse_overrides(a.set))))


if __name__ == "__main__":
    main()
