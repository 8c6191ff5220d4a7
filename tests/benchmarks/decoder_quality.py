"""A trained unCLIP decoder on its own: the measurement behind docs/results.md ("Session 10").

The decoder is given the true CLIP image embeddings of 32 new single-object Shapes images (the
prior bypassed, so only the decoder is judged; a text-conditioned decoder gets their captions' z_t) and samples each once per sampling setting; the
oracle reports the share of images in which the asked shape is drawn (chance about 0.2), the shares
with an object in the asked colour, cell and size (any object: more objects hit more), the share
whose whole scene meets its caption exactly (that one object, nothing else), the shares with exactly
one object and with exactly one object of the asked shape, the share that is no Shapes scene, the
mean number of objects, and the mean absolute pixel error against the real image. With
--prior, one more row: the bundle's prior samples the embedding from each image's long caption and
the decoder (guidance 1) draws it, the whole unCLIP chain. With --png, a grid: real images, then
one row per setting.

    python tests/benchmarks/decoder_quality.py --bundle UNCLIP_BUNDLE [--decoder DECODER] [--prior] [--n 32] [--png probe.png]
    python tests/benchmarks/decoder_quality.py --clip CLIP --tokenizer TOKENIZER --decoder DECODER   (no bundle yet)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.data import shapes  # noqa: E402
from model_code.data.oracle import parse_image  # noqa: E402
from model_code.generate import Generator, to_pil, to_tensor  # noqa: E402
from model_code.models.decoder import UnCLIPDecoder  # noqa: E402
from model_code.text.caption_parser import parse_caption, score_image  # noqa: E402

SETTINGS = ({"guidance_scale": 1.0}, {"guidance_scale": 3.0},
            {"guidance_scale": 3.0, "sampler": "ddpm", "steps": 100}, {"guidance_scale": 1.0, "steps": 100})
QUICK = SETTINGS[:1]   # --quick: the served setting only


@torch.no_grad()
def measure(gen: Generator, decoder: UnCLIPDecoder, png: str | None = None, n: int = 32,
            prior: bool = False, settings=SETTINGS) -> list[dict]:
    rng = random.Random(11)   # scenes no training run draws with its own seed
    scenes = [shapes.sample_scene(rng, int(decoder.config["image_size"]), n_objects=1) for _ in range(n)]
    real = to_tensor([shapes.render(s) for s in scenes])
    z = gen.clip.encode_image(real)                                  # (n, D) true image embeddings
    captions = [shapes.long_caption(s) for s in scenes]
    emb, tokens, mask = gen.text_condition(captions)
    if decoder.conditioning == "text":   # the paper's text-conditioned baseline decodes z_t
        z = emb
    runs = [({}, kw, z) for kw in settings]   # (row label, sampling settings, embeddings)
    if prior:
        zp = gen.prior.sample(emb, tokens, mask, generator=torch.Generator().manual_seed(1))
        runs.append(({"from": "prior"}, {"guidance_scale": 1.0}, zp))
    rows, out = [to_pil(real)[:12]], []
    for label, kw, emb_in in runs:
        x = decoder.sample(emb_in, tokens, mask, generator=torch.Generator().manual_seed(1), **kw)
        ims = to_pil(x)
        parsed = [parse_image(np.asarray(im)) for im in ims]
        found = [p.get("objects", []) for p in parsed]
        drawn = {a: float(np.mean([any(o[a] == s["objects"][0][a] for o in objs) for objs, s in zip(found, scenes)]))
                 for a in ("shape", "color", "cell", "size")}
        # "drawn" counts any object, so a decoder that draws more objects hits more; the whole
        # scene against its caption (exact: that one object and nothing else) does not
        judged = [score_image(p, parse_caption(c)) for p, c in zip(parsed, captions)]
        alone = [objs[0] if len(objs) == 1 else None for objs in found]   # the one object drawn, if just one
        out.append({**kw, **label, **{f"{a}_drawn": v for a, v in drawn.items()},
                    "exact": float(np.mean([j["exact"] for j in judged])),
                    "one_object": float(np.mean([o is not None for o in alone])),
                    "one_object_asked_shape": float(np.mean([o is not None and o["shape"] == s["objects"][0]["shape"]
                                                             for o, s in zip(alone, scenes)])),
                    "not_a_scene": float(np.mean([j["invalid"] is not None for j in judged])),
                    "objects": float(np.mean([len(objs) for objs in found])),
                    "abs_error": float((x - real).abs().mean())})
        rows.append(ims[:12])
    if png:
        from model_code.viz import image_grid
        image_grid([im for r in rows for im in r], cols=12).save(png)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None, help="an unCLIP bundle (its CLIP and tokenizer are used)")
    ap.add_argument("--clip", default=None, help="without a bundle: a trained CLIP (with --tokenizer and --decoder)")
    ap.add_argument("--tokenizer", default=None, help="without a bundle: the trained tokenizer")
    ap.add_argument("--decoder", default=None, help="another trained decoder to judge (default: the bundle's)")
    ap.add_argument("--prior", action="store_true", help="also judge the whole chain: prior from the caption, then decoder")
    ap.add_argument("--png", default=None)
    ap.add_argument("--quick", action="store_true", help="only the served sampling setting (guidance 1)")
    ap.add_argument("--n", type=int, default=32, help="single-object images (SE of a rate ~0.5/sqrt(n))")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.bundle:
        gen = Generator.load(a.bundle)
    elif a.clip and a.tokenizer and a.decoder and not a.prior:
        from model_code.generate import UnclipGenerator
        from model_code.models.clip import CLIP
        from model_code.text.tokenizer import TextTokenizer
        gen = UnclipGenerator(TextTokenizer.load(a.tokenizer), CLIP.from_pretrained(a.clip), None,
                              UnCLIPDecoder.from_pretrained(a.decoder))
    else:
        ap.error("give --bundle, or --clip, --tokenizer and --decoder (and no --prior)")
    # the bundle-less generator already holds --decoder: load it once
    decoder = UnCLIPDecoder.from_pretrained(a.decoder).eval() if a.decoder and a.bundle else gen.decoder
    for row in measure(gen, decoder, a.png, n=a.n, prior=a.prior, settings=QUICK if a.quick else SETTINGS):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
