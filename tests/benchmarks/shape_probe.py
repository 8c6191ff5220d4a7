"""How fast an image tower learns the shape of a lone object at 32 px from clean labels: the
measurement behind docs/results.md ("Session 12").

Easel's captioner and CLIP learn shapes only through captions; this asks the easier question of
whether their image tower can learn shapes at all from as many examples as the tiny preset's
captioner sees (270 single-object images, labelled with their shape), against a small CNN with
global max pooling. Each tower gets a linear head and trains 400 AdamW steps (lr 1e-3, batch 32, one
thread); accuracy on 500 new images (chance 0.2). `--shift N`: each training image moved by up to
N pixels (random crop of the edge-padded image, CLIP's random-crop augmentation at this size).

    python tests/benchmarks/shape_probe.py [--n-train 270] [--steps 400] [--shift 0]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.data import shapes  # noqa: E402
from model_code.generate import to_tensor  # noqa: E402
from model_code.models.clip import CLIP  # noqa: E402

# the tiny preset's CLIP towers (model_code/presets/tiny.yaml, clip:)
TINY_CLIP = dict(vocab_size=512, image_size=32, patch_size=4, width=64, layers=2, heads=4,
                 text_width=64, text_layers=2, text_heads=4, embed_dim=64, conv_stem=True)


def scenes_with_labels(rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    sc = [shapes.sample_scene(rng, 32, n_objects=1) for _ in range(n)]
    return (to_tensor([shapes.render(s) for s in sc]),
            torch.tensor([shapes.SHAPES.index(s["objects"][0]["shape"]) for s in sc]))


def shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    if pad <= 0:
        return x
    p = F.pad(x, (pad,) * 4, mode="replicate")
    offs = torch.randint(0, 2 * pad + 1, (x.shape[0], 2))
    return torch.stack([p[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]] for i, (dy, dx) in enumerate(offs.tolist())])


class ViTTower(nn.Module):
    """The tiny CLIP's image tower (conv stem + 2 ViT layers), pooled as CLIP pools (CLS)."""

    def __init__(self):
        super().__init__()
        self.vision = CLIP(TINY_CLIP).model.vision_model
        self.head = nn.Linear(TINY_CLIP["width"], len(shapes.SHAPES))

    def forward(self, x):
        return self.head(self.vision(pixel_values=x).pooler_output)


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, len(shapes.SHAPES)))


def train_and_test(net: nn.Module, train, test, steps: int, pad: int) -> float:
    (x, y), (xt, yt) = train, test
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(steps):
        i = torch.randint(0, len(y), (32,))
        loss = F.cross_entropy(net(shift(x[i], pad)), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((net(xt).argmax(1) == yt).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=270)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--shift", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    train, test = scenes_with_labels(rng, a.n_train), scenes_with_labels(rng, 500)
    out = {"n_train": a.n_train, "steps": a.steps, "shift": a.shift}
    for name, build in (("cnn_maxpool", cnn), ("tiny_clip_tower", ViTTower)):
        torch.manual_seed(0)
        out[name] = round(train_and_test(build(), train, test, a.steps, a.shift), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
