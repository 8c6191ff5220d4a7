"""The prepared device check (issue "models that draw", item 9): one script for a short GPU lease.

    python scripts/gpu_check.py --out OUT                      # on the GPU machine (about 8 min)
    python scripts/gpu_check.py --out /tmp/x --preset tiny --n 600 --budget 240 --scale 0.1   # a CPU dry run

In order, each phase recorded in OUT/results.json as soon as it ends (a phase that fails records
its traceback and the next one still runs):
  1. the device and its bf16 matmul peak;
  2. a Shapes dataset at the preset's size (synth + ingest on every core);
  3. every part's training step at the preset (bench_mfu.measure: steps/s, FLOPs, MFU);
  4. a learning check, the DALL-E recipe: tokenizer, dVAE, CLIP, transformer through the real
     training path (train_part, MLflow off) on the scene-graph captions, each given a share of
     the time budget turned into steps with the rate phase 3 measured; then the real evaluation
     (evaluate(), on the GPU): dVAE hard-code PSNR and codebook use, Shapes-GenEval per category;
  5. the same for unCLIP (prior + decoder, no upsampler) if the budget has room left.
Schedules that are written in steps (dVAE beta/tau/lr, warm-ups) are scaled to the steps a phase
gets, in the proportions the tiny preset measured (docs/results.md, "The dVAE"). OUT also gets
log.txt and evals.tar.gz (the evaluation reports and sample grids, the dVAE's sample grid).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "benchmarks"))

import torch  # noqa: E402

T0 = time.time()


class Check:
    def __init__(self, out: str, budget: float):
        self.out, self.budget = out, budget
        self.results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "phases": {}}
        os.makedirs(out, exist_ok=True)
        self.logf = open(os.path.join(out, "log.txt"), "a")

    def log(self, msg: str) -> None:
        line = f"[{time.time() - T0:6.1f} s] {msg}"
        print(line, flush=True)
        self.logf.write(line + "\n")
        self.logf.flush()

    def left(self) -> float:
        return self.budget - (time.time() - T0)

    def save(self) -> None:
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1, default=str)

    def phase(self, name: str, fn, *args, **kw):
        t = time.time()
        self.log(f"== {name}")
        try:
            value = fn(*args, **kw)
            self.results["phases"][name] = {"ok": True, "seconds": round(time.time() - t, 1), "result": value}
        except Exception:  # noqa: BLE001 - record it; the next phase may still tell us something
            tb = traceback.format_exc()
            self.log(tb)
            value = None
            self.results["phases"][name] = {"ok": False, "seconds": round(time.time() - t, 1), "error": tb[-3000:]}
        self.save()
        return value


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(), memory_gib=round(p.total_memory / 2**30, 1),
                   sms=p.multi_processor_count)
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:  # noqa: BLE001
            env["nvidia_smi"] = repr(e)
    for mod in ("pytorch_lightning", "diffusers", "transformers", "tokenizers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            env[mod] = repr(e)
    return env


def peak() -> dict:
    from bench_mfu import matmul_peak
    gpu = torch.cuda.is_available()
    out = {"fp32_tflops": matmul_peak(torch.float32) / 1e12}
    if gpu:
        out["bf16_tflops"] = matmul_peak(torch.bfloat16) / 1e12
    return out


def dataset(work: str, cfg: dict, n: int) -> dict:
    from model_code.data.ingest import ingest
    from model_code.data.synth import synthesize
    d = cfg["data"]
    src, data = os.path.join(work, "src"), os.path.join(work, "data")
    workers = max(1, (os.cpu_count() or 2) - 1)
    synthesize(src, n=n, size=int(d["size"]), seed=0, curated_fraction=float(d["curated_fraction"]), workers=workers)
    r = ingest(src, data, size=int(d["size"]), shard_size=int(d["shard_size"]), workers=workers,
               heldout_fraction=max(0.05, float(d["heldout_fraction"])), progress=False)
    return {"path": data, "accepted": r["accepted"], "quarantined": r["quarantined"], "duplicates": r["duplicates"]}


def steps_for(rate: float | None, seconds: float, lo: int = 100, hi: int = 50000) -> int:
    """Steps that fit `seconds` at `rate` steps/s, with room for the Lightning path's start-up."""
    if not rate:
        return lo
    return int(min(hi, max(lo, 0.8 * rate * seconds)))


