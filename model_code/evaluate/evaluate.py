"""Evaluate a generation bundle on held-out prompts: metrics, per-category tables, sample grids,
a Markdown report, and one MLflow run with all of it.

    evaluate("runs/x/bundle-dalle", "data/shapes-ds", "runs/x/eval")   # -> {metrics, per_category, report, run_id}

The `easel evaluate BUNDLE --dataset D --out O [--json]` command is this call. Settings come from
the preset's `evaluate:` section (DEFAULTS below document the keys); arguments override them.

Flat metric names (what gates and MLflow see):
    pf.exact, pf.constraint              prompt following, macro mean over categories
    pf.geneval                           Shapes-GenEval overall: mean of GenEval's six tasks (geneval.py)
    pf.invalid                           share of images that are not Shapes scenes (shapes.invalid_reason)
    pf.blob, pf.<category>.blob          share of the drawn objects the oracle reads as blobs (no world shape)
    pf.<category>.exact_seen / _heldout  compositions seen in training / held out, apart (GenEval tasks)
    pf.<category>.exact / .constraint    per category; pf.<category>.<kind>_acc per constraint kind
    clip_score                           mean image-prompt cosine under the bundle's CLIP
    diversity                            mean pairwise CLIP-embedding distance among one prompt's samples
    fd_clip                              Frechet distance to held-out real images in CLIP space
    dvae.psnr, dvae.perplexity, dvae.dead_codes, dvae.used_fraction    (dalle bundles)
    captioner.short.recall, ... .hallucination, ...                    (datasets with recaption sidecars)
    chance.pf.exact, chance.pf.<category>.constraint, ...   the same prompts scored against random
                                         real held-out scenes: a model that draws perfectly but ignores
                                         the prompt (the floor prompt following must clear)
    n_prompts, n_images, seconds
Note: the bundle reranks its candidates with the same CLIP that clip_score uses, so clip_score
rises with `candidates` by construction; prompt following is judged by the oracle, independently.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Sequence

import numpy as np

from model_code import storage
from model_code.evaluate import metrics as M
from model_code.evaluate.sample_cache import SAMPLES_DIR, SampleCache, bundle_fingerprint
from model_code.evaluate.prompts import (DEFAULT_CATEGORIES, PROMPTS_FILE, by_category, heldout_prompts,
                                         read_prompts, write_prompts)

log = logging.getLogger(__name__)

EVAL_EXPERIMENT = "easel-evaluate"
DEFAULTS: dict[str, Any] = {
    "n_per_category": 8,       # held-out prompts per category
    "samples_per_prompt": 4,   # images kept per prompt (>= 2 for diversity)
    "seed": 0,
    "batch_size": 16,          # prompts per Generator.generate call
    "heldout_images": 256,     # real held-out images for FD and the dVAE metrics
    "captions": 2000,          # recaption sidecar rows scored for the captioner metrics
    "grid_prompts": 3,         # prompts per category in the report's sample grids
    "categories": list(DEFAULT_CATEGORIES),
    # evaluate as served: each prompt goes through the built-in rewriter (DALL-E 3's prompt
    # upsampling, serve/rewrite.py) before generation, and is judged as the user wrote it
    "rewrite": True,
}


def eval_config(preset: str | dict = "tiny", **overrides) -> dict[str, Any]:
    """DEFAULTS <- the preset's evaluate: section <- non-None overrides."""
    if isinstance(preset, str):
        from model_code.config import load_preset
        preset = load_preset(preset)
    section = preset.get("evaluate") or {}
    from model_code.models.pretrained import known_keys
    known_keys(section, "evaluate", set(DEFAULTS) | {"gates", "margin", "tolerance"})   # the gates' keys
    cfg = {**DEFAULTS, **{k: v for k, v in section.items() if k not in ("gates", "margin")},
           **{k: v for k, v in overrides.items() if v is not None}}
    cfg["name"] = preset.get("name", "custom")
    for key in ("n_per_category", "samples_per_prompt", "batch_size", "heldout_images", "grid_prompts"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"evaluate.{key}: must be a positive integer, got {cfg[key]!r}")
    return cfg


