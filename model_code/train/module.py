"""One thin LightningModule for every part: batch -> `spec.prepare` -> `model.forward_loss`.

The models are plain nn.Modules that know nothing of Lightning; this wrapper adds only what a
training run needs around them:

- AdamW (weight decay on matrices only, as nanoGPT: no decay on biases, norms' gains, scalars),
  a per-step LR schedule (linear warm-up then cosine, constant, or the dVAE's own schedule);
- an EMA of the weights where the part asks for one (unCLIP prior and decoder: decay 0.9999);
- deterministic per-step randomness: before each micro-batch the global RNG is reseeded from
  (seed, samples seen, rank), so a resumed run draws the same noise as an uninterrupted one;
- the data position: the loader is built in `train_dataloader` from the restored step, so a
  resumed run continues at exactly the next sample (see model_code.data.loader);
- logging of every key `forward_loss` returns, plus the learning rate (into callback_metrics;
  callbacks.History writes them to history.csv and the loggers under the step number they belong to).

Training configuration (`resolve_train_config`), lowest precedence first:
  TRAIN_DEFAULTS < the part's paper defaults (parts.PartSpec.train_defaults)
  < the preset's `train:` scalars < `train.steps.<part>` (max_steps)
  < `train.<part>: {...}` (any key, for that part only; e.g. `train.dvae.lr`).
A part's own section (`dvae:`) is its model config and holds no training key (parts.section).
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections import Counter
from typing import Any, Callable, Iterator

import pytorch_lightning as pl
import torch
import torch.nn as nn

from model_code.train.parts import Context, PartSpec

TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "max_steps": 1000,
    "batch_size": 32,             # per device
    "accumulate_grad_batches": 1,
    # optimiser and schedule
    "lr": 3e-4,
    "lr_schedule": "cosine",      # cosine | constant | dvae
    "warmup_steps": 0,            # capped at a tenth of the run (a paper's 5000 on a 300-step run)
    "lr_end": None,               # cosine floor; None: min_lr_ratio * lr
    "min_lr_ratio": 0.1,
    "adam_betas": (0.9, 0.999),
    "adam_eps": 1e-8,
    "weight_decay": 0.0,
    "grad_clip": None,            # max global grad norm
    "ema_decay": None,            # e.g. 0.9999 (unCLIP prior/decoder); None: no EMA
    # data
    "caption_policy": None,       # None: the part's default (parts.PartSpec.caption_policy)
    "synthetic_fraction": 0.95,   # DALL-E 3 blend: 95% synthetic / 5% original
    "synthetic_kind": "long",
    "data_cache": "auto",         # auto | decoded | none (model_code.data.loader)
    "num_workers": 0,
    # hardware
    "precision": "auto",          # auto: bf16-mixed on GPU, 32 on CPU
    "strategy": "auto",           # auto | ddp | fsdp
    "devices": "auto",
    "num_nodes": "auto",          # auto: WORLD_SIZE / devices under torchrun or a PyTorchJob, else 1
    "compile": False,             # torch.compile the model's forward_loss
    "gradient_checkpointing": False,
    "find_unused_parameters": False,
    # observability and robustness
    "log_every": 50,
    "ckpt_every": 500,
    "keep_checkpoints": 2,
    "sample_every": 0,            # 0: a sample grid only at the end of training
    "sample_n": 8,
    "progress": "auto",           # auto (bar on a terminal, else log lines) | bar | log | none
    "peak_flops": None,           # per-device peak FLOP/s for MFU; None: from the GPU's name
    "mlflow_experiment": "easel-train",
}
# Keys that may change between a run and its resumption without changing what is trained.
OPERATIONAL_KEYS = {"max_steps", "num_workers", "data_cache", "precision", "strategy", "devices",
                    "num_nodes", "compile", "gradient_checkpointing", "find_unused_parameters",
                    "log_every", "ckpt_every", "keep_checkpoints", "sample_every", "sample_n",
                    "progress", "peak_flops", "mlflow_experiment"}
LR_SCHEDULES = ("cosine", "constant", "dvae")


def resolve_train_config(cfg: dict, part: str, spec: PartSpec | None = None) -> dict:
    """The training settings of one part (see the module docstring for the precedence)."""
    from model_code.train.parts import PARTS, get_part, section
    spec = spec or get_part(part)
    top = cfg.get("train") or {}
    if not isinstance(top, dict):
        raise ValueError(f"train must be a mapping, got {type(top).__name__}")
    known = set(TRAIN_DEFAULTS) | {k for p in PARTS.values() for k in p.train_defaults}
    for k, v in top.items():  # a typo in the preset is an error, not a silently ignored key
        if isinstance(v, dict) and k not in PARTS and k != "steps":
            raise ValueError(f"train.{k}: a mapping here must be train.steps or train.<part> "
                             f"(parts: {', '.join(PARTS)})")
        if not isinstance(v, dict) and k not in known:
            raise ValueError(f"unknown key train.{k}; known: {sorted(known)}")
    bad_steps = sorted(set(top.get("steps") or {}) - set(PARTS))
    if bad_steps:
        raise ValueError(f"train.steps names unknown parts {bad_steps}; parts: {', '.join(PARTS)}")
    for name in PARTS:  # a training key misplaced in any part's section fails every part's run
        section(cfg, name)
    out = {**TRAIN_DEFAULTS, **spec.train_defaults}
    out.update({k: v for k, v in top.items() if not isinstance(v, dict)})
    steps = top.get("steps") or {}
    if part in steps:
        out["max_steps"] = steps[part]
    per_part = top.get(part) or {}
    if not isinstance(per_part, dict):
        raise ValueError(f"train.{part} must be a mapping of training keys, got {per_part!r}")
    out.update(per_part)
    known = set(TRAIN_DEFAULTS) | set(spec.train_defaults)
    unknown = sorted(set(per_part) - known)
    if unknown:
        raise ValueError(f"unknown keys {unknown} in train.{part}; known: {sorted(known)}")
    # a preset-wide caption policy is for the generators (the DALL-E 3 experiment); the captioner
    # (curated captions) and the image-only parts keep theirs unless train.<part> says otherwise
    if out.get("caption_policy") is None or (spec.caption_policy != "blend"
                                             and "caption_policy" not in per_part):
        out["caption_policy"] = spec.caption_policy
    return _validate(out, part)


def _validate(t: dict, part: str) -> dict:
    """Every setting's type and range, each error naming its key. Numbers must be finite: YAML reads
    `.inf`, `.nan` and `1e400` (inf) as numbers, and an infinite or NaN lr or weight decay trains
    NaN weights that a run would otherwise save as its result."""
    def pos_int(k: str, minimum: int = 1) -> None:
        v = t[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"train.{part}.{k} must be an integer >= {minimum}, got {v!r}")

    def number(k: str, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False,
               optional: bool = False, why: str = "") -> None:
        v = t.get(k)
        if v is None and optional:
            return
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi))
        if not ok:
            span = (f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}" if math.isfinite(hi)
                    else f"{'> ' if lo_open else '>= '}{lo:g}")
            raise ValueError(f"train.{part}.{k} must be a finite number {'in ' if math.isfinite(hi) else ''}"
                             f"{span}{' or null' if optional else ''}{why}, got {v!r}")

    # YAML 1.1 reads "3e-4" (no dot) as a string: accept numbers written either way
    for k in ("lr", "adam_eps", "weight_decay", "lr_end", "min_lr_ratio", "grad_clip", "ema_decay",
              "synthetic_fraction", "peak_flops", "short_fraction"):
        if isinstance(t.get(k), str):
            try:
                t[k] = float(t[k])
            except ValueError:
                raise ValueError(f"train.{part}.{k} must be a number, got {t[k]!r}") from None
    for k in ("max_steps", "batch_size", "accumulate_grad_batches", "log_every", "keep_checkpoints",
              "sample_n"):
        pos_int(k)
    for k in ("warmup_steps", "ckpt_every", "sample_every", "num_workers", "seed"):
        pos_int(k, 0)
    for k in ("lr_anneal_steps", "lr_warmup_steps"):   # the dvae schedule's
        if k in t:
            pos_int(k, 0)
    # AdamW moves every weight by about lr per step: above 1 a run diverges at once
    number("lr", 0, 1, lo_open=True)
    number("adam_eps", 0, 1, lo_open=True)
    # decoupled decay scales every weight by (1 - lr * weight_decay) per step: at 1 it zeroes them
    number("weight_decay", 0, 1 / t["lr"], hi_open=True, why=f" (lr * weight_decay < 1 at lr={t['lr']:g})")
    number("lr_end", 0, t["lr"], optional=True, why=f" (the schedule anneals from lr={t['lr']:g} down to it)")
    number("min_lr_ratio", 0, 1)
    number("ema_decay", 0, 1, lo_open=True, hi_open=True, optional=True)
    number("grad_clip", 0, lo_open=True, optional=True)
    number("synthetic_fraction", 0, 1)
    number("peak_flops", 0, lo_open=True, optional=True)
    if "short_fraction" in t:   # the captioner's
        number("short_fraction", 0, 1)
    betas = t["adam_betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"train.{part}.adam_betas must be two numbers in [0, 1), got {betas!r}")
    t["adam_betas"] = tuple(float(b) for b in betas)
    if t["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"train.{part}.lr_schedule must be one of {LR_SCHEDULES}, got {t['lr_schedule']!r}")
    if t["strategy"] not in ("auto", "ddp", "fsdp"):
        raise ValueError(f"train.{part}.strategy must be auto, ddp or fsdp, got {t['strategy']!r}")
    if t["progress"] not in ("auto", "bar", "log", "none"):
        raise ValueError(f"train.{part}.progress must be auto, bar, log or none, got {t['progress']!r}")
    return t


def lr_lambda(t: dict, model: nn.Module) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step s (LambdaLR)."""
    if t["lr_schedule"] == "dvae":
        # DALL-E 1 appendix A.2: lr -> lr_end by a cosine over lr_anneal_steps (1.2M updates there),
        # flat after; a linear warm-up of lr_warmup_steps (not in the paper; small presets use it)
        from model_code.models.dvae import cosine_ramp
        lr = float(t["lr"])
        end = float(t["lr_end"]) if t["lr_end"] is not None else lr
        n, w = int(t.get("lr_anneal_steps") or t["max_steps"]), int(t.get("lr_warmup_steps") or 0)
        return lambda s: (min(1.0, (s + 1) / w) if w else 1.0) * cosine_ramp(int(s), n, lr, end) / lr
    total = int(t["max_steps"])
    warm = min(int(t["warmup_steps"]), total // 10)
    if t["lr_schedule"] == "constant":
        return lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
    floor = t["lr_end"] / t["lr"] if t["lr_end"] is not None else float(t["min_lr_ratio"])

    def cosine(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        p = min(1.0, (s - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    return cosine


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels (dim >= 2) only."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, t: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `param_groups` with the part's training settings. Fused kernels on a GPU,
    except with gradient clipping: fused AdamW unscales gradients inside its step, so Lightning
    refuses to clip them first (seen on an H200: the transformer, grad_clip 4.0, failed at its
    first step); the foreach kernels are the next fastest."""
    fused = device.type == "cuda" and not t["grad_clip"]
    return torch.optim.AdamW(param_groups(model, float(t["weight_decay"])), lr=float(t["lr"]),
                             betas=t["adam_betas"], eps=float(t["adam_eps"]), fused=fused)


class EMA:
    """An exponential moving average of a model's trainable weights: diffusers' EMAModel, whose
    default decay warms up as min(decay, (1 + n) / (10 + n)) over the n updates so far, so a short
    run is not dominated by its random initialisation (a 0.9999 EMA needs ~10^4 updates). This
    wrapper only chooses the weights (trainable ones, in a fixed order, also after activation
    checkpointing wraps blocks) and swaps the average in for sampling and the final save."""

    def __init__(self, model: nn.Module, decay: float):
        from diffusers.training_utils import EMAModel
        self.decay = float(decay)
        self.ema = EMAModel(self._weights(model), decay=self.decay, foreach=True)

    @staticmethod
    def _weights(model: nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = self._weights(model)
        if self.ema.shadow_params and self.ema.shadow_params[0].device != params[0].device:
            self.ema.to(device=params[0].device)   # the model moved to its device after the EMA was made
        self.ema.step(params)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into `model` (for sampling and the final save)."""
        params = self._weights(model)
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield model
        finally:
            self.ema.restore(params)

    def state_dict(self) -> dict:
        state = self.ema.state_dict()
        return {**state, "shadow_params": [t.cpu() for t in state["shadow_params"]]}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("shadow_params") or []) != len(self.ema.shadow_params):
            raise ValueError(f"EMA state holds {len(state.get('shadow_params') or [])} weights, the model "
                             f"{len(self.ema.shadow_params)} (a checkpoint of another model or Easel version)")
        device = self.ema.shadow_params[0].device if self.ema.shadow_params else None
        self.ema.load_state_dict(state)
        if device is not None:
            self.ema.to(device=device)


def step_seed(seed: int, samples_seen: int, rank: int) -> int:
    """The RNG seed of one micro-batch: a function of where the run is, not of its history."""
    return (int(seed) * 1_000_003 + int(samples_seen) * 7919 + int(rank) * 104_729) % (2 ** 63 - 1)


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """A model's outermost repeated blocks (transformer layers, residual blocks): instances of a
    module class that has children, is not a plain container, and occurs at least twice; a block
    inside another such block is not listed. What FSDP shards by and checkpointing recomputes."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

    def is_block(m: nn.Module) -> bool:
        return m is not model and not isinstance(m, containers) and next(m.children(), None) is not None

    counts = Counter(type(m) for m in model.modules() if is_block(m))
    repeated = {t for t, c in counts.items() if c >= 2}
    out: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        for child in m.children():
            if type(child) in repeated:
                out.append(child)
            else:
                walk(child)
    walk(model)
    return out


def block_types(model: nn.Module) -> set[type]:
    return {type(b) for b in repeated_blocks(model)}


def activation_checkpointing(model: nn.Module) -> str:
    """Recompute activations in backward instead of storing them: transformers models through
    their own switch, any other model by wrapping its repeated blocks. Parameter names (and so
    state dicts and saved models) are unchanged."""
    hf = [m for m in model.modules() if getattr(m, "supports_gradient_checkpointing", False)
          and hasattr(m, "activation_checkpointing_enable")]
    if hf:
        for m in hf:
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return f"transformers ({len(hf)} models)"
    blocks = {id(b) for b in repeated_blocks(model)}
    if not blocks:
        raise ValueError(f"train.gradient_checkpointing: {type(model).__name__} has no repeated blocks "
                         f"to checkpoint")
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper)
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper,
                                                       checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: id(m) in blocks)
    return f"{len(blocks)} blocks"


class PartModule(pl.LightningModule):
    """Trains `model` (one part) with `spec.prepare` + `model.forward_loss`.

    loader_fn(start_batch, start_sample, rank, world_size) -> DataLoader is called once Lightning
    has restored a checkpoint, so the loader starts at the restored data position."""

    def __init__(self, spec: PartSpec, model: nn.Module, ctx: Context,
                 loader_fn: Callable[[int, int, int, int], Any] | None = None):
        super().__init__()
        self.spec, self.model, self.ctx = spec, model, ctx
        self.tcfg = ctx.train
        self.loader_fn = loader_fn
        self.ema = EMA(model, self.tcfg["ema_decay"]) if self.tcfg["ema_decay"] else None
        self.samples_seen = 0          # samples consumed by the whole run (all ranks), checkpointed
        self.tokens_window = 0         # tokens since the last throughput reading (device tensor)
        self.first_metrics: dict[str, float] | None = None  # the first step's, for run summaries
        self._loss_fn = model.forward_loss
        self._log_every = int(self.tcfg["log_every"])

    # ---------------------------------------------------------------- setup
    def configure_model(self) -> None:
        fsdp = type(self.trainer.strategy).__name__ == "FSDPStrategy"  # FSDP checkpoints its own units
        if self.tcfg["gradient_checkpointing"] and not fsdp and not getattr(self, "_gc_done", False):
            activation_checkpointing(self.model)
            self._gc_done = True
        if self.tcfg["compile"] and self._loss_fn is self.model.forward_loss:
            self._loss_fn = torch.compile(self.model.forward_loss)

    def on_fit_start(self) -> None:
        for dep in self.ctx.deps.values():  # frozen dependencies follow the model to its device
            if isinstance(dep, nn.Module):
                dep.to(self.device).eval().requires_grad_(False)

    def train_dataloader(self):
        if self.loader_fn is None:
            raise RuntimeError("PartModule was built without a loader_fn")
        # Lightning has restored global_step and (on_load_checkpoint) samples_seen by now
        return self.loader_fn(self.trainer.global_step * self.trainer.accumulate_grad_batches,
                              self.samples_seen, self.global_rank, self.trainer.world_size)

    def configure_optimizers(self):
        t = self.tcfg
        opt = make_optimizer(self.model, t, self.device)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t, self.model))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- the step
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.tcfg["seed"], self.samples_seen, self.global_rank))

    def prepare(self, batch: dict) -> dict:
        self.ctx.step = int(self.global_step)
        return self.spec.prepare(batch, self.ctx)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        kwargs = self.prepare(batch)
        out = self._loss_fn(**kwargs)
        if self.spec.tokens_fn is not None:
            self.tokens_window = self.tokens_window + self.spec.tokens_fn(kwargs)
        # log only on steps Lightning will write: self.log costs ~0.1 ms per key otherwise
        step = self.global_step
        if (step + 1) % self._log_every == 0 or step == 0 or step + 1 == self.trainer.max_steps:
            metrics = {f"train/{k}": (v.detach().float() if torch.is_tensor(v) else float(v))
                       for k, v in out.items()}
            if self.first_metrics is None and step == 0:
                self.first_metrics = {k: float(v) for k, v in metrics.items()}
            metrics["train/lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
            # logger=False: History sends them to the loggers (at the optimizer step they belong to)
            self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, logger=False,
                          batch_size=len(batch["image"]))
            self.log("loss", out["loss"].detach().float(), on_step=True, on_epoch=False, prog_bar=True,
                     logger=False, batch_size=len(batch["image"]))
        # counted here, not in on_train_batch_end: callbacks (the checkpoint) run before the
        # module's own on_train_batch_end and must see this batch as consumed
        self.samples_seen += len(batch["image"]) * self.trainer.world_size
        return out["loss"]

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["easel"] = {"part": self.spec.name, "samples_seen": self.samples_seen,
                               "first_metrics": self.first_metrics,
                               "ema": self.ema.state_dict() if self.ema is not None else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("easel")
        if state is None or state.get("part") != self.spec.name:
            raise ValueError(f"checkpoint is not a {self.spec.name!r} training checkpoint "
                             f"(it is for {state and state.get('part')!r})")
        self.samples_seen = int(state["samples_seen"])
        self.first_metrics = state.get("first_metrics")
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the run uses an EMA but the checkpoint has none (ema_decay changed?)")
            self.ema.load_state_dict(state["ema"])

    # ---------------------------------------------------------------- helpers for callbacks
    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[nn.Module]:
        """The weights to sample or save with: the EMA's where there is one, in eval mode."""
        was = self.model.training
        self.model.eval()
        try:
            with (self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()):
                yield self.model
        finally:
            self.model.train(was)

    @torch.no_grad()
    def forward_flops(self, batch: dict) -> int:
        """FLOPs of one forward pass of the model on `batch` (matmuls, convs, attention), counted
        by torch's FlopCounterMode; the trainer counts a training step as 3x (fwd + 2x bwd)."""
        from torch.utils.flop_counter import FlopCounterMode
        kwargs = self.prepare(batch)
        counter = FlopCounterMode(display=False)
        with counter:
            self.model.forward_loss(**kwargs)
        return int(counter.get_total_flops())
