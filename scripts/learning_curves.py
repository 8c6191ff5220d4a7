"""Learning curves of a run: each trained part's main training metric against its training
minutes, read from the `history.csv` every part writes beside its weights (model_code/train/
callbacks.History). Minutes are the sum of the logged intervals (log_every / steps_per_s), so they
are the part's own training time, not the wall time of the whole run.

    python scripts/learning_curves.py runs/local/work --out docs/results/laptop-curves.png

These are training-batch metrics (what the log line shows); held-out numbers come from the
evaluation and the tables in docs/results.md.
"""
from __future__ import annotations

import argparse
import csv
import os

# the metric that says whether a part is learning, per part (first one present is plotted)
METRICS = {
    "dvae": ("train/hard_psnr", "hard-code PSNR (dB)"),
    "clip": ("train/acc", "contrastive accuracy"),
    "captioner": ("train/token_acc", "caption token accuracy"),
    "transformer": ("train/image_loss", "image loss (nats/token)"),
    "prior": ("train/loss", "loss"),
    "decoder": ("train/loss", "loss"),
    "upsampler": ("train/loss", "loss"),
}


def read(path: str, metric: str) -> tuple[list[float], list[float]]:
    """(training minutes, metric) per logged row."""
    minutes, values, t, last_step = [], [], 0.0, 0
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step, rate = int(float(row["step"])), float(row.get("perf/steps_per_s") or 0)
            if rate > 0:
                t += (step - last_step) / rate / 60
            last_step = step
            if row.get(metric) not in (None, ""):
                minutes.append(t)
                values.append(float(row[metric]))
    return minutes, values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", help="the run's work folder (runs/local/work), one sub-folder per part")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    parts = [p for p in METRICS if os.path.exists(os.path.join(a.work, p, "history.csv"))]
    if not parts:
        raise SystemExit(f"no <part>/history.csv under {a.work}")
    fig, axes = plt.subplots(1, len(parts), figsize=(3.2 * len(parts), 2.8), squeeze=False)
    for ax, part in zip(axes[0], parts):
        metric, label = METRICS[part]
        x, y = read(os.path.join(a.work, part, "history.csv"), metric)
        ax.plot(x, y)
        ax.set_title(part)
        ax.set_xlabel("training minutes")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(a.out)


if __name__ == "__main__":
    main()