# ---------------------------------------------------------------- the steps
def check_dataset(dataset: str, size: int, heldout: bool = True) -> None:
    """Refuse a dataset a bundle cannot be judged on (ValueError naming what is wrong): one with no
    accepted records (an empty or all-quarantined ingest), with no held-out images (`heldout`: the
    real images FD and the dVAE metrics compare with, and the floor), or whose images are not the
    bundle's size (`size`: Generator.data_size). Training refuses the same size mismatch: its
    scenes, prompts and real images would not be the ones the bundle learned."""
    from model_code.data.dataset import manifest, read_meta
    man = manifest(dataset)
    if len(man) == 0:
        meta = read_meta(dataset)
        counts = ", ".join(f"{k} {meta[k]}" for k in ("input", "quarantined", "duplicates") if k in meta)
        raise ValueError(f"dataset: {dataset} holds no accepted records{f' ({counts})' if counts else ''}: "
                         f"nothing to evaluate against; ingest a source with valid records")
    sizes = sorted({(int(w), int(h)) for w, h in zip(man["width"], man["height"])}) \
        if {"width", "height"} <= set(man.columns) else []
    if sizes and sizes != [(size, size)]:
        shown = ", ".join(f"{w}x{h}" for w, h in sizes[:3])
        raise ValueError(f"dataset: {dataset}'s images are {shown}, but the bundle's are {size}x{size}; "
                         f"evaluate on a dataset ingested at the bundle's size (easel data ingest --size {size})")
    if heldout and ("split" not in man.columns or not (man["split"] == "heldout").any()):
        raise ValueError(f"dataset: {dataset} has no held-out images (none of its {len(man)} records is in "
                         f"split 'heldout'); evaluation needs them: ingest with --heldout-fraction > 0")


def load_prompts(dataset: str, out: str, cfg: dict, prompts: str | list | None = None) -> tuple[list[dict], str]:
    """(prompt set, where it came from): given (a list or a prompts.json URI), the dataset's own
    prompts.json when it was made with the same settings, or a new held-out set. The set used is
    always saved as out/prompts.json."""
    target = storage.join(out, PROMPTS_FILE)
    meta = {"dataset": dataset, "seed": cfg["seed"], "n_per_category": cfg["n_per_category"],
            "categories": list(cfg["categories"])}
    if isinstance(prompts, list):
        write_prompts(prompts, target, {**meta, "source": "given"})
        return prompts, "given by the caller"
    if isinstance(prompts, str):
        ps, m = read_prompts(prompts)
        write_prompts(ps, target, {**m, "source": prompts})
        return ps, prompts
    beside = storage.join(dataset, PROMPTS_FILE)
    if storage.exists(beside):
        ps, m = read_prompts(beside)
        if (m.get("seed"), m.get("n_per_category"), m.get("categories")) == (
                cfg["seed"], cfg["n_per_category"], list(cfg["categories"])):
            write_prompts(ps, target, {**m, "source": beside})
            return ps, beside
    ps = heldout_prompts(dataset, cfg["n_per_category"], cfg["seed"], cfg["categories"], out=target)
    return ps, f"held out from {dataset} (seed {cfg['seed']})"


