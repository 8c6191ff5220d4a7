"""Training efficiency (MFU): each part's training step as achieved FLOP/s over this machine's
matmul peak, both measured in the same process and the same run (these boxes are noisy; only the
ratio is comparable across runs). On the CPU the peak is fp32; on a GPU it is the precision the
step trains in (bf16 under bf16-mixed), so the ratio is the usual model-FLOPs utilisation.

    python tests/benchmarks/bench_mfu.py                          # every part, tiny preset
    python tests/benchmarks/bench_mfu.py --parts transformer --threads 2 --preset tiny
    python tests/benchmarks/bench_mfu.py --preset small --steps 30    # on a GPU: bf16
    python tests/benchmarks/bench_mfu.py --preset laptop --parts transformer --set train.transformer.compile=true

Peak: the best of several n x n x n matmuls (2 n^3 FLOP each; n = 1024 fp32 on the CPU with the
training steps' thread count, n = 8192 in the training precision on a GPU). Achieved: FLOPs of
one training step, counted by torch's FlopCounterMode on one forward pass (x3 for forward +
backward: the convention MFU uses; elementwise ops are not counted, so a step that spends its
time outside matmuls and convolutions scores low however busy the cores are) x steps/s of a
plain PyTorch loop (bench_train.run_plain: prepare, forward_loss, backward, AdamW, schedule, EMA)
after warm-up. Records go to docs/benchmarks.md with the machine they ran on.
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

from model_code.config import load_preset, parse_overrides  # noqa: E402
from model_code.data.loader import make_dataset, make_loader  # noqa: E402
from model_code.train.module import resolve_train_config  # noqa: E402
from model_code.train.parts import Context, get_part  # noqa: E402


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def matmul_peak(dtype: torch.dtype = torch.float32, repeats: int = 7) -> float:
    """Best FLOP/s of an n x n x n matmul on the current device (and CPU thread count)."""
    dev = device()
    n = 8192 if dev.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    a @ b  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_flops(spec, cfg: dict, tcfg: dict, deps: dict, dataset) -> tuple[float, int]:
    """(FLOPs of one training step (3 x one counted forward pass) on one batch, parameters)."""
    from torch.utils.flop_counter import FlopCounterMode
    from model_code.train.factory import resolve_precision
    dev = device()
    torch.manual_seed(0)
    model = spec.build(cfg, {d: deps[d] for d in spec.deps}).to(dev).train()
    for d in deps.values():
        if isinstance(d, torch.nn.Module):
            d.to(dev)
    ctx = Context(deps=deps, model_config=model.config, train=tcfg)
    ctx.step = 0
    batch = next(iter(make_loader(dataset, tcfg["batch_size"], 1, num_workers=0)))
    batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
    bf16 = resolve_precision(tcfg["precision"]) == "bf16-mixed"
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        model.forward_loss(**spec.prepare(batch, ctx))
    return 3.0 * counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def measure(parts, cfg: dict, warmup: int, steps: int, log=print) -> list[dict]:
    """One row per part: FLOPs per step, steps/s, achieved and peak FLOP/s, efficiency."""
    from model_code.train.factory import resolve_precision
    rows = []
    with tempfile.TemporaryDirectory() as work:
        data = dataset_for(cfg, None, work)
        deps = build_deps(cfg, data, work)
        for name in parts:
            spec = get_part(name)
            tcfg = resolve_train_config(cfg, name, spec)
            bf16 = device().type == "cuda" and resolve_precision(tcfg["precision"]) == "bf16-mixed"
            dtype = torch.bfloat16 if bf16 else torch.float32
            dataset = make_dataset(data, caption_policy=spec.caption_policy and tcfg["caption_policy"],
                                   seed=0, with_scene=spec.with_scene)
            flops, params = step_flops(spec, cfg, tcfg, deps, dataset)
            peak_before = matmul_peak(dtype)
            wall, _ = run_plain(spec, cfg, tcfg, deps, dataset, warmup, steps)
            peak = max(peak_before, matmul_peak(dtype))   # the peak on both sides of the timed window
            achieved = flops * steps / wall
            row = {"part": name, "batch_size": tcfg["batch_size"], "gflop_per_step": flops / 1e9,
                   "steps_per_s": steps / wall, "achieved_gflops": achieved / 1e9,
                   "peak_gflops": peak / 1e9, "efficiency": achieved / peak,
                   "peak_dtype": str(dtype).replace("torch.", ""),
                   "params_m": params / 1e6}
            rows.append(row)
            log(f"{name:12s} {row['gflop_per_step']:9.3f} GFLOP/step  {row['steps_per_s']:7.2f} steps/s  "
                f"{row['achieved_gflops']:9.1f} / {row['peak_gflops']:9.1f} GFLOP/s = {row['efficiency']:.1%}")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| part | params (M) | batch | GFLOP/step | steps/s | achieved GFLOP/s | matmul peak GFLOP/s | efficiency |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['part']} | {r['params_m']:.2f} | {r['batch_size']} | {r['gflop_per_step']:.3f} | "
                     f"{r['steps_per_s']:.2f} | {r['achieved_gflops']:.1f} | {r['peak_gflops']:.1f} "
                     f"({r['peak_dtype']}) | {r['efficiency']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(NETWORK_PARTS))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--json", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="preset override, as `easel train --set` (e.g. train.transformer.compile=true)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_preset(a.preset, parse_overrides(a.set))
    rows = measure(a.parts.split(","), cfg, a.warmup, a.steps, log=lambda m: print(m, flush=True))
    where = (torch.cuda.get_device_name() if device().type == "cuda" else f"CPU, {torch.get_num_threads()} threads")
    print(f"\n({where}, preset {a.preset}, {a.steps} timed steps)")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": where, "threads": torch.get_num_threads(), "preset": a.preset, "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
