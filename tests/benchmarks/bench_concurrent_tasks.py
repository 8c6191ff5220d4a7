"""Two tasks on one machine: torch threads per task when kfp.local runs a fan-out at once.

    python tests/benchmarks/bench_concurrent_tasks.py --work runs/local/work [--shards 2]

`easel run local` runs the recaption fan-out's groups (pipelines/lifecycle.recaption_stage) as
concurrent processes on the one machine. Each torch process starts as many OpenMP threads as the
machine has cores, so two of them put twice as many busy-waiting threads on the cores as there
are cores. This runs the real `easel recaption` over the same shards of a finished main job's
work directory (its dataset, captioner, tokenizer and CLIP) four ways and prints each way's wall
seconds and its ratio against the baseline, measured in the same run:

- baseline: one process with every core, all the shards in turn;
- fan-out, default threads: one process per shard at once, every core each (before session 27);
- fan-out, a share each: one process per shard at once, cores // processes threads each
  (`easel/lifecycle.local_threads`, what the local run passes as `recaption_threads`);
- fan-out, passive OpenMP waits: default threads, OMP_WAIT_POLICY=PASSIVE.

Not collected by pytest (bench_*.py); results go to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

EASEL = os.path.join(os.path.dirname(sys.executable), "easel")


def recaption(work: str, out: str, shards: list[str], threads: int, env: dict) -> subprocess.Popen:
    cmd = [EASEL, "recaption", os.path.join(work, "dataset"), "--out", out,
           "--captioner", os.path.join(work, "captioner"), "--tokenizer", os.path.join(work, "tokenizer"),
           "--clip", os.path.join(work, "clip"), "--threads", str(threads), "--quiet"]
    for s in shards:
        cmd += ["--shard", s]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def timed(work: str, tmp: str, name: str, groups: list[list[str]], threads: int, extra_env: dict) -> float:
    env = {**os.environ, **extra_env}
    t0 = time.perf_counter()
    procs = [recaption(work, os.path.join(tmp, f"{name}-{i}"), g, threads, env) for i, g in enumerate(groups)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{name}: easel recaption failed: {err.decode()[-400:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="a finished main job's work directory (runs/local/work)")
    ap.add_argument("--shards", type=int, default=2, help="shards, one process each in the fan-outs")
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    shards = [f"shard-{i:05d}" for i in range(a.shards)]
    share = max(1, cores // a.shards)
    ways = [("baseline: one process, every core, shards in turn", [shards], 0, {}),
            ("fan-out, default threads (every core each)", [[s] for s in shards], 0, {}),
            (f"fan-out, a share each ({share} thread(s))", [[s] for s in shards], share, {}),
            ("fan-out, default threads, OMP_WAIT_POLICY=PASSIVE", [[s] for s in shards], 0,
             {"OMP_WAIT_POLICY": "PASSIVE"})]
    tmp = tempfile.mkdtemp(prefix="bench-concurrent-")
    try:
        rows = []
        for i, (name, groups, threads, env) in enumerate(ways):
            rows.append((name, timed(a.work, tmp, f"w{i}", groups, threads, env)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"Machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}, "
          f"load average {load} at the end; {a.shards} shards of {a.work}\n")
    print("| way | wall s | vs baseline |\n|---|---|---|")
    base = rows[0][1]
    for name, s in rows:
        print(f"| {name} | {s:.1f} | {base / s:.2f}x |")


if __name__ == "__main__":
    main()