def generate_images(generator, prompts: Sequence[dict], samples: int, seed: int, batch_size: int,
                    candidates: int | None = None, sampling: dict | None = None, rewrite: bool = False,
                    cache: SampleCache | None = None) -> list:
    """Generator.generate over the prompt set in batches; batch b uses seed + b (deterministic).
    rewrite: each prompt is first rewritten by the serving rewriter (seeded), as a served request
    is; the prompt dicts get the text that was drawn as "revised". cache: each batch is written
    there as it is drawn and read back on a re-run (a killed evaluation or table resumes)."""
    sampling = dict(sampling or {})
    candidates = candidates if candidates is not None else sampling.pop("candidates", None)
    sampling.pop("candidates", None)
    out = []
    texts = [p["text"] for p in prompts]
    if rewrite:
        from model_code.serve.rewrite import BuiltinRewriter
        rw = BuiltinRewriter()
        texts = [rw.rewrite(t, seed=seed).text for t in texts]
        for p, t in zip(prompts, texts):
            p["revised"] = t
    t0 = last = time.time()
    for b, i in enumerate(range(0, len(texts), batch_size)):
        chunk = texts[i:i + batch_size]
        key = {"kind": "generate", "texts": chunk, "n": samples, "candidates": candidates, "seed": seed + b,
               "sampling": sampling}
        out += (cache or SampleCache()).generated(key, lambda: generator.generate(
            chunk, n=samples, candidates=candidates, seed=seed + b, **sampling))
        if time.time() - last > 20 or len(out) == len(texts):  # a line every ~20 s on long evaluations
            last = time.time()
            log.info("evaluate: generated %d/%d prompts x %d samples (%.0f s)", len(out), len(texts), samples,
                     last - t0)
    return out


def compute_metrics(generator, prompts: Sequence[dict], generated: Sequence, real_images: Sequence | None,
                    batch_size: int = 64) -> tuple[dict[str, float], dict[str, dict], dict]:
    """Prompt following, CLIP score, diversity and FD of generated images ->
    (flat metrics, per_category table, prompt-following detail incl. per-image rows)."""
    images = [g.images for g in generated]
    pf = M.prompt_following(prompts, images)
    flat: dict[str, float] = {f"pf.{k}": v for k, v in pf["overall"].items()}
    per = {c: dict(v) for c, v in pf["per_category"].items()}
    for c, v in per.items():
        for k, x in v.items():
            if not k.startswith("images"):
                flat[f"pf.{c}.{k}"] = x

    all_images = [im for ims in images for im in ims]
    all_texts = [p["text"] for p, ims in zip(prompts, images) for _ in ims]
    emb = M.embed_images(generator, all_images, batch_size)                  # (N, D)
    txt = np.concatenate([generator.embed_texts(all_texts[i:i + batch_size]).double().cpu().numpy()
                          for i in range(0, len(all_texts), batch_size)])    # (N, D)
    cos = (emb * txt).sum(1)                                                 # (N,)
    bounds = np.cumsum([0] + [len(ims) for ims in images])                  # prompt i: rows bounds[i]:bounds[i+1]
    groups = [emb[a:b] for a, b in zip(bounds, bounds[1:])]
    flat["clip_score"] = float(cos.mean())
    div = M.diversity(groups)
    if div is not None:
        flat["diversity"] = div
    for cat, v in per.items():
        idx = [i for i, p in enumerate(prompts) if p.get("category", "prompt") == cat]
        v["clip_score"] = float(np.concatenate([cos[bounds[i]:bounds[i + 1]] for i in idx]).mean())
        d = M.diversity([groups[i] for i in idx])
        if d is not None:
            v["diversity"] = d
    if real_images:
        real = M.embed_images(generator, list(real_images), batch_size)
        flat["fd_clip"] = M.frechet_distance(emb, real)
    flat["n_prompts"] = float(len(prompts))
    flat["n_images"] = float(len(all_images))
    return flat, per, pf


def _add_chance(flat: dict, per: dict, prompts: Sequence[dict], records: Sequence, cfg: dict) -> None:
    """The text-ignoring floor on the same prompts (see metrics.chance_following), from the true
    scene graphs of the held-out records (datasets without scene graphs have none)."""
    scenes = [json.loads(r["scene"]) if isinstance(r.get("scene"), str) else r.get("scene") for _, _, r in records]
    scenes = [s for s in scenes if s]
    if not scenes:
        return
    chance = M.chance_following(prompts, scenes, cfg["samples_per_prompt"], cfg["seed"])
    # real scenes are always valid and never blobs: their "invalid" and "blob" would be constant 0s
    flat.update({f"chance.pf.{k}": v for k, v in chance["overall"].items() if k not in ("invalid", "blob")})
    for cat, v in chance["per_category"].items():
        flat[f"chance.pf.{cat}.exact"], flat[f"chance.pf.{cat}.constraint"] = v["exact"], v["constraint"]
        if cat in per:
            per[cat]["chance_constraint"] = v["constraint"]


