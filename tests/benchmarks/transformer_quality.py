"""A trained DALL-E transformer on new Shapes scenes: the measurement behind docs/results.md
("row and column embeddings"). Given the transformer and the tokenizer and dVAE it was trained
with, it reports
  * the image-token loss on 256 new scenes with each scene's own long caption and with another
    scene's (the gap is how much the model uses its caption: 0 for a model that ignores it);
  * 48 single-object (--singles) and 48 multi-object scenes drawn from their long captions
    (temperature 1, --seed, --guidance: classifier-free guidance) and judged by the oracle: constraints met,
    background right, and for single objects whether the asked shape is drawn at all (chance 0.2: five shapes);
and, with --png, a grid of the first 16 single-object samples; and with --caption-use, how much
the model uses each fact of its caption: for 200 new single-object scenes, the extra image-token
nats per image when exactly one fact of the true long caption is changed (shape, colour, size, cell
or background). A fact the model ignores costs 0; this reads learning long before samples show it.

    python tests/benchmarks/transformer_quality.py --transformer T --tokenizer TOK --dvae DVAE [--png singles.png]
    python tests/benchmarks/transformer_quality.py --transformer T --tokenizer TOK --dvae DVAE --caption-use
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.data import shapes  # noqa: E402
from model_code.data.oracle import parse_image  # noqa: E402
from model_code.generate import to_pil, to_tensor  # noqa: E402
from model_code.models.dvae import DVAE  # noqa: E402
from model_code.models.transformer import DalleTransformer  # noqa: E402
from model_code.text.caption_parser import parse_caption, score_image  # noqa: E402
from model_code.text.tokenizer import TextTokenizer  # noqa: E402


@torch.no_grad()
def measure(model: DalleTransformer, tok: TextTokenizer, dvae: DVAE, size: int, png: str | None = None,
            guidance_scale: float = 1.0, n_singles: int = 48, seed: int = 0) -> dict:
    text_len = model.config["text_len"]
    rng = random.Random(123)   # scenes no training run draws with its own seed
    scenes = [shapes.sample_scene(rng, size) for _ in range(256)]
    ids, mask = tok.encode_batch([shapes.long_caption(s) for s in scenes], max_len=text_len)
    codes = dvae.encode(to_tensor([shapes.render(s) for s in scenes]))
    out = {"image_loss_own": float(model.forward_loss(ids, mask, codes)["image_loss"]),
           "image_loss_other": float(model.forward_loss(ids.roll(1, 0), mask.roll(1, 0), codes)["image_loss"])}
    srng = random.Random(7)
    singles = [shapes.sample_scene(srng, size, n_objects=1) for _ in range(n_singles)]
    for name, group in (("single", singles), ("multi", scenes[:48])):
        caps = [shapes.long_caption(s) for s in group]
        i2, m2 = tok.encode_batch(caps, max_len=text_len)
        drawn = to_pil(dvae.decode(model.generate(i2, m2, temperature=1.0, seed=seed, guidance_scale=guidance_scale)))
        met, bg, shape_drawn = [], [], []
        for im, s, cap in zip(drawn, group, caps):
            pred = parse_image(np.asarray(im))
            met.append(score_image(pred, parse_caption(cap))["fraction"])
            bg.append(pred.get("background") == s["background"])
            shape_drawn.append(any(o["shape"] == s["objects"][0]["shape"] for o in pred.get("objects", [])))
        out[f"{name}_constraints_met"] = float(np.mean(met))
        out[f"{name}_background"] = float(np.mean(bg))
        if name == "single":
            out["single_shape_drawn"] = float(np.mean(shape_drawn))
            if png:
                from model_code.viz import image_grid
                image_grid(drawn[:16], cols=8).save(png)
    return out


# the facts --caption-use changes, one at a time, and the values each may take
FACTS = {"shape": list(shapes.SHAPES), "color": list(shapes.COLORS), "size": list(shapes.SIZES),
         "cell": list(shapes.CELLS), "background": list(shapes.BACKGROUNDS)}


@torch.no_grad()
def caption_use(model: DalleTransformer, tok: TextTokenizer, dvae: DVAE, size: int, n: int = 200) -> dict:
    """Extra image-token nats per image when one fact of a lone object's caption is wrong."""
    text_len = model.config["text_len"]
    rng = random.Random(11)
    scenes = [shapes.sample_scene(rng, size, n_objects=1) for _ in range(n)]
    codes = dvae.encode(to_tensor([shapes.render(s) for s in scenes]))
    n_tokens = codes[0].numel()

    def nats(captions: list[str]) -> float:   # mean image-token loss per image, in chunks
        total = 0.0
        for i in range(0, n, 50):
            ids, mask = tok.encode_batch(captions[i:i + 50], max_len=text_len)
            total += float(model.forward_loss(ids, mask, codes[i:i + 50])["image_loss"]) * len(ids)
        return total / n * n_tokens

    true = nats([shapes.long_caption(s) for s in scenes])
    out = {"caption_nats_per_image": round(true, 2)}
    for fact, values in FACTS.items():
        wrong = []
        for s in scenes:
            s2 = copy.deepcopy(s)
            where = s2 if fact == "background" else s2["objects"][0]
            where[fact] = rng.choice([v for v in values if v != where[fact]])
            wrong.append(shapes.long_caption(s2))
        out[f"wrong_{fact}_extra_nats"] = round(nats(wrong) - true, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transformer", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--dvae", required=True)
    ap.add_argument("--png", default=None)
    ap.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    ap.add_argument("--singles", type=int, default=48, help="single-object scenes to draw (SE ~ 0.5/sqrt(n))")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--caption-use", action="store_true", help="only the caption-use measurement (no sampling)")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = DalleTransformer.from_pretrained(a.transformer).eval()
    dvae = DVAE.from_pretrained(a.dvae).eval()
    size = dvae.config["image_size"]
    if a.caption_use:
        print(json.dumps(caption_use(model, TextTokenizer.load(a.tokenizer), dvae, size)))
        return
    print(json.dumps(measure(model, TextTokenizer.load(a.tokenizer), dvae, size, a.png, a.guidance, a.singles, a.seed)))


if __name__ == "__main__":
    main()
