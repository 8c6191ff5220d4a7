"""What the paper's sparse attention masks (transformer.image_attention: sparse) cost: training
steps/s and KV-cache sampling of the DALL-E transformer at a preset's shapes, masked against dense
causal attention, in the same process. The masks change what each image token sees, not the
compute: every layer still runs SDPA over all earlier positions, with a boolean mask instead of
the causal kernel. The ratio masked/dense is what docs/benchmarks.md records (1.0 = free).

    python tests/benchmarks/bench_sparse_attention.py [--preset laptop] [--threads 2] [--bf16] [--steps 10]

Random text and codes (speed does not care); the two models alternate `--repeats` times and the
best time of each is kept, so background load hits both alike. One torch thread unless --threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.config import load_preset  # noqa: E402
from model_code.models.dvae import DVAE  # noqa: E402
from model_code.models.transformer import DalleTransformer  # noqa: E402
from model_code.train.parts import section  # noqa: E402


def model_config(preset: str) -> dict:
    """The preset's transformer config with the shapes the pipeline fills from its dependencies."""
    cfg = load_preset(preset)
    tcfg, dvae = section(cfg, "transformer"), DVAE.resolve_config(section(cfg, "dvae"))
    tcfg.setdefault("text_vocab_size", cfg["tokenizer"]["vocab_size"])
    tcfg.setdefault("text_len", cfg["tokenizer"]["max_text_tokens"])
    tcfg.setdefault("image_grid", cfg["data"]["size"] // dvae["downsample"])
    tcfg.setdefault("codebook_size", dvae["codebook_size"])
    return tcfg


def time_train(m: DalleTransformer, batch: tuple, steps: int, bf16: bool = False) -> float:
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = m.forward_loss(*batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def time_sample(m: DalleTransformer, ids: torch.Tensor, mask: torch.Tensor) -> float:
    t0 = time.perf_counter()
    m.generate(ids, mask, seed=0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=4, help="prompts sampled per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="train under CPU bf16 autocast (the laptop preset's precision)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = model_config(a.preset)
    torch.manual_seed(0)
    models = {kind: DalleTransformer.from_config({**cfg, "image_attention": kind}) for kind in ("dense", "sparse")}
    models["sparse"].load_state_dict(models["dense"].state_dict())   # the same weights
    T, G, K, V = cfg["text_len"], cfg["image_grid"], cfg["codebook_size"], cfg["text_vocab_size"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (a.batch_size, T), generator=g)
    mask = torch.ones(a.batch_size, T, dtype=torch.bool)
    codes = torch.randint(0, K, (a.batch_size, G, G), generator=g)
    train = {k: float("inf") for k in models}
    sample = {k: float("inf") for k in models}
    for name, m in models.items():   # warm-up
        time_train(m.train(), (ids, mask, codes), 2, a.bf16)
    for _ in range(a.repeats):
        for name, m in models.items():
            train[name] = min(train[name], time_train(m.train(), (ids, mask, codes), a.steps, a.bf16))
            sample[name] = min(sample[name], time_sample(m.eval(), ids[:a.samples], mask[:a.samples]))
    print(json.dumps({
        "preset": a.preset, "threads": a.threads, "bf16": a.bf16, "batch_size": a.batch_size, "seq_len": T + G * G,
        "layers": models["sparse"].config["image_attention"],
        "train_steps_per_s": {k: round(a.steps / v, 3) for k, v in train.items()},
        "train_ratio_sparse_over_dense": round(train["dense"] / train["sparse"], 3),
        "sample_s": {k: round(v, 3) for k, v in sample.items()},
        "sample_ratio_sparse_over_dense": round(sample["dense"] / sample["sparse"], 3),
    }))


if __name__ == "__main__":
    main()
