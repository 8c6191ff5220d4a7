"""KV-cache against full recomputation for DALL-E transformer sampling.

    python tests/benchmarks/bench_kv_cache.py [--image-grids 16 32] [--layers 4] [--d-model 128]

The same randomly initialised model and the same mixed-length prompts are sampled greedily with
`use_cache=True` and `use_cache=False`; both must give identical codes (checked), and the ratio of
times is printed. Times are the process's CPU seconds with one torch thread (robust on a shared
machine) and wall seconds beside them. Not collected by pytest (bench_*.py); results go to
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from model_code.models.transformer import DalleTransformer  # noqa: E402


def prompts(batch: int, text_len: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` prompts of mixed lengths (a quarter to all of text_len)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, text_len), generator=g)
    lengths = torch.linspace(text_len // 4, text_len, batch).long()
    mask = torch.arange(text_len)[None] < lengths[:, None]
    return ids * mask, mask


def time_generate(model: DalleTransformer, ids, mask, use_cache: bool) -> tuple[float, float, torch.Tensor]:
    """(CPU seconds, wall seconds, codes) of one greedy sampling run."""
    c0, w0 = time.process_time(), time.perf_counter()
    codes = model.generate(ids, mask, temperature=0, use_cache=use_cache)
    if codes.is_cuda:
        torch.cuda.synchronize()
    return time.process_time() - c0, time.perf_counter() - w0, codes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-grids", type=int, nargs="+", default=[16, 32],
                    help="image grid sides (16 -> 256 image tokens, 32 -> 1024)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}")
    print(f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, "
          f"text_len {args.text_len}, codebook 1024, batch {args.batch} mixed-length prompts, greedy")
    print("| image tokens | KV cache: CPU s (wall s) | recompute: CPU s (wall s) | speed-up (CPU) | "
          "cached tokens/CPU s |")
    print("|---|---|---|---|---|")
    for grid in args.image_grids:
        torch.manual_seed(0)
        model = DalleTransformer.from_config(dict(
            text_vocab_size=1024, text_len=args.text_len, image_grid=grid, codebook_size=1024,
            n_layer=args.layers, n_head=args.heads, d_model=args.d_model)).to(args.device).eval()
        ids, mask = prompts(args.batch, args.text_len, 1024)
        model.generate(ids[:, :4], mask[:, :4], temperature=0)          # warm-up (allocations)
        t_cache, w_cache, a = time_generate(model, ids, mask, use_cache=True)
        t_full, w_full, b = time_generate(model, ids, mask, use_cache=False)
        if not torch.equal(a, b):
            print(f"ERROR: cached and recomputed codes differ at {grid * grid} tokens", file=sys.stderr)
            return 1
        n = grid * grid
        print(f"| {n} | {t_cache:.1f} ({w_cache:.1f}) | {t_full:.1f} ({w_full:.1f}) | "
              f"{t_full / t_cache:.1f}x | {args.batch * n / t_cache:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
