"""A dataset's DVC hash (model_code.data.version.dir_md5, now dvc-data's hash_file + Tree) against
the hashlib loop Easel wrote by hand before it.

    python tests/benchmarks/bench_version.py DATASET_DIR [--repeats 5]

Both hash the same files (version._files) and must agree; the baseline is the old code (md5 of
each file in 1 MiB chunks, then the md5 of the sorted [{md5, relpath}] JSON), measured in the
same run. Prints seconds per hash of each (CPU and wall; the page cache is warm after the first
pass) and their ratio. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from model_code.data import version  # noqa: E402


def hashlib_baseline(dataset_dir: str) -> str:
    entries = []
    for rel in version._files(dataset_dir):
        h = hashlib.md5()
        with open(os.path.join(dataset_dir, *rel.split("/")), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        entries.append({"md5": h.hexdigest(), "relpath": rel})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def timed(fn, repeats: int) -> tuple[str, float, float]:
    out = fn()  # warm the page cache for both
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.process_time() - c0) / repeats, (time.perf_counter() - w0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    files = version._files(a.dataset)
    size = sum(os.path.getsize(os.path.join(a.dataset, *r.split("/"))) for r in files)
    ours = timed(lambda: version.dir_md5(a.dataset), a.repeats)
    ref = timed(lambda: hashlib_baseline(a.dataset), a.repeats)
    print(f"{a.dataset}: {len(files)} files, {size / 2**20:.1f} MiB, {platform.processor() or platform.machine()}")
    print(f"dvc-data: {ours[1]:.3f} s CPU / {ours[2]:.3f} s wall per hash; hashlib loop: {ref[1]:.3f} / "
          f"{ref[2]:.3f}; ratio {ours[1] / ref[1]:.2f} (CPU) {ours[2] / ref[2]:.2f} (wall); "
          f"same hash: {ours[0] == ref[0]}")


if __name__ == "__main__":
    main()
