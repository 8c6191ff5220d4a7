"""Lightning overhead: steps/s of the Lightning training path (PartModule + make_trainer + the
callbacks train_part uses) against a plain PyTorch loop of the same model, data and optimiser, in
the same process, per part. The ratio lightning/plain steps/s is what docs/benchmarks.md records
(1.0 = no overhead), from wall time and, steadier on a shared CPU box, from this process's CPU
time.

    python tests/benchmarks/bench_train.py                       # every part, tiny preset, CPU
    python tests/benchmarks/bench_train.py --parts dvae,clip --steps 50 --batch-size 64
    python tests/benchmarks/bench_train.py --data runs/x/data    # an existing ingested dataset

Both paths read the same stream (model_code.data.loader), run `spec.prepare` then
`model.forward_loss`, backward, AdamW + LR schedule (+ EMA where the part keeps one), under the same
precision (autocast bf16 on a GPU). Timing: the steps after `--warmup` steps, with one device
synchronise at each end of the window (no per-step sync in either path). The two paths alternate
`--repeats` times and the best time of each is kept, so background load hits both alike. The
Lightning path runs without a logger (MLflow I/O is not Lightning's cost) and with
checkpoints only after the timed window.
Dependencies (tokenizer, dVAE, CLIP) are built from the preset, untrained: speed does not care.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from pytorch_lightning.callbacks import Callback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model_code.config import load_preset  # noqa: E402
from model_code.data.loader import make_dataset, make_loader  # noqa: E402
from model_code.train import callbacks as cb  # noqa: E402
from model_code.train.factory import make_trainer, resolve_precision  # noqa: E402
from model_code.train.module import EMA, PartModule, lr_lambda, make_optimizer, resolve_train_config  # noqa: E402
from model_code.train.parts import Context, get_part  # noqa: E402

NETWORK_PARTS = ("dvae", "transformer", "clip", "captioner", "prior", "decoder", "upsampler")


def dataset_for(preset: dict, data: str | None, workdir: str) -> str:
    if data:
        return data
    from model_code.data.ingest import ingest
    from model_code.data.synth import synthesize
    size = int(preset["data"]["size"])
    src, out = os.path.join(workdir, "src"), os.path.join(workdir, "data")
    synthesize(src, n=512, size=size, seed=0, curated_fraction=0.25)
    ingest(src, out, size=size, shard_size=256, progress=False)
    return out


def build_deps(cfg: dict, data: str, workdir: str) -> dict:
    from model_code.data.dataset import manifest
    from model_code.text.blend import tokenizer_texts
    from model_code.text.tokenizer import TextTokenizer
    t = cfg["tokenizer"]
    tok = TextTokenizer.train(tokenizer_texts(manifest(data).to_dict("records")),
                              vocab_size=t["vocab_size"], max_len=t["max_text_tokens"])
    deps = {"tokenizer": tok}
    deps["dvae"] = get_part("dvae").build(cfg, deps).eval()
    deps["clip"] = get_part("clip").build(cfg, deps).eval()
    return deps


def loader_text(spec, model, deps: dict):
    """What train_part gives make_loader: captions tokenized in the loader (PartSpec.text_len)."""
    return (deps["tokenizer"], spec.text_len(model.config, deps)) if spec.text_len is not None else None


def clocks() -> tuple[float, float]:
    """(wall, this process's CPU time). On a shared CPU box the CPU time is the steadier measure
    of the work a path does: other processes' load stretches wall time, not our CPU seconds."""
    return time.perf_counter(), time.process_time()


class WindowTimer(Callback):
    """(wall, CPU) seconds of optimizer steps (warmup, warmup + steps], synchronised at both ends."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.t0, self.seconds = warmup, steps, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step in (self.warmup, self.warmup + self.steps):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            if step == self.warmup:
                self.t0 = clocks()
            else:
                now = clocks()
                self.seconds = (now[0] - self.t0[0], now[1] - self.t0[1])


def run_lightning(spec, cfg, tcfg, deps, dataset, warmup: int, steps: int, workdir: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model = spec.build(cfg, {d: deps[d] for d in spec.deps})
    t = {**tcfg, "max_steps": warmup + steps, "progress": "none", "sample_every": 0}
    ctx = Context(deps=deps, model_config=model.config, train=t)
    A, B = t["accumulate_grad_batches"], t["batch_size"]
    module = PartModule(spec, model, ctx, lambda sb, ss, r, w: make_loader(
        dataset, B, t["max_steps"] * A + 1, start_batch=sb, start_sample=ss, rank=r, world_size=w,
        num_workers=t["num_workers"], pin_memory=torch.cuda.is_available(), text=loader_text(spec, model, deps)))
    timer = WindowTimer(warmup, steps)
    callbacks = [timer, cb.Throughput(t["log_every"], t["peak_flops"]),
                 cb.ObjectStoreCheckpoint(os.path.join(workdir, "ckpt"), 0, 1),
                 cb.SampleGrid(0, t["sample_n"], t["seed"])]
    trainer = make_trainer(t, callbacks, logger=None, model=model)
    trainer.fit(module)
    return timer.seconds


def run_plain(spec, cfg, tcfg, deps, dataset, warmup: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = spec.build(cfg, {d: deps[d] for d in spec.deps}).to(dev).train()
    for d in deps.values():
        if isinstance(d, torch.nn.Module):
            d.to(dev)
    t = tcfg
    opt = make_optimizer(model, t, dev)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda({**t, "max_steps": warmup + steps}, model))
    ema = EMA(model, t["ema_decay"]) if t["ema_decay"] else None
    ctx = Context(deps=deps, model_config=model.config, train=t)
    bf16 = resolve_precision(t["precision"]) == "bf16-mixed"
    loader = make_loader(dataset, t["batch_size"], warmup + steps, num_workers=t["num_workers"],
                         pin_memory=dev.type == "cuda", text=loader_text(spec, model, deps))
    # train.compile: the same torch.compile of forward_loss the LightningModule does (train/module.py)
    loss_fn = torch.compile(model.forward_loss) if t.get("compile") else model.forward_loss
    t0 = None
    for step, batch in enumerate(loader):
        if step == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = clocks()
        batch = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        ctx.step = step
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(**spec.prepare(batch, ctx))["loss"]
        loss.backward()
        if t["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    now = clocks()
    return now[0] - t0[0], now[1] - t0[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(NETWORK_PARTS))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--data", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    import logging
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    cfg = load_preset(a.preset)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    with tempfile.TemporaryDirectory() as work:
        data = dataset_for(cfg, a.data, work)
        deps = build_deps(cfg, data, work)
        rows = []
        for name in a.parts.split(","):
            spec = get_part(name)
            tcfg = resolve_train_config(cfg, name, spec)
            if a.batch_size:
                tcfg["batch_size"] = a.batch_size
            dataset = make_dataset(data, caption_policy=spec.caption_policy and tcfg["caption_policy"],
                                   seed=0, with_scene=spec.with_scene)
            plain, light = [], []
            for r in range(a.repeats):  # alternate, keep the best of each
                plain.append(run_plain(spec, cfg, tcfg, deps, dataset, a.warmup, a.steps))
                light.append(run_lightning(spec, cfg, tcfg, deps, dataset, a.warmup, a.steps,
                                           os.path.join(work, f"{name}-{r}")))
            wall_p, wall_l = min(w for w, _ in plain), min(w for w, _ in light)
            cpu_p, cpu_l = min(c for _, c in plain), min(c for _, c in light)
            row = {"part": name, "batch_size": tcfg["batch_size"],
                   "plain_steps_per_s": a.steps / wall_p, "lightning_steps_per_s": a.steps / wall_l,
                   "ratio": wall_p / wall_l, "cpu_ratio": cpu_p / cpu_l}
            rows.append(row)
            print(f"{name:12s} batch {row['batch_size']:4d}  plain {row['plain_steps_per_s']:8.2f} steps/s  "
                  f"lightning {row['lightning_steps_per_s']:8.2f} steps/s  ratio {row['ratio']:.3f}  "
                  f"(CPU-time ratio {row['cpu_ratio']:.3f})", flush=True)
    print(f"\n({device}, preset {a.preset}, {a.steps} timed steps, best of {a.repeats})")
    print("| part | batch | plain steps/s | Lightning steps/s | Lightning / plain (wall) | (CPU time) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['batch_size']} | {r['plain_steps_per_s']:.2f} | "
              f"{r['lightning_steps_per_s']:.2f} | {r['ratio']:.3f} | {r['cpu_ratio']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": device, "preset": a.preset, "steps": a.steps, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
