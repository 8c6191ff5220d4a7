"""dVAE reconstruction quality against training steps: the measurement behind docs/results.md,
"The dVAE". Trains the library's DVAE (models/dvae.py, its own forward_loss and schedules, AdamW)
on in-memory Shapes images and reports, every --every steps, the hard-code PSNR on held-out
images (encode -> argmax -> decode: what the transformer's tokens can show), the relaxed PSNR of
the training batches and the codebook perplexity / dead codes; optionally a PNG grid (originals on
top, hard reconstructions below).

    python tests/benchmarks/dvae_quality.py --preset tiny                     # the tiny preset's dVAE
    python tests/benchmarks/dvae_quality.py --preset tiny --steps 3000 \\
        --set n_hid=32 n_init=64 tau_anneal_steps=2000 lr_anneal_steps=3000 lr_warmup_steps=100 \\
        --png dvae.png                                                          # the 25.8 dB run
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.config import load_preset, load_yaml  # noqa: E402
from model_code.data.shapes import render, sample_scene  # noqa: E402
from model_code.models.dvae import DVAE, codebook_usage, psnr  # noqa: E402
from model_code.train.module import lr_lambda, resolve_train_config  # noqa: E402
from model_code.train.parts import section, training_keys  # noqa: E402


def images(n: int, size: int, seed: int) -> torch.Tensor:
    rng = random.Random(seed)
    arr = np.stack([np.asarray(render(sample_scene(rng, size))) for _ in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1          # (N,3,S,S) in [-1,1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dvae config overrides")
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's train.steps.dvae")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n", type=int, default=2000, help="training images")
    ap.add_argument("--heldout", type=int, default=256)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--png", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    preset = load_preset(a.preset)
    cfg, train_over = section(preset, "dvae"), {}
    for item in a.set:   # a model key goes to the model, a training key (lr_anneal_steps...) to training
        k, v = item.split("=", 1)
        (train_over if k in training_keys() else cfg)[k] = load_yaml(v)
    steps = a.steps or int(preset["train"]["steps"]["dvae"])
    train_sec = {**preset["train"], "dvae": {**preset["train"].get("dvae", {}), **train_over}}
    tcfg = {**resolve_train_config({**preset, "train": train_sec}, "dvae"), "max_steps": steps}
    size = int(cfg.get("image_size", preset["data"]["size"]))
    train, held = images(a.n, size, 0), images(a.heldout, size, 99)
    model = DVAE(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], betas=tcfg["adam_betas"],
                            weight_decay=tcfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg, model))
    g = torch.Generator().manual_seed(0)
    t0, relaxed = time.time(), []
    for step in range(steps):
        x = train[torch.randint(0, len(train), (a.batch_size,), generator=g)]
        out = model.forward_loss(x, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
        relaxed.append(float(out["psnr"]))
        if (step + 1) % a.every == 0 or step + 1 == steps:
            model.eval()
            codes = model.encode(held)
            rec = model.decode(codes)
            model.train()
            u = codebook_usage(codes, model.codebook_size)
            print(json.dumps({"step": step + 1, "seconds": round(time.time() - t0, 1),
                              "hard_psnr": round(float(psnr(rec, held)), 2),
                              "relaxed_psnr": round(float(np.mean(relaxed[-50:])), 2),
                              "perplexity": round(u["perplexity"], 1), "dead_codes": u["dead_codes"]}), flush=True)
    if a.png:
        from PIL import Image
        n = 16
        to = lambda t: ((t[:n] + 1) * 127.5).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
        grid = np.concatenate([np.concatenate(list(to(held)), 1), np.concatenate(list(to(rec)), 1)], 0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(a.png)


if __name__ == "__main__":
    main()
