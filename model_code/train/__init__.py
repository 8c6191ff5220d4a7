"""Training: one way to train every part.

    from model_code.train import train_part
    train_part("dvae", "tiny", data="runs/x/data", out="runs/x/dvae")

`train_part` (run.py) resolves the preset, builds the part's model (parts.py), wraps it in the
one generic LightningModule (module.py), builds the Trainer (factory.py) with the checkpoint,
throughput/MFU, sample-grid and log-line callbacks (callbacks.py), trains on the ingested
dataset (model_code.data.loader) and saves the model with save_pretrained under `out`; its state
files (train_state.json, latest.json, history.csv) are written whole or not at all (files.py).
"""
from __future__ import annotations

from typing import Any

__all__ = ["train_part", "PARTS", "get_part"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import Lightning
    if name == "train_part":
        from model_code.train import run
        return getattr(run, name)
    if name in ("PARTS", "get_part"):
        from model_code.train import parts
        return getattr(parts, name)
    raise AttributeError(name)
