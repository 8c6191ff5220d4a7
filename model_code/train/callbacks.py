"""Callbacks of a training run: checkpoints in the object store (periodic and on SIGTERM),
throughput and MFU, sample grids in MLflow, and a periodic log line.

Checkpoint layout under `<out>/checkpoints/` (a directory or s3:// prefix, via model_code.storage):

    step-00000400.ckpt    Lightning checkpoint: weights, optimiser, LR schedule, loop state,
                          `easel` = {part, samples_seen, ema} and `easel_record` (its latest.json)
    latest.json           {"step", "file", "size", "samples_seen", "reason", "part", "config_hash",
                           "inputs", "config" (the run's settings), "mlflow_run_id"}

Checkpoints are written every `every_n_steps` steps and after the last step (so a finished run
can be extended with a larger max_steps).
latest.json is written (atomically) after the checkpoint is fully uploaded, so it always names a
complete file; the oldest checkpoints beyond `keep` are then deleted. A damaged latest.json or
checkpoint falls back to the newest older whole checkpoint (`latest_checkpoint`), which is why each
checkpoint carries its own record.

A checkpoint never holds non-finite weights, and a run whose loss stops being finite ends with
NonFiniteTraining (not a completed run): the last checkpoint written is then a good one.

Preemption: a spot node gets SIGTERM and a grace period. The handler only sets a flag; at the end
of the current optimizer step (never inside a gradient-accumulation window, whose partial
gradients a checkpoint cannot hold) every rank agrees to stop, the checkpoint is written and
training ends cleanly. Re-running the same command resumes from it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
import zipfile
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from model_code import storage
from model_code.train.files import DamagedFile, read_json, write_json, write_text_atomic

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s) by device name; the first substring that matches wins.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("V100", 125e12), ("T4", 65e12),
)


def peak_flops(device: torch.device, configured: float | None = None) -> float | None:
    """The device's peak bf16 FLOP/s for MFU: the configured value, else from the GPU's name."""
    if configured:
        return float(configured)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS if k in name), None)


def _at_step_boundary(trainer: pl.Trainer, batch_idx: int) -> bool:
    """True after the micro-batch that completed an optimizer step (the run is one epoch)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


def _log_step(trainer: pl.Trainer, batch_idx: int, every: int) -> int | None:
    """The optimizer step just finished when it is one to log on rank 0 (every `every` steps and
    the last one), else None: the log line and history.csv write the same rows."""
    if not (_at_step_boundary(trainer, batch_idx) and trainer.is_global_zero):
        return None
    step = trainer.global_step
    return step if step % every == 0 or step == trainer.max_steps else None


