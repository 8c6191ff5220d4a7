"""The Lightning Trainer for a part, from its resolved training config.

- precision: `auto` is bf16-mixed on a GPU and 32 on CPU (at the tiny preset's sizes CPU autocast
  gains nothing even where the CPU has bf16 instructions: docs/benchmarks.md). An explicit
  `bf16-mixed` on a CPU with native bf16 matmuls (AVX512-BF16 or AMX: 2.3x the fp32 matmul rate
  on the AMD EPYC measured) trains under CPU autocast; without them, and for the other 16-bit
  modes on any CPU, it falls back to 32 with a log line, so one preset runs on a laptop and on a
  node pool;
- strategy: `ddp` (data parallel) or `fsdp` (fully sharded: the repeated blocks of the model are
  the wrap units, a full state dict is gathered for checkpoints); on one device both become the
  plain single-device strategy. Multi-node runs take their ranks from the environment
  (torchrun / the Kubeflow Training Operator's PyTorchJob set MASTER_ADDR, RANK, WORLD_SIZE);
- gradient accumulation, global-norm clipping, `max_steps`, logging every `log_every` steps;
- a progress bar on a terminal, a periodic log line otherwise (model_code.train.callbacks.LogLine).

Checkpointing is ours (callbacks.ObjectStoreCheckpoint), so Lightning's is off; there is no
validation loop (evaluation is a separate pipeline step).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn

log = logging.getLogger(__name__)


def has_gpu() -> bool:
    return torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 or AMX tiles), where oneDNN runs bf16 GEMMs
    at about twice the fp32 rate; elsewhere bf16 is emulated and slower than fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported",
                                                          "_is_amx_tile_supported"))


def resolve_precision(precision: Any) -> str:
    p = str(precision)
    if p == "auto":
        return "bf16-mixed" if has_gpu() else "32-true"
    if p in ("32", "32-true"):
        return "32-true"
    if p in ("bf16", "bf16-mixed", "16", "16-mixed", "bf16-true", "16-true"):
        p = {"bf16": "bf16-mixed", "16": "16-mixed"}.get(p, p)
        if has_gpu():
            return p
        if p == "bf16-mixed" and cpu_has_bf16():
            return p
        log.info("precision %s asked for but no GPU%s: training in 32-bit on CPU", p,
                 " or native CPU bf16" if p == "bf16-mixed" else "")
        return "32-true"
    raise ValueError(f"train.precision must be auto, 32, bf16-mixed, 16-mixed, bf16-true or "
                     f"16-true, got {precision!r}")


def n_devices(tcfg: dict) -> int:
    d = tcfg.get("devices", "auto")
    if d in ("auto", -1, "-1"):
        return torch.cuda.device_count() if has_gpu() else 1
    if isinstance(d, int) and d >= 1:
        return d
    raise ValueError(f"train.devices must be auto or a positive integer, got {d!r}")


def n_nodes(tcfg: dict) -> int:
    """num_nodes, or with `auto` the launcher's WORLD_SIZE / devices per node (torchrun and the
    Kubeflow Training Operator's PyTorchJob set WORLD_SIZE), else 1."""
    n = tcfg.get("num_nodes", "auto")
    if n == "auto":
        world = int(os.environ.get("WORLD_SIZE", "0") or 0)
        return max(1, world // n_devices(tcfg)) if world else 1
    if isinstance(n, int) and n >= 1:
        return n
    raise ValueError(f"train.num_nodes must be auto or a positive integer, got {n!r}")


def make_strategy(tcfg: dict, model: nn.Module | None = None) -> Any:
    from model_code.train.module import block_types
    name = tcfg.get("strategy", "auto")
    world = n_devices(tcfg) * n_nodes(tcfg)
    if name == "auto" or world == 1:
        return "auto"
    if name == "ddp":
        from pytorch_lightning.strategies import DDPStrategy
        return DDPStrategy(find_unused_parameters=bool(tcfg.get("find_unused_parameters", False)),
                           gradient_as_bucket_view=True)
    if name == "fsdp":
        from pytorch_lightning.strategies import FSDPStrategy
        blocks = block_types(model) if model is not None else set()  # the shard units
        if tcfg.get("ema_decay"):
            raise ValueError("train.ema_decay with train.strategy=fsdp is not supported: the EMA "
                             "keeps full copies of the weights; use ddp or drop the EMA")
        return FSDPStrategy(auto_wrap_policy=blocks or None,
                            activation_checkpointing_policy=(blocks if tcfg.get("gradient_checkpointing")
                                                             else None),
                            sharding_strategy="FULL_SHARD", state_dict_type="full",
                            limit_all_gathers=True)
    raise ValueError(f"train.strategy must be auto, ddp or fsdp, got {name!r}")


def progress_mode(tcfg: dict) -> str:
    mode = tcfg.get("progress", "auto")
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return mode


def make_trainer(tcfg: dict, callbacks: list | None = None, logger: Any = None,
                 model: nn.Module | None = None, default_root_dir: str | None = None) -> pl.Trainer:
    """A Trainer for one part's run (tcfg: module.resolve_train_config's output)."""
    strategy = make_strategy(tcfg, model)
    return pl.Trainer(
        accelerator="gpu" if has_gpu() else "cpu",
        devices=n_devices(tcfg),
        num_nodes=n_nodes(tcfg),
        strategy=strategy,
        precision=resolve_precision(tcfg.get("precision", "auto")),
        max_steps=int(tcfg["max_steps"]),
        max_epochs=1,  # the loader is one pass of exactly max_steps optimizer steps
        accumulate_grad_batches=int(tcfg.get("accumulate_grad_batches", 1)),
        gradient_clip_val=tcfg.get("grad_clip"),
        gradient_clip_algorithm="norm",
        log_every_n_steps=int(tcfg.get("log_every", 50)),
        logger=logger if logger is not None else False,
        callbacks=callbacks or [],
        enable_checkpointing=False,
        enable_progress_bar=progress_mode(tcfg) == "bar",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,  # the loader shards the stream by rank itself
        default_root_dir=default_root_dir,
    )