def dvae_schedule(steps: int) -> dict:
    """Overrides: the tiny preset's proportions (500 steps: beta warm-up 100, tau 350, lr 500, lr warm-up 50)."""
    return {"dvae": {"beta_warmup_steps": max(1, steps // 5), "tau_anneal_steps": max(1, int(0.7 * steps))},
            "train": {"dvae": {"lr_anneal_steps": steps, "lr_warmup_steps": steps // 10}}}


def train(ck: Check, part: str, cfg: dict, data: str, work: str, steps: int, deps: dict,
          extra: dict | None = None) -> dict:
    from model_code.config import deep_merge
    from model_code.train.run import train_part
    over = {"train": {"steps": {part: steps}, part: {"ckpt_every": 10 ** 6, "log_every": max(10, steps // 20),
                                                      "progress": "log"}}}
    if extra:
        over = deep_merge(over, extra)
    ck.log(f"train {part}: {steps} steps")
    s = train_part(part, cfg, data=data, out=os.path.join(work, part), deps=deps, overrides=over, mlflow=False)
    keep = {k: s.get(k) for k in ("steps", "seconds")}
    keep["metrics"] = {k: v for k, v in (s.get("metrics") or {}).items() if isinstance(v, (int, float))}
    ck.log(f"train {part}: {json.dumps(keep, default=str)[:600]}")
    return keep


def recipe(ck: Check, recipe_name: str, cfg: dict, data: str, work: str, rates: dict, seconds: dict,
           n_per_category: int) -> dict:
    from model_code.evaluate.evaluate import evaluate
    from model_code.generate import save_bundle
    out: dict = {"train": {}}
    parts = {"tokenizer": os.path.join(work, "tokenizer"), "clip": os.path.join(work, "clip")}
    if not os.path.exists(os.path.join(parts["tokenizer"], "tokenizer.json")):
        from model_code.train.run import train_part
        train_part("tokenizer", cfg, data=data, out=parts["tokenizer"], mlflow=False)
    order = ["clip", "dvae", "transformer"] if recipe_name == "dalle" else ["clip", "prior", "decoder"]
    from model_code.train.parts import get_part
    for part in order:
        if part == "clip" and os.path.exists(os.path.join(parts["clip"], "model.safetensors")):
            continue   # trained by the first recipe
        steps = steps_for(rates.get(part), seconds[part])
        extra = {}
        if part == "dvae":
            extra = dvae_schedule(steps)
        if part == "decoder":
            # x0 prediction learns in hundreds of steps; eps needs far more (tiny, docs/results.md)
            extra = {"decoder": {"prediction_type": "sample"}}
        deps = {d: os.path.join(work, d) for d in get_part(part).deps}
        out["train"][part] = train(ck, part, cfg, data, work, steps, deps, extra)
        parts[part] = os.path.join(work, part)
    bundle = os.path.join(work, f"bundle-{recipe_name}")
    save_bundle(bundle, recipe_name, parts, preset=cfg.get("name", ""), config=cfg,
                sampling={"upsample": False} if recipe_name == "unclip" else None)
    t = time.time()
    ev = evaluate(bundle, data, os.path.join(work, f"eval-{recipe_name}"), preset=cfg,
                  n_per_category=n_per_category, samples_per_prompt=2, mlflow=False)
    m = ev["metrics"]
    out["eval_seconds"] = round(time.time() - t, 1)
    out["metrics"] = {k: v for k, v in m.items() if k.startswith(("pf.", "dvae.", "clip_score", "chance.pf.exact",
                                                                  "chance.pf.single", "fd_clip", "n_"))
                      and not k.endswith(("_seen", "_heldout"))}
    ck.log(f"{recipe_name}: GenEval {m.get('pf.geneval')}, single object {m.get('pf.single_object.exact')}, "
           f"invalid {m.get('pf.invalid')}, dvae.psnr {m.get('dvae.psnr')}")
    return out


def pack(work: str, out: str) -> list[str]:
    names = []
    with tarfile.open(os.path.join(out, "evals.tar.gz"), "w:gz") as tar:
        for d in sorted(os.listdir(work)):
            p = os.path.join(work, d)
            if d.startswith("eval-"):
                for f in os.listdir(p):
                    if f.endswith((".png", ".md", ".csv", ".json")) and f != "rows.json":
                        tar.add(os.path.join(p, f), arcname=f"{d}/{f}")
                        names.append(f"{d}/{f}")
            samples = os.path.join(p, "samples")
            if os.path.isdir(samples):
                for f in os.listdir(samples):
                    tar.add(os.path.join(samples, f), arcname=f"{d}-samples/{f}")
                    names.append(f"{d}-samples/{f}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="scratch directory (default: OUT/../gpu-check-work)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--n", type=int, default=20000, help="Shapes images to synthesise")
    ap.add_argument("--budget", type=float, default=450, help="seconds for the whole check")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every training phase's seconds")
    ap.add_argument("--mfu-steps", type=int, default=20)
    ap.add_argument("--n-per-category", type=int, default=16)
    ap.add_argument("--phases", default="mfu,dalle,unclip", help="which of mfu, dalle, unclip to run")
    ap.add_argument("--rates", default=None, help="JSON {part: steps/s} to use instead of the mfu phase's")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True   # evaluation runs in fp32: TF32 matmuls on the GPU
    torch.backends.cudnn.allow_tf32 = True
    from model_code.config import load_preset
    ck = Check(a.out, a.budget)
    work = a.work or os.path.join(os.path.dirname(os.path.abspath(a.out)), "gpu-check-work")
    os.makedirs(work, exist_ok=True)
    cfg = load_preset(a.preset)
    ck.results["preset"], ck.results["args"] = a.preset, vars(a)
    ck.results["environment"] = ck.phase("environment", environment)
    ck.phase("peak", peak)
    data = ck.phase("data", dataset, work, cfg, a.n)
    if data is None:
        return
    parts = ["dvae", "transformer", "clip", "captioner", "prior", "decoder", "upsampler"]
    from bench_mfu import measure
    phases = a.phases.split(",")
    rows = (ck.phase("mfu", measure, parts, cfg, 5, a.mfu_steps, ck.log) or []) if "mfu" in phases else []
    rates = {r["part"]: r["steps_per_s"] for r in rows}
    rates.update(json.loads(a.rates) if a.rates else {})
    if rows:
        from bench_mfu import table
        ck.log("\n" + table(rows))
    s = a.scale
    dalle_s = {"clip": 20 * s, "dvae": 60 * s, "transformer": 120 * s}
    if "dalle" in phases:
        ck.phase("dalle", recipe, ck, "dalle", cfg, data["path"], work, rates, dalle_s, a.n_per_category)
    unclip_s = {"prior": 25 * s, "decoder": 75 * s}
    need = sum(unclip_s.values()) + 60
    if "unclip" not in phases:
        pass
    elif ck.left() > need:
        ck.phase("unclip", recipe, ck, "unclip", cfg, data["path"], work, rates, unclip_s, a.n_per_category)
    else:
        ck.log(f"unclip skipped: {ck.left():.0f} s left, {need:.0f} s needed")
        ck.results["phases"]["unclip"] = {"ok": False, "skipped": f"{ck.left():.0f} s left of the budget"}
    ck.phase("pack", pack, work, a.out)
    ck.results["total_seconds"] = round(time.time() - T0, 1)
    ck.save()
    ck.log("done")


if __name__ == "__main__":
    main()