# --------------------------------------------------------------------------- checkpoints
class NonFiniteTraining(RuntimeError):
    """The training loss or the weights are no longer finite (NaN or inf): the run diverged.
    Raised inside fit, so the run ends non-zero without a completed train_state.json."""


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """One host-device sync for any number of tensors."""
    tensors = [t.detach() for t in tensors if t is not None and t.numel()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class ObjectStoreCheckpoint(Callback):
    """Periodic, final and SIGTERM checkpoints under `uri` (the module docstring has the layout).

    Not Lightning's ModelCheckpoint: a resume needs latest.json written only after its checkpoint
    is complete in the object store (with samples_seen, the config hash and the MLflow run), the
    store reached through model_code.storage (EASEL_S3_ENDPOINT_URL and the credentials serving
    and DVC use, not a second fsspec set-up), and the SIGTERM stop at an optimizer-step boundary,
    which ModelCheckpoint does not do; keeping the `keep` newest is the rest of what it would add."""

    def __init__(self, uri: str, every_n_steps: int, keep: int = 2,
                 meta: Callable[[], dict] | None = None, check_every: int = 0):
        self.uri, self.every, self.keep = uri, int(every_n_steps), int(keep)
        self.meta = meta or (lambda: {})
        # the loss is checked for NaN/inf every `check_every` steps (the log steps, where History
        # reads it anyway) and at the last: a check per step would sync host and device per step
        self.check_every = int(check_every)
        self.sigterm = False          # set by the signal handler
        self.preempted = False        # training stopped early because of SIGTERM
        self.saved: list[str] = []
        self.good_step: int | None = None   # the newest checkpoint known to hold finite weights
        self._record: dict | None = None    # the record of the checkpoint being written
        self._old_handler: Any = None

    # SIGTERM: Lightning installs its own handler (it stops after the current micro-batch); ours
    # replaces it while training so the stop waits for an optimizer-step boundary.
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: leave signals to whoever owns them
            self._old_handler = None
        if trainer.received_sigterm:  # it came during set-up, to Lightning's handler
            self.sigterm = True
        # a resumed run starts from a checkpoint that passed the weight check when it was written
        self.good_step = trainer.global_step or None

    def _on_sigterm(self, signum, frame) -> None:
        if not self.sigterm:
            print("SIGTERM received: checkpointing at the end of this step, then stopping",
                  file=sys.stderr, flush=True)
        self.sigterm = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)   # a failed run (NonFiniteTraining) leaves no handler behind

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not _at_step_boundary(trainer, batch_idx):
            return
        step = trainer.global_step
        if self.check_every and (step % self.check_every == 0 or step >= trainer.max_steps):
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if torch.is_tensor(loss):
                self.require_finite(trainer, "the training loss is", [loss])
        stop = self.sigterm
        if trainer.world_size > 1:  # all ranks stop at the same step or none does
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.save(trainer, reason="sigterm")
            self.preempted = True
            trainer.should_stop = True
        elif step >= trainer.max_steps:  # the last step: a run can later be extended from here
            self.save(trainer, reason="final")
        elif self.every and step % self.every == 0:
            self.save(trainer, reason="periodic")

    def require_finite(self, trainer: pl.Trainer, what: str, tensors: list[torch.Tensor]) -> None:
        """Stop the run (every rank) when any of `tensors` holds a NaN or inf on any rank; `what`
        ("the training loss is") begins the error's sentence."""
        bad = not _all_finite(tensors)
        if trainer.world_size > 1:  # every rank raises, or none waits forever for the others
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        part = trainer.lightning_module.spec.name
        kept = (f"the last good checkpoint (step {self.good_step}, "
                f"{storage.join(self.uri, f'step-{self.good_step:08d}.ckpt')}) is kept"
                if self.good_step is not None else "no checkpoint had been written yet")
        raise NonFiniteTraining(
            f"{part}: {what} NaN or infinite at step {trainer.global_step}: the run diverged "
            f"and stops; it is not marked complete and nothing after it is saved; {kept}. Lower the "
            f"learning rate (train.{part}.lr) or clip gradients (train.{part}.grad_clip), and train into "
            f"another out or start over (--restart)")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict) -> None:
        if self._record is not None:   # the file carries its own record (latest_checkpoint's fallback)
            checkpoint["easel_record"] = self._record

    def save(self, trainer: pl.Trainer, reason: str) -> str:
        """Write a checkpoint (a collective call: every rank), upload it, update latest.json."""
        self.require_finite(trainer, "the weights are", list(trainer.lightning_module.model.parameters()))
        step = trainer.global_step
        name = f"step-{step:08d}.ckpt"
        uri = storage.join(self.uri, name)
        pl_module = trainer.lightning_module
        self._record = {"step": step, "file": name, "reason": reason, "time": time.time(),
                        "samples_seen": int(getattr(pl_module, "samples_seen", 0)), **self.meta()}
        with tempfile.TemporaryDirectory(prefix="easel-ckpt-") as tmp:
            local = os.path.join(tmp, name)
            try:
                trainer.save_checkpoint(local)   # calls on_save_checkpoint (History flushes there)
            finally:
                record, self._record = self._record, None
            if trainer.is_global_zero:
                storage.makedirs(self.uri)
                if storage.is_remote(self.uri) or os.path.abspath(local) != os.path.abspath(uri):
                    storage.put_file(local, uri)
                write_json(storage.join(self.uri, "latest.json"), {**record, "size": os.path.getsize(local)})
                self.saved.append(name)
                self._prune()
        self.good_step = step
        trainer.strategy.barrier("easel-checkpoint")
        if trainer.is_global_zero:
            print(f"checkpoint step {step} ({reason}) -> {uri}", file=sys.stderr, flush=True)
        return uri

    def _prune(self) -> None:
        files = storage.ls(self.uri, "step-*.ckpt")
        for old in files[:-self.keep]:
            storage.remove(old)


