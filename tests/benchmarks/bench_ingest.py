"""Ingest benchmark: throughput against a plain Pillow loop, and peak memory as input grows.

    .venv/bin/python tests/benchmarks/bench_ingest.py [--n 20000] [--n-small 5000]
        [--files 200] [--sizes 64,256] [--workers N] [--skip-memory] [--json]

1. Throughput, images/s per core, as a ratio against a sequential Pillow loop over the same
   files in the same run (open, convert to RGB, resize the shorter side, centre crop, save
   PNG). Ingest does that plus verify, EXIF, caption checks, sha256 + pHash + thumbnail,
   dedup, WebDataset shards and parquet tables, on `--workers` processes. "Per core" is per
   CPU-second actually used (parent + workers, from getrusage), which a shared machine does not
   distort; wall-clock rates are reported beside it. Two source sets: Shapes (256 px PNG, the
   built-in domain) and photo-like 640x480 JPEGs.
2. Peak RSS ingesting shapes://n=N (rendered in the workers) for N = --n-small and --n, each
   in a fresh process: the parent's peak and the largest worker's peak. Memory that grows with
   N is the dedup index and the key set (not images): (RSS(n) - RSS(n_small)) / (n - n_small).
Prints a markdown table (docs/benchmarks.md, "## Ingest") and, with --json, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from model_code.data.ingest import ingest  # noqa: E402
from model_code.data.synth import synthesize  # noqa: E402


def photo_like(seed: int, w: int = 640, h: int = 480) -> Image.Image:
    """Smooth random colour fields plus fine noise: JPEG statistics like a photo's, all distinct."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").resize((w, h), Image.BICUBIC)
    a = np.asarray(base, dtype=np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def make_photos(d: str, n: int) -> None:
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        photo_like(i).save(os.path.join(d, f"p{i:06d}.jpg"), quality=90)
        with open(os.path.join(d, f"p{i:06d}.txt"), "w") as f:
            f.write(f"photo number {i}")


def baseline(files: list[str], size: int, out_dir: str) -> tuple[float, float]:
    """The plain loop, one process: (wall seconds, CPU seconds) for all files."""
    os.makedirs(out_dir, exist_ok=True)
    t, c = time.perf_counter(), time.process_time()
    for i, path in enumerate(files):
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.LANCZOS)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
        im.save(os.path.join(out_dir, f"{i:06d}.png"))
    return time.perf_counter() - t, time.process_time() - c


def cpu_all() -> float:
    """CPU seconds of this process and its finished children (the ingest workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def image_files(d: str) -> list[str]:
    out = []
    for root, _, names in os.walk(d):
        out += [os.path.join(root, n) for n in names if n.endswith((".png", ".jpg"))]
    return sorted(out)


def throughput(tmp: str, n_files: int, sizes: list[int], workers: int) -> list[dict]:
    sets = {"shapes 256px PNG": os.path.join(tmp, "shapes"), "photo 640x480 JPEG": os.path.join(tmp, "photos")}
    synthesize(sets["shapes 256px PNG"], n=n_files, size=256, seed=0, workers=workers)
    make_photos(sets["photo 640x480 JPEG"], n_files)
    # warm-up: the first Arrow table built from Python objects imports pandas (~1 s, once per
    # process); a fresh CLI run pays it once, the steady-state rate below does not
    ingest("shapes://n=4,size=32", os.path.join(tmp, "warm"), size=32, workers=1, progress=False)
    rows = []
    for name, src in sets.items():
        files = image_files(src)
        n = len(files)
        for size in sizes:
            best = {}
            for rep in range(2):  # best of two: the machine is shared
                bw, bc = baseline(files, size, os.path.join(tmp, f"base-{size}-{rep}"))
                out = os.path.join(tmp, f"ing-{name[:5]}-{size}-{rep}")
                t, c = time.perf_counter(), cpu_all()
                res = ingest(src, out, size=size, workers=workers, progress=False)
                iw, ic = time.perf_counter() - t, cpu_all() - c
                for k, v in (("bw", bw), ("bc", bc), ("iw", iw), ("ic", ic)):
                    best[k] = min(best.get(k, float("inf")), v)
            rows.append({"set": name, "size": size, "images": n, "workers": workers,
                         # per core = per CPU-second actually spent (parent + workers for ingest)
                         "baseline_img_per_cpu_s": round(n / best["bc"], 1),
                         "ingest_img_per_cpu_s": round(n / best["ic"], 1),
                         "ratio_per_core": round(best["bc"] / best["ic"], 2),
                         "baseline_img_s": round(n / best["bw"], 1), "ingest_img_s": round(n / best["iw"], 1),
                         "ratio_wall": round(best["bw"] / best["iw"], 2),
                         "accepted": res["accepted"], "duplicates": res["duplicates"]})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


MEM_CODE = """
import json, resource, sys, time
from model_code.data.ingest import ingest
t = time.perf_counter()
r = ingest(sys.argv[1], sys.argv[2], size=int(sys.argv[3]), workers=int(sys.argv[4]), progress=False)
dt = time.perf_counter() - t
print(json.dumps({"input": r["input"], "accepted": r["accepted"], "duplicates": r["duplicates"],
                  "seconds": round(dt, 1),
                  "parent_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "worker_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}))
