"""CPU training efficiency: each part's training step as achieved FLOP/s over this machine's fp32
matmul peak, both measured in the same process and the same run (these boxes are noisy; only the
ratio is comparable across runs).

    python tests/benchmarks/bench_cpu_mfu.py                          # every part, tiny preset
    python tests/benchmarks/bench_cpu_mfu.py --parts transformer --threads 2 --preset tiny

Peak: the best of several 1024x1024x1024 fp32 matmuls (2 n^3 FLOP each) with the same thread
count as the training steps. Achieved: FLOPs of one training step, counted by torch's
FlopCounterMode on one forward pass (x3 for forward + backward: the convention MFU uses;
elementwise ops are not counted, so a step that spends its time outside matmuls and convolutions
scores low however busy the cores are) x steps/s of a plain PyTorch loop (bench_train.run_plain:
prepare, forward_loss, backward, AdamW, schedule, EMA) after warm-up. Records go to
docs/benchmarks.md with the machine they ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train import NETWORK_PARTS, build_deps, dataset_for, run_plain  # noqa: E402

from model_code.config import load_preset  # noqa: E402
from model_code.data.loader import make_dataset, make_loader  # noqa: E402
from model_code.train.module import resolve_train_config  # noqa: E402
from model_code.train.parts import Context, get_part  # noqa: E402


def matmul_peak(n: int = 1024, repeats: int = 7) -> float:
    """Best fp32 FLOP/s of an n x n x n matmul on the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_flops(spec, cfg: dict, tcfg: dict, deps: dict, dataset) -> float:
    """FLOPs of one training step (3 x one counted forward pass) on one batch."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    model = spec.build(cfg, {d: deps[d] for d in spec.deps}).train()
    ctx = Context(deps=deps, model_config=model.config, train=tcfg)
    ctx.step = 0
    batch = next(iter(make_loader(dataset, tcfg["batch_size"], 1, num_workers=0)))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.forward_loss(**spec.prepare(batch, ctx))
    return 3.0 * counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(NETWORK_PARTS))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_preset(a.preset)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        data = dataset_for(cfg, None, work)
        deps = build_deps(cfg, data, work)
        for name in a.parts.split(","):
            spec = get_part(name)
            tcfg = resolve_train_config(cfg, name, spec)
            dataset = make_dataset(data, caption_policy=spec.caption_policy and tcfg["caption_policy"],
                                   seed=0, with_scene=spec.with_scene)
            flops = step_flops(spec, cfg, tcfg, deps, dataset)
            peak_before = matmul_peak()
            wall, _ = run_plain(spec, cfg, tcfg, deps, dataset, a.warmup, a.steps)
            peak = max(peak_before, matmul_peak())   # the peak on both sides of the timed window
            achieved = flops * a.steps / wall
            row = {"part": name, "batch_size": tcfg["batch_size"], "gflop_per_step": flops / 1e9,
                   "steps_per_s": a.steps / wall, "achieved_gflops": achieved / 1e9,
                   "peak_gflops": peak / 1e9, "efficiency": achieved / peak}
            rows.append(row)
            print(f"{name:12s} {row['gflop_per_step']:7.3f} GFLOP/step  {row['steps_per_s']:6.2f} steps/s  "
                  f"{row['achieved_gflops']:7.1f} / {row['peak_gflops']:6.1f} GFLOP/s = {row['efficiency']:.1%}",
                  flush=True)
    print(f"\n(CPU, {torch.get_num_threads()} threads, preset {a.preset}, {a.steps} timed steps)")
    print("| part | batch | GFLOP/step | steps/s | achieved GFLOP/s | fp32 matmul peak GFLOP/s | efficiency |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['batch_size']} | {r['gflop_per_step']:.3f} | {r['steps_per_s']:.2f} | "
              f"{r['achieved_gflops']:.1f} | {r['peak_gflops']:.1f} | {r['efficiency']:.1%} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "preset": a.preset, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