def _damage(uri: str, size: int | None) -> str | None:
    """Why the checkpoint file at `uri` cannot be resumed from, cheaply (no read of its contents),
    or None: missing, shorter than latest.json recorded, or (a local file) no zip directory at
    its end, which is where a cut-short torch checkpoint breaks."""
    if not storage.exists(uri):
        return "is missing"
    if size is not None and storage.size(uri) != size:
        return f"is cut short ({storage.size(uri)} of {size} bytes)"
    if not storage.is_remote(uri) and not zipfile.is_zipfile(storage.local_path(uri)):
        return "is not a whole checkpoint (cut short?)"
    return None


def _embedded_record(uri: str) -> dict | None:
    """The record a checkpoint file carries (`easel_record`); reads the file (the fallback only)."""
    with tempfile.TemporaryDirectory(prefix="easel-ckpt-") as tmp:
        local = (storage.get_file(uri, os.path.join(tmp, "c.ckpt")) if storage.is_remote(uri)
                 else storage.local_path(uri))
        ckpt = torch.load(local, map_location="cpu", mmap=True, weights_only=False)
        return ckpt.get("easel_record") if isinstance(ckpt, dict) else None


def latest_checkpoint(ckpt_dir: str) -> dict | None:
    """The record of the newest whole checkpoint in a checkpoint directory (latest.json, plus `uri`
    of the file), or None when there is none.

    A damaged latest.json or checkpoint file (a disk that filled, a copy cut short) does not lose
    the run: the newest older checkpoint that is whole is used, with a warning; with none, the
    error names the damaged file and what to do."""
    path = storage.join(ckpt_dir, "latest.json")
    if not storage.exists(path):
        return None
    damaged: list[str] = []
    try:
        latest = read_json(path, "")
        latest["uri"] = storage.join(ckpt_dir, latest["file"])
    except (DamagedFile, KeyError, TypeError):
        latest = None
        damaged.append(f"{path} is damaged")
    if latest is not None:
        why = _damage(latest["uri"], latest.get("size"))
        if why is None:
            return latest
        damaged.append(f"{latest['uri']} (named by latest.json) {why}")
    for uri in reversed(storage.ls(ckpt_dir, "step-*.ckpt")):
        if latest is not None and uri == latest["uri"]:
            continue
        why = _damage(uri, None)
        if why is None:
            try:
                record = _embedded_record(uri)
            except Exception as e:  # noqa: BLE001 - whatever torch says of a damaged file
                why = f"cannot be read ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
            else:
                if record is None:   # written before checkpoints carried their record
                    why = "carries no record of its run"
        if why is not None:
            damaged.append(f"{uri} {why}")
            continue
        print(f"warning: {'; '.join(damaged)}: resuming from the older checkpoint {uri} "
              f"(step {record['step']})", file=sys.stderr, flush=True)
        return {**record, "uri": uri}
    raise ValueError(f"{'; '.join(damaged)}; no older whole checkpoint is kept in {ckpt_dir}: restore the "
                     f"file(s), or start over (resume=False; the CLI's --restart)")


