"""Shapes-world oracle benchmark: exact scene match and parse time, clean and blur+JPEG, per size.

    .venv/bin/python tests/benchmarks/bench_oracle.py [--n 2000] [--sizes 32,64,128,256]
        [--workers 2] [--seed 0] [--write docs/benchmarks.md]

For every size, --n seeded random scenes (shapes.sample_scene) are rendered and parsed twice:
as rendered ("clean") and after the issue's degradation ("blur+JPEG": PIL GaussianBlur(0.8), then
JPEG quality 75 and back). Reported: exact scene match (background + multiset of shape, colour,
size, cell), exact objects among all true objects, the kinds of object errors, and the oracle's
CPU time per image (time.process_time inside the worker: a shared machine does not distort it).
Targets from the issue: clean >= 99.5 % at every size, blur+JPEG >= 95 %.
Also the caption parser on the generator's captions (precision / recall / hallucinations).
With --write, the section "## Shapes-world oracle" of the given markdown file is replaced (or
appended); nothing else in the file changes. Not collected by pytest (bench_*.py).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


from model_code.data import shapes  # noqa: E402
from model_code.data.oracle import match_objects, parse_image, scene_match  # noqa: E402
from model_code.text.caption_parser import score_caption  # noqa: E402
from tests.unit.data.test_oracle import blur_jpeg  # noqa: E402  (the degradation the oracle test uses)

SECTION = "## Shapes-world oracle"
TARGETS = {"clean": 0.995, "blur+JPEG": 0.95}


def one(job: tuple[int, int, int]) -> dict:
    """Render scene i at `size`, parse it clean and degraded; per condition: match, errors, CPU s."""
    seed, size, i = job
    scene = shapes.sample_scene(random.Random(f"{seed}/{size}/{i}"), size)
    img = shapes.render(scene)
    out = {}
    for cond, x in (("clean", img), ("blur+JPEG", blur_jpeg(img))):
        t = time.process_time()
        pred = parse_image(x)
        cpu = time.process_time() - t
        m = match_objects(pred, scene)
        errs = Counter()
        for p in m["pairs"]:
            for a in ("shape", "color", "size", "cell"):
                if not p[a]:
                    t_o, p_o = scene["objects"][p["truth"]], pred["objects"][p["pred"]]
                    errs[a] += 1
                    errs[f"{a}: {t_o[a]} -> {p_o[a]}"] += 1
        exact_truth = {p["truth"] for p in m["pairs"] if p["exact"]}
        for ti, t_o in enumerate(scene["objects"]):   # per colour: objects, and objects got wrong
            errs[f"n_by_color {t_o['color']}"] += 1
            errs[f"wrong_by_color {t_o['color']}"] += ti not in exact_truth
        errs["missing"] += len(m["missing"])
        errs["extra"] += len(m["extra"])
        errs["background"] += pred["background"] != scene["background"]
        out[cond] = {"exact": scene_match(pred, scene), "objects": len(scene["objects"]),
                     "exact_objects": sum(p["exact"] for p in m["pairs"]), "errors": errs, "cpu": cpu}
    return out


def run_oracle(n: int, sizes: list[int], workers: int, seed: int) -> list[dict]:
    rows = []
    with mp.get_context("fork").Pool(workers) as pool:
        for size in sizes:
            t = time.perf_counter()
            res = pool.map(one, [(seed, size, i) for i in range(n)], chunksize=16)
            wall = time.perf_counter() - t
            for cond in TARGETS:
                rs = [r[cond] for r in res]
                errs = sum((r["errors"] for r in rs), Counter())
                n_obj = sum(r["objects"] for r in rs)
                cpus = sorted(r["cpu"] for r in rs)
                rows.append({"size": size, "condition": cond, "n": n,
                             "exact": sum(r["exact"] for r in rs) / n,
                             "object_acc": sum(r["exact_objects"] for r in rs) / n_obj,
                             "n_objects": n_obj, "errors": errs,
                             "cpu_ms_mean": 1000 * sum(cpus) / n, "cpu_ms_p50": 1000 * cpus[n // 2],
                             "wall_s": wall})
            print(f"{size:4d}px  " + "  ".join(f"{r['condition']} {r['exact']:.4f}" for r in rows[-2:])
                  + f"  ({wall:.0f} s)", flush=True)
    return rows


def run_captions(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    kinds = {"long_caption": [], "curated_caption": [], "short_caption": [], "alt_text": []}
    t = time.process_time()
    n_texts = 0
    for _ in range(n):
        scene = shapes.sample_scene(rng, 64)
        texts = {"long_caption": shapes.long_caption(scene),
                 "curated_caption": shapes.curated_caption(scene, rng),
                 "short_caption": shapes.short_caption(scene), "alt_text": shapes.alt_text(scene, rng)}
        for k, text in texts.items():
            kinds[k].append(score_caption(text, scene))
            n_texts += 1
    cpu_ms = 1000 * (time.process_time() - t) / n_texts
    rows = []
    for k, ss in kinds.items():
        stated = sum(s["n_stated"] for s in ss)
        true_stated = stated - sum(s["hallucination"] for s in ss)
        rows.append({"captions": k, "n": len(ss),
                     "precision": true_stated / stated if stated else 0.0,   # micro, over stated facts
                     "recall": sum(s["recall"] for s in ss) / len(ss),
                     "hallucinations": sum(s["hallucination"] for s in ss) / len(ss),
                     "hallucination_free": sum(s["hallucination"] == 0 for s in ss) / len(ss),
                     "cpu_ms": cpu_ms})
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} cores {platform.machine()} ({cpu}), Python {platform.python_version()}, "
            f"load average {load:.1f} at the end of the run, {time.strftime('%Y-%m-%d')}")


def top_errors(errs: Counter, k: int = 3) -> str:
    detail = [(e, c) for e, c in errs.most_common()
              if (":" in e or e in ("missing", "extra", "background")) and c]
    return ", ".join(f"{e} ({c})" for e, c in detail[:k]) or "-"


def markdown(rows: list[dict], cap: list[dict], args) -> str:
    lines = [SECTION, "",
             f"`tests/benchmarks/bench_oracle.py --n {args.n} --sizes {','.join(map(str, args.sizes))}` "
             "(data/oracle.py `parse_image` + `scene_match`). Per size, the same seeded random scenes "
             "are parsed as rendered (clean) and after `GaussianBlur(0.8)` + JPEG quality 75 "
             "(blur+JPEG). Exact = background and the multiset of (shape, colour, size, cell) all "
             "right; objects = exactly right objects / true objects. CPU ms is the oracle's own "
             "process time per image (rendering and JPEG excluded), which a busy machine does not "
             "inflate. Canvases above 64 px are box-filtered to 64 px first (an integer factor for "
             "128 and 256 px, so the rendering model stays exact).", "",
             f"Machine: {machine()}; {args.workers} worker processes.", "",
             "| size | condition | scenes | exact match | target | met | objects exact | "
             "object errors (most frequent) | CPU ms / image (mean, p50) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = TARGETS[r["condition"]]
        lines.append(f"| {r['size']} | {r['condition']} | {r['n']} | {r['exact']:.2%} | "
                     f">= {target:.1%} | {'yes' if r['exact'] >= target else '**no**'} | "
                     f"{r['object_acc']:.2%} | {top_errors(r['errors'])} | "
                     f"{r['cpu_ms_mean']:.1f}, {r['cpu_ms_p50']:.1f} |")
    lines += notes(rows)
    lines += ["", "Caption parser on the generator's captions (`caption_parser.score_caption` against "
              "`shapes.facts`; precision micro-averaged over stated facts, recall and hallucinations "
              "per caption):", "",
              "| captions | n | precision | recall | hallucinations / caption | hallucination-free |",
              "|---|---|---|---|---|---|"]
    for c in cap:
        lines.append(f"| {c['captions']} | {c['n']} | {c['precision']:.3f} | {c['recall']:.3f} | "
                     f"{c['hallucinations']:.3f} | {c['hallucination_free']:.1%} |")
    lines += ["", "Recall counts complete facts only (`shapes.facts`'s tuples): a short caption names "
              "colours and shapes but no size, cell or background, so its facts are true but partial "
              "and none is recalled.", "",
              f"Parsing and scoring one caption takes {cap[0]['cpu_ms']:.2f} ms of CPU on average."]
    return "\n".join(lines) + "\n"


def notes(rows: list[dict]) -> list[str]:
    """A line per missed target, saying where the errors are and why."""
    out = []
    for r in rows:
        if r["exact"] >= TARGETS[r["condition"]]:
            if r["exact"] < 1.0:
                out.append(f"- {r['size']} px {r['condition']}: target met, {r['exact']:.1%} exact "
                           f"({r['object_acc']:.1%} of objects). Remaining errors: "
                           f"{top_errors(r['errors'], 5)}.")
            continue
        line = (f"- Missed: {r['size']} px {r['condition']}, {r['exact']:.1%} exact "
                f"({r['object_acc']:.1%} of objects). Errors: {top_errors(r['errors'], 5)}.")
        if r["condition"] == "blur+JPEG":
            S = r["size"]
            e = r["errors"]
            rates = {c: e[f"wrong_by_color {c}"] / e[f"n_by_color {c}"]
                     for c in shapes.COLORS if e[f"n_by_color {c}"]}
            worst = sorted(rates, key=rates.get, reverse=True)[:2]
            overall = sum(e[f"wrong_by_color {c}"] for c in rates) / r["n_objects"]
            line += (f" At {S} px the degradation is relatively {256 // S}x stronger than at 256 px "
                     f"(sigma 0.8 px = sigma {0.8 * 256 / S:.1f} px at 256), and JPEG's 4:2:0 chroma "
                     f"subsampling keeps colour at {S // 2}x{S // 2}: a small object "
                     f"({0.18 * S:.1f} px wide) spans about {0.09 * S:.0f} chroma samples, so a small "
                     "star's points are gone and its blob has the area of a circle, square or cross. "
                     "Objects parsed wrong, by true colour: "
                     + ", ".join(f"{c} {rates[c]:.0%}" for c in worst)
                     + f" (all colours {overall:.0%}); "
                     "yellow's contrast with the gray, beige and light blue backgrounds is almost all "
                     "chroma. The clean target holds at this size.")
        out.append(line)
    return ([""] + out) if out else []


def write_section(path: str, text: str) -> None:
    """Replace this benchmark's section (up to the next "## " heading) or append it."""
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    with open(path, "w") as f:
        f.write(new)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="scenes per size")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128, 256])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--captions", type=int, default=2000, help="scenes for the caption-parser table")
    ap.add_argument("--write", metavar="MARKDOWN", help="replace the section in this file")
    args = ap.parse_args(argv)
    if args.n < 1 or not args.sizes:
        raise SystemExit("--n must be >= 1 and --sizes non-empty")
    rows = run_oracle(args.n, args.sizes, args.workers, args.seed)
    cap = run_captions(args.captions, args.seed)
    text = markdown(rows, cap, args)
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