"""


def memory(tmp: str, ns: list[int], size: int, workers: int) -> list[dict]:
    rows = []
    for n in ns:
        out = os.path.join(tmp, f"mem-{n}")
        p = subprocess.run([sys.executable, "-c", MEM_CODE, f"shapes://n={n},size={size}", out, str(size),
                            str(workers)], cwd=ROOT, capture_output=True, text=True, check=True)
        row = {"n": n, "size": size, **json.loads(p.stdout.strip().splitlines()[-1])}
        row["img_s"] = round(n / row["seconds"], 1)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    return rows


def markdown(thr: list[dict], mem: list[dict], workers: int) -> str:
    load = os.getloadavg()[0]
    lines = [f"Machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
             f"ingest on {workers} worker processes, load average {load:.1f} at the end of the run; "
             f"{time.strftime('%Y-%m-%d')}.", ""]
    if thr:
        lines += ["| source set | out px | images | Pillow loop img/CPU-s | ingest img/CPU-s | "
                  "ratio per core | Pillow loop img/s (wall, 1 proc) | ingest img/s (wall) | ratio wall |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in thr:
            lines.append(f"| {r['set']} | {r['size']} | {r['images']} | {r['baseline_img_per_cpu_s']} | "
                         f"{r['ingest_img_per_cpu_s']} | {r['ratio_per_core']} | {r['baseline_img_s']} | "
                         f"{r['ingest_img_s']} | {r['ratio_wall']} |")
        lines.append("")
    if mem:
        lines += ["| shapes://n= | out px | seconds | img/s | duplicates | parent peak RSS MB | "
                  "largest worker peak RSS MB |", "|---|---|---|---|---|---|---|"]
        for r in mem:
            lines.append(f"| {r['n']} | {r['size']} | {r['seconds']} | {r['img_s']} | {r['duplicates']} | "
                         f"{r['parent_peak_mb']} | {r['worker_peak_mb']} |")
        if len(mem) >= 2:
            a, b = mem[0], mem[-1]
            per = (b["parent_peak_mb"] - a["parent_peak_mb"]) * 1024 * 1024 / max(b["n"] - a["n"], 1)
            lines += ["", f"Parent growth: {per:.0f} bytes per input image between n={a['n']} and n={b['n']} "
                          f"(dedup index + key set; images are never held)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="large Shapes set for peak memory (the issue asks 100k)")
    ap.add_argument("--n-small", type=int, default=5000, help="smaller set: memory should stay flat")
    ap.add_argument("--mem-size", type=int, default=64)
    ap.add_argument("--files", type=int, default=200, help="images per throughput set")
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        thr = [] if a.skip_throughput else throughput(tmp, a.files, [int(s) for s in a.sizes.split(",")], a.workers)
        mem = [] if a.skip_memory else memory(tmp, [a.n_small, a.n], a.mem_size, a.workers)
    print(markdown(thr, mem, a.workers))
    if a.json:
        print(json.dumps({"throughput": thr, "memory": mem}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