# --------------------------------------------------------------------------- throughput
class Throughput(Callback):
    """Every `log_every` steps: steps/s, samples/s, tokens/s (where the part counts tokens),
    achieved TFLOP/s and MFU = achieved / (peak per device x devices) when the peak is known.

    FLOPs per sample are measured once, on the first batch, by counting one forward pass with
    torch's FlopCounterMode (x3 for forward + backward). The clock is read at log steps only
    (after a device synchronise), so the measurement adds no per-step host-device sync. The
    numbers reach the loggers through History's row of the same step (`latest`, `measured_at`).

    Not Lightning's ThroughputMonitor, whose MFU needs its own GPU peak table
    (lightning_fabric get_available_flops): it has no CPU peak (Easel's CPU MFU takes
    `train.peak_flops`, measured by tests/benchmarks/bench_mfu.py) and does not know the H200 by
    the name it reports ("NVIDIA H200", 2026-12-04); and it logs straight to the loggers, where the
    log line and history.csv could not read its numbers. Easel's own peak table is PEAK_BF16_FLOPS."""

    def __init__(self, log_every: int, peak: float | None = None):
        self.log_every, self.peak_cfg = int(log_every), peak
        self.peak: float | None = None
        self.flops_per_sample: float | None = None
        self.last: dict | None = None
        self.latest: dict[str, float] = {}
        self.measured_at: int | None = None   # the step `latest` was measured at

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last = None
        self.peak = peak_flops(pl_module.device, self.peak_cfg)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.flops_per_sample is None and self.peak is not None:
            try:
                self.flops_per_sample = 3.0 * pl_module.forward_flops(batch) / len(batch["image"])
            except Exception as e:  # noqa: BLE001 - a model FlopCounterMode cannot trace: no MFU
                log.warning("FLOP counting failed (%s); MFU will not be reported", e)
                self.flops_per_sample = 0.0

    def _mark(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        tokens = pl_module.tokens_window
        pl_module.tokens_window = 0
        return {"t": time.perf_counter(), "step": trainer.global_step,
                "samples": pl_module.samples_seen, "tokens": float(tokens)}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not _at_step_boundary(trainer, batch_idx):
            return
        if self.last is None:  # the first step (compilation, warm-up) is not timed
            self.last = self._mark(trainer, pl_module)
            return
        if trainer.global_step % self.log_every:
            return
        now = self._mark(trainer, pl_module)
        dt = now["t"] - self.last["t"]
        if dt <= 0:
            return
        m = {"perf/steps_per_s": (now["step"] - self.last["step"]) / dt,
             "perf/samples_per_s": (now["samples"] - self.last["samples"]) / dt}
        if pl_module.spec.tokens_fn is not None:
            # tokens were summed on this rank since the last mark; scale to all ranks
            m["perf/tokens_per_s"] = now["tokens"] * trainer.world_size / dt
        if self.flops_per_sample:
            achieved = self.flops_per_sample * m["perf/samples_per_s"]   # all ranks together
            m["perf/tflops"] = achieved / 1e12
            m["perf/mfu"] = achieved / (self.peak * trainer.world_size)
        self.latest, self.measured_at = m, trainer.global_step
        self.last = now


# --------------------------------------------------------------------------- sample grids
class SampleGrid(Callback):
    """Every `every_n_steps` steps (and at the end of training) on rank 0: the part's sample_fn on
    a fixed batch (the first one seen), with the EMA weights where there are some, logged to MLflow
    as an image (`samples/step_XXXXXX.png`) or, without MLflow, written under `out_dir`."""

    def __init__(self, every_n_steps: int, n: int, seed: int, out_dir: str | None = None):
        self.every, self.n, self.seed, self.out_dir = int(every_n_steps), int(n), int(seed), out_dir
        self.batch: dict | None = None
        self.logged: list[str] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.batch is None:
            self.batch = {k: (v[:self.n].detach().clone() if torch.is_tensor(v)
                              else list(v[:self.n]) if isinstance(v, (list, tuple)) else v)
                          for k, v in batch.items()}
        if (self.every and _at_step_boundary(trainer, batch_idx)
                and trainer.global_step % self.every == 0 and trainer.global_step < trainer.max_steps):
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.batch is not None and trainer.global_step >= trainer.max_steps:
            self.log_grid(trainer, pl_module)

    def log_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        spec = pl_module.spec
        if spec.sample_fn is None or not trainer.is_global_zero:
            return
        if type(trainer.strategy).__name__.startswith("FSDP"):
            return  # sharded weights: sampling on one rank is not possible
        from model_code.viz import image_grid
        rng_state = torch.get_rng_state()
        with pl_module.eval_weights() as model, torch.no_grad():
            images, captions = spec.sample_fn(model, self.batch, pl_module.ctx, self.n, self.seed)
        torch.set_rng_state(rng_state)
        pil = [_to_pil(im) for im in images.float().cpu()]
        grid = image_grid(pil, captions + [""] * (len(pil) - len(captions)) if captions else None,
                          cols=min(self.n, len(pil)), cell=96, caption_lines=4)
        name = f"samples/step_{trainer.global_step:06d}.png"
        logger = next((lg for lg in trainer.loggers if type(lg).__name__ == "MLFlowLogger"), None)
        if logger is not None:
            logger.experiment.log_image(logger.run_id, grid, artifact_file=name)
        elif self.out_dir:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "grid.png")
                grid.save(path)
                storage.put_file(path, storage.join(self.out_dir, name))
        self.logged.append(name)


