"""What a trained CLIP tells apart: the measurement behind docs/results.md ("Session 11").

For 100 new single-object Shapes images, the image's own long caption is set against the same
caption with the shape word swapped for each of the five shapes (and, separately, the colour word
for each of the eight colours, the cell for each of the nine); the CLIP is right when it scores the
true caption highest (chance 0.2 for shapes, 0.125 for colours, 0.11 for cells). Binding: for 100
two-object scenes, the true caption against the same caption with the two objects' colours
exchanged (chance 0.5). This is what the DALL-E reranker, the unCLIP prior's target
embeddings and the recaption alignment filter can rely on.

    python tests/benchmarks/clip_quality.py --clip CLIP --tokenizer TOK
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.data import shapes  # noqa: E402
from model_code.generate import to_tensor  # noqa: E402
from model_code.models.clip import CLIP  # noqa: E402
from model_code.text.tokenizer import TextTokenizer  # noqa: E402


@torch.no_grad()
def measure(clip: CLIP, tok: TextTokenizer, n: int = 100) -> dict:
    size = int(clip.config["image_size"])
    rng = random.Random(11)   # scenes no training run draws with its own seed
    scenes = [shapes.sample_scene(rng, size, n_objects=1) for _ in range(n)]
    img = clip.encode_image(to_tensor([shapes.render(s) for s in scenes]))
    img = img / img.norm(dim=-1, keepdim=True)
    out = {}
    for attr, values in (("shape", list(shapes.SHAPES)), ("color", list(shapes.COLORS)), ("cell", list(shapes.CELLS))):
        right = 0
        for s, z in zip(scenes, img):
            true = s["objects"][0][attr]
            caps = [shapes.long_caption({**s, "objects": [{**s["objects"][0], attr: v}]}) for v in values]
            right += values[int((_text(clip, tok, caps) @ z).argmax())] == true
        out[f"{attr}_acc"] = right / n
    # attribute binding: two objects of different shapes and colours, the true caption against the
    # same caption with the two colours exchanged (chance 0.5)
    pairs = []
    while len(pairs) < n:
        s = shapes.sample_scene(rng, size, n_objects=2)
        a, b = s["objects"]
        if a["color"] != b["color"] and a["shape"] != b["shape"]:
            pairs.append(s)
    img2 = clip.encode_image(to_tensor([shapes.render(s) for s in pairs]))
    img2 = img2 / img2.norm(dim=-1, keepdim=True)
    right = 0
    for s, z in zip(pairs, img2):
        a, b = s["objects"]
        swapped = {**s, "objects": [{**a, "color": b["color"]}, {**b, "color": a["color"]}]}
        right += int((_text(clip, tok, [shapes.long_caption(s), shapes.long_caption(swapped)]) @ z).argmax()) == 0
    out["binding_acc"] = right / n
    return out


def _text(clip: CLIP, tok: TextTokenizer, caps: list[str]) -> torch.Tensor:
    ids, mask = tok.encode_batch(caps, max_len=clip.config["max_text_tokens"])
    t = clip.encode_text(ids, mask)
    return t / t.norm(dim=-1, keepdim=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", required=True)
    ap.add_argument("--tokenizer", required=True)
    a = ap.parse_args()
    print(json.dumps(measure(CLIP.from_pretrained(a.clip).eval(), TextTokenizer.load(a.tokenizer))))


if __name__ == "__main__":
    main()
