"""The training EMA (diffusers' EMAModel under train.module.EMA) against a bare foreach lerp.

    python tests/benchmarks/bench_ema.py [--preset small] [--part upsampler|dvae] [--updates 50]

Both keep a moving average of the same model's trainable weights; the baseline is the loop Easel
wrote by hand before (torch._foreach_lerp_ over fp32 shadow copies), measured in the same run.
Prints the seconds per update of each and their ratio (CPU seconds, one torch thread, robust on a
shared machine; wall beside them), and checks that both averages agree. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from model_code.config import load_preset  # noqa: E402
from model_code.train.module import EMA  # noqa: E402
from model_code.models.dvae import DVAE  # noqa: E402
from model_code.models.upsampler import Upsampler  # noqa: E402
from model_code.train.parts import section  # noqa: E402

MODELS = {"upsampler": Upsampler, "dvae": DVAE}   # parts that need no trained dependency to build


def lerp_baseline(model: torch.nn.Module, decay: float):
    shadow = [p.detach().float().clone() for p in model.parameters() if p.requires_grad]
    n = [0]

    def update():
        n[0] += 1
        d = 0.0 if n[0] == 1 else min(decay, n[0] / (9 + n[0]))   # EMAModel's warm-up, same steps
        torch._foreach_lerp_(shadow, [p.detach() for p in model.parameters() if p.requires_grad], 1.0 - d)
    return update, shadow


def timed(fn, updates: int) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(updates):
        fn()
    return (time.process_time() - c0) / updates, (time.perf_counter() - w0) / updates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--part", default="upsampler", choices=sorted(MODELS))
    ap.add_argument("--updates", type=int, default=50)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MODELS[a.part].from_config(section(load_preset(a.preset), a.part))
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ema = EMA(model, 0.9999)
    base, shadow = lerp_baseline(model, 0.9999)
    for fn in (lambda: ema.update(model), base):   # warm up both, then nudge the weights
        fn()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ours = timed(lambda: ema.update(model), a.updates)
    ref = timed(base, a.updates)
    same = all(torch.allclose(s, t, atol=1e-6) for s, t in zip(ema.ema.shadow_params, shadow))
    print(f"{a.part} ({a.preset}, {params / 1e6:.1f}M trainable), {a.updates} updates, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"EMAModel: {1e3 * ours[0]:.2f} ms CPU / {1e3 * ours[1]:.2f} ms wall per update; "
          f"foreach lerp: {1e3 * ref[0]:.2f} / {1e3 * ref[1]:.2f}; "
          f"ratio {ours[0] / ref[0]:.2f} (CPU) {ours[1] / ref[1]:.2f} (wall); averages agree: {same}")


if __name__ == "__main__":
    main()