def _to_pil(image: torch.Tensor):
    from PIL import Image
    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


# --------------------------------------------------------------------------- log line
class LogLine(Callback):
    """One line per `log_every` steps on stderr, for logs without a terminal (pods, CI):
    `[dvae] step 120/400 loss 0.1234 psnr 21.3 | 512 samples/s`."""

    def __init__(self, part: str, log_every: int, throughput: Throughput | None = None):
        self.part, self.every, self.throughput = part, int(log_every), throughput

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = _log_step(trainer, batch_idx, self.every)
        if step is None:
            return
        metrics = {k[len("train/"):]: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("train/") and k != "train/lr"}
        parts = [f"[{self.part}] step {step}/{trainer.max_steps}"]
        parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
        perf = self.throughput.latest if self.throughput else {}
        if "perf/samples_per_s" in perf:
            parts.append(f"| {perf['perf/samples_per_s']:.1f} samples/s")
        if "perf/mfu" in perf:
            parts.append(f"MFU {100 * perf['perf/mfu']:.1f}%")
        print(" ".join(parts), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- history file
class History(Callback):
    """Every `log_every` steps (and the last) on rank 0: one row of `step` and the logged training
    metrics (train/*, and perf/* where measured at that step), appended to `uri`, a CSV beside the
    trained part (`history.csv`), which DVC plots and a person can read without MLflow, and sent to
    the loggers (MLflow) at the same step number.

    Not Lightning's CSVLogger: it deletes an existing metrics.csv when a run starts in a non-empty
    directory, so a resumed run would lose the curve before the kill. Here a resumed run keeps the
    rows up to the restored step and drops any later ones (written after the last checkpoint), so
    the file matches an uninterrupted run's. Rows are buffered and the file rewritten (whole) every
    `flush_every` rows, whenever a checkpoint is written (so a SIGKILL loses no row the checkpoint
    covers) and at the end, which suits an object store (no append).

    The loggers get the rows from here, not through Lightning's self.log, which logs a step's
    metrics under the step before (9, 19, ... for history.csv's 10, 20). A resumed run does not
    send again the rows its MLflow run already has (logged after the checkpoint, before a kill)."""

    def __init__(self, uri: str, log_every: int, throughput: Throughput | None = None, flush_every: int = 20):
        self.uri, self.every, self.throughput, self.flush_every = uri, int(log_every), throughput, int(flush_every)
        self.rows: list[dict[str, float]] = []
        self.pending = 0
        self.logged_upto = 0   # the last step the loggers already have

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows, self.pending, self.logged_upto = [], 0, 0
        if not trainer.is_global_zero:
            return
        start = trainer.global_step
        if storage.exists(self.uri):
            import csv
            import io
            for row in csv.DictReader(io.StringIO(storage.read_text(self.uri))):
                if int(float(row["step"])) <= start:
                    self.rows.append({k: float(v) for k, v in row.items() if v != ""})
        if start:
            self.logged_upto = _logged_upto(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = _log_step(trainer, batch_idx, self.every)
        if step is None:
            return
        row = {"step": float(step), **{k: float(v) for k, v in trainer.callback_metrics.items()
                                        if k.startswith("train/") and v.numel() == 1}}
        if self.throughput and self.throughput.measured_at == step:
            row.update(self.throughput.latest)
        if step > self.logged_upto:
            for logger in trainer.loggers:
                logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        self.rows.append(row)
        self.pending += 1
        if self.pending >= self.flush_every:
            self.flush()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict) -> None:
        if trainer.is_global_zero:
            self.flush()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.flush()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero:
            self.flush()

    def flush(self) -> None:
        import csv
        import io
        if not self.rows:
            return
        keys = ["step"] + sorted({k for r in self.rows for k in r} - {"step"})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (int(v) if k == "step" else f"{v:.6g}") for k, v in r.items()})
        write_text_atomic(self.uri, buf.getvalue())
        self.pending = 0


def _logged_upto(trainer: pl.Trainer) -> int:
    """The last step whose train/loss the run's MLflow run already holds (0 without MLflow)."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "MLFlowLogger" and logger.run_id:
            history = logger.experiment.get_metric_history(logger.run_id, "train/loss")
            return max((int(m.step) for m in history), default=0)
    return 0
