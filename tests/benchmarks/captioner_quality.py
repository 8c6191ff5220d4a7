"""What a trained captioner reads from an image, attribute by attribute: the measurement behind
docs/results.md ("Session 12").

The main job's evaluation scores whole captions (fact precision and recall). This asks which facts
the captions get right: for 100 new single-object Shapes images, the caption (sampled with the
recaption job's settings, DALL-E 3's top-p 0.9 and temperature 0.7, as the training data sees it)
is parsed and its first object compared with the drawn one: shape, colour, size, cell, and the
background (long captions). For two-object scenes: both shapes (both colours) named. Chance for a
shape is 0.2, for a colour 0.125. With --train-images RAW (the synthesized source directory
the captioner's dataset was ingested from, as `easel data synth` writes it), the same on its first
100 single-object images that carry a curated caption: what the captioner learned from its own
training set (all but the few the ingest held out).

    python tests/benchmarks/captioner_quality.py --captioner CAP --tokenizer TOK [--train-images RAW]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.data import shapes  # noqa: E402
from model_code.recaption.captioner import CoCaCaptioner  # noqa: E402
from model_code.recaption.job import DEFAULTS as RECAPTION  # noqa: E402
from model_code.text.caption_parser import parse_caption  # noqa: E402

ATTRS = ("shape", "color", "size", "cell")


def read_single(captions: list[str], scenes: list[dict]) -> dict:
    """Share of captions whose first parsed object has the drawn object's attribute (a caption
    that states no object gets none right); background where the caption names one."""
    out = {a: [] for a in ATTRS}
    bg = []
    for text, scene in zip(captions, scenes):
        parsed = parse_caption(text)
        first = parsed.objects[0] if parsed.objects else None
        for a in ATTRS:
            out[a].append(first is not None and getattr(first, a) == scene["objects"][0][a])
        bg.append(scene["background"] in parsed.backgrounds)
    return {**{a: round(float(np.mean(v)), 3) for a, v in out.items()}, "background": round(float(np.mean(bg)), 3)}


def read_pair(captions: list[str], scenes: list[dict]) -> dict:
    """Share of two-object captions that name both drawn shapes (both colours), in any order."""
    res = {}
    for a in ("shape", "color"):
        ok = []
        for text, scene in zip(captions, scenes):
            named = [getattr(o, a) for o in parse_caption(text).objects]
            ok.append(all(named.count(v) >= [o[a] for o in scene["objects"]].count(v)
                          for v in {o[a] for o in scene["objects"]}))
        res[f"both_{a}s"] = round(float(np.mean(ok)), 3)
    return res


def measure(cap: CoCaCaptioner, size: int, n: int = 100, train_raw: str | None = None) -> dict:
    kw = {"top_p": RECAPTION["top_p"], "temperature": RECAPTION["temperature"]}
    rng = random.Random(31)   # scenes no training run draws with its own seed
    single = [shapes.sample_scene(rng, size, n_objects=1) for _ in range(n)]
    pair = [shapes.sample_scene(rng, size, n_objects=2) for _ in range(n)]
    single_ims, pair_ims = [shapes.render(s) for s in single], [shapes.render(s) for s in pair]
    out = {}
    for kind in ("short", "long"):
        out[f"single_{kind}"] = read_single(cap.caption(single_ims, kind=kind, **kw), single)
        out[f"pair_{kind}"] = read_pair(cap.caption(pair_ims, kind=kind, **kw), pair)
    if train_raw:
        from PIL import Image
        with open(os.path.join(train_raw, "captions.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        rows = [r for r in rows if r.get("curated_caption") and len(r["scene"]["objects"]) == 1][:n]
        ims = [Image.open(os.path.join(train_raw, r["file"])).convert("RGB") for r in rows]
        out["train_single_short"] = {"n": len(rows), **read_single(cap.caption(ims, kind="short", **kw),
                                                                   [r["scene"] for r in rows])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captioner", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--train-images", default=None, help="the synthesized source the captioner trained on")
    a = ap.parse_args()
    cap = CoCaCaptioner(a.captioner, a.tokenizer)
    print(json.dumps(measure(cap, cap.image_size, train_raw=a.train_images)))


if __name__ == "__main__":
    main()
