"""What reading longer captions costs a training step: `tokenizer.max_text_tokens` A against B.

    python tests/benchmarks/bench_text_len.py [--preset tiny] [--lengths 64 96] [--parts transformer clip]

For each part, the preset's model is built twice, once per text length (the transformer's
`text_len` and CLIP's `max_text_tokens` follow the tokenizer's), with the same seed, a batch of
`--batch-size` random captions (30 real tokens, the rest padding, as fixed-length tokenization
gives) and, for the transformer, random image codes. The two models' training steps (forward_loss,
backward, AdamW) alternate `--repeats` times, `--steps` steps each, so background load hits both
alike; the ratio of median times B/A is printed per part. Not collected by pytest (bench_*.py);
results go to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.config import load_preset  # noqa: E402
from model_code.data import shapes  # noqa: E402
from model_code.text.tokenizer import TextTokenizer  # noqa: E402
from model_code.train.parts import get_part  # noqa: E402


def step_inputs(part: str, model, length: int, batch: int, size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (batch, length), generator=g)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, :30] = True
    if part == "transformer":
        grid = model.config["image_grid"]
        codes = torch.randint(0, model.config["codebook_size"], (batch, grid, grid), generator=g)
        return {"text_ids": ids, "text_mask": mask, "image_codes": codes}
    return {"images": torch.rand(batch, 3, size, size, generator=g) * 2 - 1, "ids": ids, "mask": mask}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--lengths", type=int, nargs=2, default=[64, 96])
    ap.add_argument("--parts", nargs="+", default=["transformer", "clip"], choices=["transformer", "clip"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    captions = [shapes.long_caption(shapes.sample_scene(random.Random(i), 32)) for i in range(200)]
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads} thread(s)",
           "preset": a.preset, "lengths": a.lengths, "ratio_b_over_a": {}}
    for part in a.parts:
        runs = {}
        for L in a.lengths:
            cfg = load_preset(a.preset, {"tokenizer": {"max_text_tokens": L}})
            tok = TextTokenizer.train(captions, cfg["tokenizer"]["vocab_size"], L)
            deps = {"tokenizer": tok}
            if part == "transformer":
                deps["dvae"] = get_part("dvae").build(cfg, deps).eval()
            torch.manual_seed(0)
            model = get_part(part).build(cfg, deps)
            kw = step_inputs(part, model, L, a.batch_size, int(cfg["data"]["size"]))
            runs[L] = (model, kw, torch.optim.AdamW(model.parameters(), 1e-4), [])
        for _ in range(a.repeats):
            for L in a.lengths:
                model, kw, opt, times = runs[L]
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    loss = model.forward_loss(**kw)["loss"]
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                times.append(time.perf_counter() - t0)
        A, B = (statistics.median(runs[L][3]) for L in a.lengths)
        out["ratio_b_over_a"][part] = round(B / A, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
