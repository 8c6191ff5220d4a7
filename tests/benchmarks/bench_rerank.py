"""What reranking by the captioner costs a request, against reranking by CLIP, in the same run.

    python tests/benchmarks/bench_rerank.py [--bundle DIR ...] [--prompts 8] [--candidates 4] [--reps 5] [--threads 1]

`sampling.<recipe>.rerank: captioner` (docs/results.md, "Session 24") keeps the candidates with the
highest log p(prompt | image) under the bundle's CoCa captioner: one image encoding per candidate
and one teacher-forced decoder pass per candidate and caption kind, where CLIP reranking needs one
image embedding per candidate and one text embedding per prompt. This times, for the same prompts
(single-object prompts rewritten by the serving rewriter, as a request is) and seeds:

- the whole request, `Generator.generate(prompts, n=1, candidates=C)`, with each reranker
  (interleaved repetitions, medians; the ratio captioner / CLIP is the cost a user sees);
- the judging alone (`Generator.judge` over the P x C candidates), with each reranker.

Without --bundle it builds tiny untrained bundles of both recipes with a captioner (the cost
depends on the architecture, not on the weights); with --bundle, each given bundle (it must hold
a captioner). Not collected by pytest (bench_*.py); results go to docs/benchmarks.md
("## Reranking by the captioner").
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)
from model_code.generate import Generator  # noqa: E402
from model_code.serve.rewrite import BuiltinRewriter  # noqa: E402
from tests.benchmarks.single_object import prompts as single_object_prompts  # noqa: E402

RERANKERS = ("clip", "captioner")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(gen: Generator, texts: list[str], candidates: int, reps: int) -> dict:
    """Median seconds of a whole generate() call and of judging its candidates, per reranker.
    The rerankers alternate within each repetition, so drift in the machine's load hits both."""
    def request(name):
        return lambda: gen.generate(texts, n=1, candidates=candidates, seed=0, rerank=name)
    with torch.no_grad():
        images = gen.sample(texts, candidates, torch.Generator().manual_seed(0), gen.sampling)  # (P * C, 3, H, W)
    per_image = [p for p in texts for _ in range(candidates)]

    def judging(name):
        return lambda: gen.judge(images, per_image, {**gen.sampling, "rerank": name})
    for name in RERANKERS:                                                   # warm-up
        request(name)()
        judging(name)()
    req = {name: [] for name in RERANKERS}
    jud = {name: [] for name in RERANKERS}
    for _ in range(reps):
        for name in RERANKERS:
            req[name].append(timed(request(name)))
            jud[name].append(timed(judging(name)))
    return {"request": {k: statistics.median(v) for k, v in req.items()},
            "judge": {k: statistics.median(v) for k, v in jud.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", default=[], help="a bundle with a captioner (repeatable)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per request")
    ap.add_argument("--candidates", type=int, default=4, help="candidates per prompt")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (as a server's torch_threads)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    bundles = list(args.bundle)
    if not bundles:
        from tests.bundles import tiny_bundle
        work = tempfile.mkdtemp(prefix="bench-rerank-")
        for recipe in ("dalle", "unclip"):
            torch.manual_seed(0)
            sampling = {"upsample": False} if recipe == "unclip" else {}
            bundles.append(tiny_bundle(work, recipe, captioner=True, **sampling))

    asked = single_object_prompts()[::80 // args.prompts][:args.prompts]
    rw = BuiltinRewriter()
    texts = [rw.rewrite(p, seed=k).text for k, p in enumerate(asked)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}, {args.threads} intra-op thread(s); "
          f"{args.prompts} rewritten single-object prompts x {args.candidates} candidates, n=1, "
          f"median of {args.reps}")
    print()
    print("| bundle | request, CLIP rerank (s) | request, captioner rerank (s) | request ratio | "
          "judging, CLIP (ms per candidate) | judging, captioner (ms per candidate) | judging ratio |")
    print("|---|---|---|---|---|---|---|")
    for path in bundles:
        gen = Generator.load(path)
        if gen.captioner is None:
            raise SystemExit(f"{path}: this bundle has no captioner part")
        m = measure(gen, texts, args.candidates, args.reps)
        r, j = m["request"], m["judge"]
        per = 1e3 / (len(texts) * args.candidates)
        name = f"{os.path.basename(os.path.normpath(path))} ({gen.recipe}, {gen.image_size} px)"
        print(f"| {name} | {r['clip']:.2f} | {r['captioner']:.2f} | {r['captioner'] / r['clip']:.2f} | "
              f"{j['clip'] * per:.1f} | {j['captioner'] * per:.1f} | {j['captioner'] / j['clip']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