# ---------------------------------------------------------------- report
def write_report(out: str, title: str, header: dict, flat: dict, per: dict, prompts: Sequence[dict],
                 generated: Sequence, grid_prompts: int) -> tuple[str, list[str]]:
    """report.md + samples-<category>.png + per_category.csv + metrics.json under `out`."""
    from model_code.viz import titled_rows
    files = []
    grids = []
    for cat, ps in by_category([dict(p, _i=i) for i, p in enumerate(prompts)]).items():
        rows = [(p["text"], generated[p["_i"]].images) for p in ps[:grid_prompts]]
        name = f"samples-{cat}.png"
        _save_png(titled_rows(rows), storage.join(out, name))
        grids.append((cat, name, [t for t, _ in rows]))
        files.append(name)
    cols = ["exact", "constraint", "chance_constraint", "clip_score", "diversity", "object_acc", "count_acc",
            "relation_acc", "background_acc", "images"]
    csv = ["category," + ",".join(cols)]
    for cat, v in per.items():
        csv.append(cat + "," + ",".join("" if v.get(c) is None else f"{v[c]:.4f}" if isinstance(v[c], float)
                                        else str(v[c]) for c in cols))
    storage.write_text(storage.join(out, "per_category.csv"), "\n".join(csv) + "\n")
    storage.write_text(storage.join(out, "metrics.json"), json.dumps(flat, indent=1, sort_keys=True))
    files += ["per_category.csv", "metrics.json"]

    md = [f"# {title}", ""]
    md += [f"- **{k}**: `{v}`" for k, v in header.items()]
    if "chance.pf.exact" not in flat:   # no scene graphs in the dataset: not the Shapes world
        md += ["", "> **This dataset holds no Shapes-world scene graphs.** Prompt following below is Shapes-world "
                   "prompts read back by the Shapes oracle: it says nothing about this dataset's own domain. "
                   "Read the CLIP score and FD against its held-out images instead."]
    md += ["", "## Prompt following per category", "",
           "Oracle parse of each kept image scored against the prompt's constraints (exact = all met); "
           "chance = random real held-out images scored against the same prompts.", "",
           "| category | exact | constraints met | chance | object | count | relation | background | CLIP score "
           "| diversity | images |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cat, v in per.items():
        md.append(f"| {cat} | " + " | ".join(_fmt(v.get(c)) for c in
                                             ("exact", "constraint", "chance_constraint", "object_acc", "count_acc",
                                              "relation_acc", "background_acc", "clip_score", "diversity",
                                              "images")) + " |")
    md += _geneval_section(per, flat)
    md += ["", "## All metrics", "", "| metric | value |", "|---|---|"]
    md += [f"| {k} | {_fmt(v)} |" for k, v in sorted(flat.items())]
    md += ["", "## Samples", ""]
    for cat, name, texts in grids:   # the grid's titles are shortened: the full prompts, in order
        md += [f"### {cat}", "", f"![{cat}]({name})", ""] + [f"{i + 1}. {t}" for i, t in enumerate(texts)] + [""]
    path = storage.join(out, "report.md")
    storage.write_text(path, "\n".join(md) + "\n")
    return path, files + ["report.md"]


GATE_SECTION = ("<!-- easel-gate -->", "<!-- /easel-gate -->")


def add_gate_to_report(report: str, record: dict) -> str:
    """Write a gate's verdict on this evaluation (gates.run_gate's record) into its report.md,
    above the metrics it judged; a later gate of the same evaluation replaces it. Returns report."""
    from model_code.registry.registry import gate_markdown
    model = record.get("model") or {}
    name = str(model.get("name", "the model"))
    notes = [f"- {n}" for n in record.get("notes") or []]
    start, end = GATE_SECTION
    block = "\n".join([start, f"## Gate: {name} version {model.get('version', '?')}", "",
                       *gate_markdown(record, name), *(["Notes:", "", *notes, ""] if notes else []), end])
    text = storage.read_text(report)
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:   # after the title and settings: the verdict is what a reader of a gated evaluation wants first
        at = text.find("\n## ")
        text = text + "\n" + block + "\n" if at < 0 else text[:at + 1] + block + "\n\n" + text[at + 1:]
    storage.write_text(report, text)
    return report


def _geneval_section(per: dict, flat: dict) -> list[str]:
    """Shapes-GenEval beside the published GenEval table (another domain, a perfect judge)."""
    from model_code.evaluate import geneval
    tasks = [t for t in geneval.TASKS if t in per]
    if not tasks:
        return []
    md = ["", "## Shapes-GenEval", "",
          "GenEval's six tasks and rules (Ghosh et al. 2023), in the Shapes world, judged by the oracle. "
          "Seen = the prompt completely describes some training image; held out = no training image.", "",
          "| task | score | seen | held out | not a Shapes scene | objects drawn as blobs |",
          "|---|---|---|---|---|---|"]
    for t in tasks:
        v = per[t]
        md.append(f"| {t} | {_fmt(v['exact'])} | {_fmt(v.get('exact_seen'))} ({v.get('images_seen', 0)}) | "
                  f"{_fmt(v.get('exact_heldout'))} ({v.get('images_heldout', 0)}) | {_fmt(v.get('invalid'))} | "
                  f"{_fmt(v.get('blob'))} |")
    md.append(f"| **overall** (mean of six) | {_fmt(flat.get('pf.geneval'))} | | | | |")
    md += ["", "Published GenEval overall (natural images, detector + CLIP judge; not comparable in value): "
           + ", ".join(f"{k} {v:.2f}" for k, v in geneval.PUBLISHED.items()) + "."]
    return md


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _save_png(img, uri: str) -> None:
    import io
    buf = io.BytesIO()
    img.save(buf, "PNG")
    storage.write_bytes(uri, buf.getvalue())


# ---------------------------------------------------------------- resuming
RESULT_FILE = "evaluation.json"


def _finished(out: str, key: dict) -> dict | None:
    """The result of an evaluation already finished in `out` with exactly these inputs, or None."""
    path = storage.join(out, RESULT_FILE)
    if not storage.exists(path):
        return None
    try:
        done = json.loads(storage.read_text(path))
    except (ValueError, OSError):
        return None
    return done.get("result") if done.get("key") == key else None


# ---------------------------------------------------------------- the entry point
def evaluate(bundle: str, dataset: str, out: str, preset: str | dict = "tiny",
             n_per_category: int | None = None, samples_per_prompt: int | None = None, seed: int = 0,
             candidates: int | None = None, sampling: dict | None = None, mlflow: bool = True,
             prompts: str | list | None = None, categories: Sequence[str] | None = None,
             device: str | None = None) -> dict[str, Any]:
    """Evaluate a bundle on held-out prompts of `dataset`; write the report under `out`.
    device: where the bundle runs (default: the GPU when there is one).

    Returns {"metrics": flat dict, "per_category": {category: {...}}, "report": report.md URI,
    "run_id": MLflow run id or None, "out": out, "inputs": the settings + run_id, which is what
    gates.run_gate(name, version, metrics, preset, inputs=...) records as the gate's inputs}."""
    from model_code.generate import Generator, check_sampling
    t0 = time.time()
    cfg = eval_config(preset, n_per_category=n_per_category, samples_per_prompt=samples_per_prompt,
                      seed=seed, categories=list(categories) if categories else None)
    gen = Generator.load(bundle, device)
    sampling = check_sampling(gen.recipe, sampling)
    candidates = candidates if candidates is not None else sampling.pop("candidates", None)
    if candidates is not None:
        check_sampling(gen.recipe, {"candidates": candidates})
    check_dataset(dataset, gen.data_size)
    if not storage.is_remote(out):
        os.makedirs(storage.local_path(out), exist_ok=True)
    # a re-run (the pipeline resumed after a kill) reuses a finished evaluation of the same inputs
    content = bundle_fingerprint(bundle)
    key = json.loads(json.dumps({"bundle": bundle, "content": content, "dataset": dataset,
                                 "cfg": cfg, "candidates": candidates, "sampling": sampling, "prompts": prompts,
                                 "mlflow": mlflow}, sort_keys=True, default=str))
    done = _finished(out, key)
    if done is not None:
        log.info("evaluate: reusing the finished evaluation in %s", out)
        return done
    ps, prompt_source = load_prompts(dataset, out, cfg, prompts)
    if not ps:
        raise ValueError(f"dataset: no held-out prompts could be made from {dataset}")
    log.info("evaluate: %d prompts x %d samples with %s", len(ps), cfg["samples_per_prompt"], bundle)
    samples = SampleCache(storage.join(out, SAMPLES_DIR), fingerprint=content)   # a killed evaluation resumes here
    generated = generate_images(gen, ps, cfg["samples_per_prompt"], cfg["seed"], cfg["batch_size"],
                                candidates, sampling, rewrite=bool(cfg["rewrite"]), cache=samples)
    records = M.heldout_records(dataset, cfg["heldout_images"], cfg["seed"])
    real = [im for _, im, _ in records]
    flat, per, pf = compute_metrics(gen, ps, generated, real)
    _add_chance(flat, per, ps, records, cfg)
    if "chance.pf.exact" not in flat:
        log.warning("evaluate: %s holds no Shapes scene graphs; prompt following is scored on Shapes-world "
                    "prompts, which says nothing about this dataset's domain", dataset)
    if gen.recipe == "dalle" and real:
        flat.update({f"dvae.{k}": v for k, v in M.dvae_metrics(gen.dvae, real).items()})
    cap = M.captioner_metrics(dataset, cfg["captions"], cfg["seed"])
    if cap:
        flat.update({f"captioner.{k}": v for k, v in cap.items()})
    flat["n_real_images"] = float(len(real))
    flat["seconds"] = time.time() - t0

    settings = {"bundle": bundle, "dataset": dataset, "recipe": gen.recipe,
                "preset": cfg["name"], "n_per_category": cfg["n_per_category"],
                "samples_per_prompt": cfg["samples_per_prompt"],
                "candidates": candidates or gen.sampling.get("candidates"), "seed": cfg["seed"],
                "sampling": json.dumps({**gen.sampling, **sampling}, sort_keys=True, default=str),
                "dataset_version": gen.meta.get("lineage", {}).get("dataset_version"),
                "prompts": prompt_source, "rewrite": bool(cfg["rewrite"])}
    report, _ = write_report(out, f"Evaluation of {bundle}", settings, flat, per, ps, generated,
                             cfg["grid_prompts"])
    storage.write_text(storage.join(out, "rows.json"), json.dumps(pf["rows"], indent=0, default=str))
    samples.clear()   # only a resume needs them; the report's grids keep what people look at
    run_id = None
    if mlflow:
        import pandas as pd
        table = pd.DataFrame([{"category": c, **v} for c, v in per.items()])
        from model_code.tracking import log_run
        run_id = log_run(EVAL_EXPERIMENT, f"evaluate {os.path.basename(bundle.rstrip('/'))}", settings, flat,
                         {"per_category.json": table,
                          "per_image.json": pd.DataFrame([{k: v for k, v in r.items() if k != "kinds"}
                                                          for r in pf["rows"]])},
                         artifacts=out, tags={"easel.recipe": gen.recipe, "easel.bundle": bundle},
                         datasets={dataset: "evaluation"})
    from model_code.generate import bundle_content_id
    result = {"metrics": flat, "per_category": per, "report": report, "run_id": run_id, "out": out,
              # bundle_content: a gate checks that the version it gates holds these very bytes
              "inputs": {**settings, "run_id": run_id, "bundle_content": bundle_content_id(bundle)}}
    storage.write_text(storage.join(out, RESULT_FILE), json.dumps({"key": key, "result": result}, default=str))
    return result
