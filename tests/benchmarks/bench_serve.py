"""Serving latency and throughput on loopback, against in-process generation in the same run.

    python tests/benchmarks/bench_serve.py [--recipe unclip] [--steps 4] [--requests 24] [--threads 1]

A tiny untrained bundle (the `tiny` preset) is served by `easel serve` in a subprocess on
127.0.0.1 twice: with the full request path (prompt safety with CLIP concept matching, rewrite,
image safety, PNG + C2PA signing) and bare (no policies, no provenance: transport, validation,
batching and PNG only). Clients POST /v1/images/generations (n=1, no seed, so the dynamic batcher
may merge them) from 1, 4 and 16 threads with keep-alive connections, a bounded number of
requests each round. The baseline, in this process with the same torch thread count, is
Generator.generate for one prompt at a time (latency) and for 16 prompts at once (throughput).
A refused request (n=0, answered 400 after validation) times the HTTP + framework path alone,
the figure KServe's own benchmark puts at 2-3 ms for a trivial model.

Not collected by pytest (bench_*.py); results go to docs/benchmarks.md ("## Serving").
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import httpx
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)
from model_code.generate import Generator  # noqa: E402
from tests.bundles import tiny_bundle  # noqa: E402
from tests.servers import free_port  # noqa: E402

PROMPTS = ["a red circle", "two blue squares on a beige background", "a small green star to the left of a black cross",
           "three shapes", "a large yellow triangle at the top", "a purple circle above an orange square"]
BARE = {"rewrite": {"enabled": False}, "provenance": {"enabled": False},
        "safety": {"blocklist": [], "patterns": [], "prompt_threshold": 1.01, "image_threshold": 1.01}}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def start_server(bundle: str, work: str, threads: int, overrides: dict | None, tag: str):
    port = free_port()
    env = dict(os.environ, EASEL_HOME=os.path.join(work, "home"), EASEL_SERVE_TORCH_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
    if overrides:
        path = os.path.join(work, f"serve-{tag}.json")
        with open(path, "w") as f:
            json.dump(overrides, f)
        env["EASEL_SERVE_CONFIG"] = path
    log = open(os.path.join(work, f"server-{tag}.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "easel", "serve", "--model", bundle, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: see {log.name}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: see {log.name}")
        time.sleep(0.2)


def load_round(url: str, concurrency: int, requests: int) -> dict:
    """`requests` POSTs from `concurrency` threads; per-request latency and overall throughput."""
    clients = [httpx.Client(timeout=600) for _ in range(concurrency)]
    lat: list[float] = []

    def worker(k: int) -> None:
        c = clients[k]
        for i in range(k, requests, concurrency):
            t0 = time.perf_counter()
            r = c.post(url + "/v1/images/generations", json={"prompt": PROMPTS[i % len(PROMPTS)], "n": 1})
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:300]}")

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "rps": requests / wall, "n": requests}


def batch_stats(url: str) -> tuple[float, float]:
    """(requests, Generator.generate calls) so far, from the easel_batch_requests histogram."""
    from prometheus_client.parser import text_string_to_metric_families
    got = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in fam.samples:
            if s.name in ("easel_batch_requests_sum", "easel_batch_requests_count"):
                got[s.name] = s.value
    return got.get("easel_batch_requests_sum", 0.0), got.get("easel_batch_requests_count", 0.0)


def refused_latency(url: str, k: int = 50) -> float:
    with httpx.Client(timeout=60) as c:
        lat = []
        for _ in range(k):
            t0 = time.perf_counter()
            assert c.post(url + "/v1/images/generations", json={"prompt": "a red circle", "n": 0}).status_code == 400
            lat.append(time.perf_counter() - t0)
    return pct(lat, 0.5)


def stage_costs(bundle: str, work: str, k: int = 20) -> dict[str, float]:
    """Median ms of each policy stage of one request, in process (EaselModel's own methods)."""
    import asyncio

    from model_code.serve.model import EaselModel
    from model_code.serve.records import ImageRequest, png_bytes
    from model_code.serve.provenance import ProvenanceInfo
    m = EaselModel("easel", bundle, config={"provenance": {"dev_dir": os.path.join(work, "c2pa")}})
    m.load()
    req = [ImageRequest(PROMPTS[1])]
    m.check_and_rewrite(req)
    image = asyncio.run(m.generate(req))[0].images[0].image
    png = png_bytes(image)
    stages = {"prompt safety (blocklist, patterns, CLIP text)": lambda: m.safety.check_prompts([PROMPTS[1]]),
              "rewrite (built-in)": lambda: m.rewriter.rewrite(PROMPTS[1], None),
              "image safety (CLIP image)": lambda: m.safety.check_images([image]),
              "PNG encode": lambda: png_bytes(image),
              "C2PA sign": lambda: m.signer.sign(png, ProvenanceInfo("easel", "1", prompt=PROMPTS[1]))}
    out = {}
    for name, fn in stages.items():
        fn()
        ts = []
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = pct(ts, 0.5) * 1e3
    m.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="unclip", choices=["unclip", "dalle"])
    ap.add_argument("--steps", type=int, default=4, help="prior and decoder steps (unclip)")
    ap.add_argument("--requests", type=int, default=24, help="requests per round (at least 2 x concurrency)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (server and baseline)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    work = tempfile.mkdtemp(prefix="bench-serve-")
    sampling = dict(candidates=1)
    if args.recipe == "unclip":
        sampling.update(prior_steps=args.steps, decoder_steps=args.steps, upsample=False)
    torch.manual_seed(0)
    bundle = tiny_bundle(work, args.recipe, **sampling)

    # ---- baseline: Generator.generate in this process
    gen = Generator.load(bundle)
    gen.generate(PROMPTS[:2], n=1, seed=0)                          # warm-up
    lat = []
    for i in range(args.requests):
        t0 = time.perf_counter()
        gen.generate([PROMPTS[i % len(PROMPTS)]], n=1, seed=i)
        lat.append(time.perf_counter() - t0)
    base = {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "rps": len(lat) / sum(lat)}
    t0 = time.perf_counter()
    reps = max(1, args.requests // 16)
    for r in range(reps):
        gen.generate([PROMPTS[i % len(PROMPTS)] for i in range(16)], n=1, seed=r)
    base16 = 16 * reps / (time.perf_counter() - t0)
    del gen

    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f}, torch {torch.__version__}, "
          f"{args.threads} intra-op thread(s); bundle: tiny {args.recipe}"
          + (f", {args.steps} prior + {args.steps} decoder steps, 32x32" if args.recipe == "unclip" else ", 32x32")
          + ", 1 candidate, n=1")
    print(f"in-process Generator.generate: 1 prompt p50 {base['p50'] * 1e3:.1f} ms, p95 {base['p95'] * 1e3:.1f} ms "
          f"({base['rps']:.2f} img/s); 16 prompts per call: {base16:.2f} img/s")
    costs = stage_costs(bundle, work)
    print("policy stages in process, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))
    print()
    print("| server | clients | requests | p50 ms | p95 ms | req/s | p50 / in-process p50 | req/s / in-process 1-prompt img/s | mean requests per generate call |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tag, over in (("full", None), ("bare", BARE)):
        proc, url = start_server(bundle, work, args.threads, over, tag)
        try:
            load_round(url, 1, 4)                                   # warm-up
            fixed = refused_latency(url)
            for c in args.concurrency:
                req0, calls0 = batch_stats(url)
                res = load_round(url, c, max(args.requests, 2 * c))
                req1, calls1 = batch_stats(url)
                print(f"| {tag} | {c} | {res['n']} | {res['p50'] * 1e3:.1f} | {res['p95'] * 1e3:.1f} | {res['rps']:.2f} "
                      f"| {res['p50'] / base['p50']:.2f} | {res['rps'] / base['rps']:.2f} | "
                      f"{(req1 - req0) / max(1.0, calls1 - calls0):.2f} |")
            print(f"| {tag} | refused request (400 after validation), p50 | | {fixed * 1e3:.1f} | | | | | |")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nwork dir: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
