"""The recaption job (DALL-E 3, "Step 2: Re-caption everything").

For every image of an ingested dataset, write a short and a long synthetic caption, sampled with
nucleus sampling (top_p 0.9, temperature 0.7), checked by the filters (length, repetition, CLIP
alignment), regenerated up to `max_retries` times when rejected, and replaced by the original
caption when every attempt fails ("regenerated or replaced with the original ground truth").

Output, under `out` (a directory or s3:// prefix); images are never rewritten:
    captions/shard-%05d.parquet   one sidecar per input shard, one row per record:
        key, original, short, long,
        {short,long}_verdict   "pass" (first sample) | "retry" (a later sample passed) | "fallback"
        {short,long}_reason    why the last rejected sample failed ("" when the first passed)
        {short,long}_retries   samples drawn after the first
        {short,long}_fallback  True when the caption is the original one
        {short,long}_tokens, original_tokens   caption lengths in the captioner's tokens
        {short,long}_clip, original_clip       image-caption cosine under the alignment CLIP (NaN: no CLIP)
      parquet metadata "easel": the captioner, the settings and the shard's timings and filter counts
    dataset.json                  (finalize) the new dataset version: parent (absolute path or URI)
                                  + its version id, a pointer to the parent's shards, counts; the
                                  version hashes the parent's content and the captions and verdicts
                                  (CONTENT_COLUMNS), not the sidecars' per-run metadata

Resumable per shard: a shard whose sidecar exists is not redone if the sidecar was written from the
same inputs (dataset contents, captioner, tokenizer, CLIP, settings, filters: its metadata's
"inputs"), and is an error naming what changed if not; a sidecar is written whole
(temporary name + rename locally, one PUT on S3), so a killed job never leaves half a sidecar.
`recaption(..., shards=[...])` handles a subset, so a pipeline can fan out over shards
(KFP ParallelFor) and call `finalize` once at the end.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import time
import zlib
from datetime import datetime, timezone
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from model_code import storage
from model_code.config import load_preset
from model_code.identity import changed, dataset_identity, part_identity
from model_code.recaption.captioner import KINDS, Captioner, CoCaCaptioner, images_to_tensor, load_captioner
from model_code.recaption.filters import CaptionFilters, ClipAlignment, Verdict

log = logging.getLogger(__name__)

FORMAT = "easel-recaption-v1"
DEFAULTS: dict[str, Any] = {
    "top_p": 0.9,          # DALL-E 3: nucleus sampling with top-p 0.9 ...
    "temperature": 0.7,    # ... and temperature 0.7, not beam search
    "max_retries": 2,
    "batch_size": 64,
    "seed": 0,
    "max_new_tokens": {},  # per kind caps, e.g. {"short": 40, "long": 200}; default: the model's room
}
VERDICTS = ("pass", "retry", "fallback")
SIDECAR_COLUMNS = ("key", "original", "original_tokens", "original_clip") + tuple(
    f"{kind}{suffix}" for kind in KINDS
    for suffix in ("", "_verdict", "_reason", "_retries", "_fallback", "_tokens", "_clip"))


# what a recaptioned dataset holds for its readers: a version id hashes these (finalize)
CONTENT_COLUMNS = ("key", "original") + tuple(f"{kind}{suffix}" for kind in KINDS for suffix in ("", "_verdict"))


_TYPES = {"": pa.string(), "_verdict": pa.string(), "_reason": pa.string(), "_retries": pa.int32(),
          "_fallback": pa.bool_(), "_tokens": pa.int32(), "_clip": pa.float32()}
SIDECAR_SCHEMA = pa.schema([("key", pa.string()), ("original", pa.string()), ("original_tokens", pa.int32()),
                            ("original_clip", pa.float32())]
                           + [(f"{k}{suf}", t) for k in KINDS for suf, t in _TYPES.items()])


# ---------------------------------------------------------------- helpers
def shard_index(name: str) -> int:
    """"shard-00012.tar" / ".../shard-00012.parquet" -> 12."""
    base = posixpath.basename(name.rstrip("/")).split(".", 1)[0]
    if not base.startswith("shard-") or not base[6:].isdigit():
        raise ValueError(f"shards: {name!r} is not a shard name like 'shard-00000.tar'")
    return int(base[6:])


def sidecar_uri(out: str, index: int) -> str:
    return storage.join(out, "captions", f"shard-{index:05d}.parquet")


def _seed(base: int, shard: int, batch: int, kind: str, attempt: int) -> int:
    """A sample's seed depends only on where it is, so a resumed or fanned-out run draws the
    same captions as one uninterrupted run."""
    return (base * 1_000_003 + zlib.crc32(f"{shard}:{batch}:{kind}:{attempt}".encode())) % (2**31)


def _original_caption(row: dict, key: str, shard: str) -> str:
    if "caption" not in row:
        raise ValueError(f"{shard}: record {key!r} has no 'caption' field in its JSON (not an ingested shard?)")
    cap = row["caption"]
    return "" if cap is None else str(cap)


def _write_parquet(table: pa.Table, uri: str) -> None:
    """Write a whole parquet file at once: temp name + rename locally, a single PUT on S3."""
    if storage.is_remote(uri):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(uri, buf.getvalue())
        return
    path = storage.local_path(uri)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_parquet(uri: str) -> pa.Table:
    with storage.open_uri(uri, "rb") as f:
        return pq.read_table(f)


def _sidecar_meta(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(b"easel")
    return json.loads(raw) if raw else {}


def _finished_sidecar(uri: str) -> dict | None:
    """A finished shard's sidecar metadata: the sidecar exists, parses and has the expected columns;
    None otherwise (to be done)."""
    if not storage.exists(uri):
        return None
    try:
        table = _read_parquet(uri)
    except Exception as e:  # a torn or foreign file: redo the shard rather than trust it
        log.warning("recaption: %s is unreadable (%s); redoing the shard", uri, e)
        return None
    meta = _sidecar_meta(table)
    return meta if {"key", "original", "short", "long"} <= set(table.column_names) and meta else None


# ---------------------------------------------------------------- captioning one kind of one batch
def _caption_batch(captioner: Captioner, filters: CaptionFilters, images, x, originals: list[str], kind: str,
                   cfg: dict, shard: int, batch: int, counters: dict) -> dict[str, list]:
    """Sample, filter, resample the rejected ones, fall back to the original caption."""
    n = len(images)
    kw = dict(kind=kind, top_p=cfg["top_p"], temperature=cfg["temperature"])
    texts = captioner.caption(images, seed=_seed(cfg["seed"], shard, batch, kind, 0), **kw)
    verdicts, ntok, cos = filters.check(texts, kind, x)
    retries = [0] * n
    last_reject: list[Verdict | None] = [v if not v.ok else None for v in verdicts]
    counters["captions"] += n
    counters["tokens"] += sum(ntok)
    pending = [i for i, v in enumerate(verdicts) if not v.ok]
    for attempt in range(1, cfg["max_retries"] + 1):
        if not pending:
            break
        sub = captioner.caption([images[i] for i in pending],
                                seed=_seed(cfg["seed"], shard, batch, kind, attempt), **kw)
        v2, n2, c2 = filters.check(sub, kind, None if x is None else x[pending])
        counters["captions"] += len(sub)
        counters["tokens"] += sum(n2)
        for j, i in enumerate(pending):
            texts[i], verdicts[i], ntok[i], cos[i], retries[i] = sub[j], v2[j], n2[j], c2[j], attempt
            if not v2[j].ok:
                last_reject[i] = v2[j]
        pending = [i for i in pending if not verdicts[i].ok]
    fallback = [False] * n
    for i in pending:  # every sample failed: keep the original caption (DALL-E 3's fallback)
        texts[i], fallback[i] = originals[i], True
        ntok[i] = filters.count_tokens(originals[i])
        cos[i] = float("nan")
    verdict = ["fallback" if fallback[i] else ("retry" if retries[i] else "pass") for i in range(n)]
    return {kind: texts, f"{kind}_verdict": verdict,
            f"{kind}_reason": [v.reason if v is not None else "" for v in last_reject],
            f"{kind}_retries": retries, f"{kind}_fallback": fallback, f"{kind}_tokens": ntok, f"{kind}_clip": cos}


def _recaption_shard(shard_uri: str, out: str, captioner: Captioner, filters: CaptionFilters, cfg: dict,
                     image_size: int | None, progress: bool, inputs: dict | None = None) -> dict:
    from tqdm.auto import tqdm

    from model_code.data.dataset import iter_shard

    idx = shard_index(shard_uri)
    name = posixpath.basename(shard_uri)
    t0 = time.time()
    counters = {"captions": 0, "tokens": 0}
    before = filters.stats.as_dict()
    cols: dict[str, list] = {c: [] for c in SIDECAR_COLUMNS}  # all named up front: an empty shard still
    # gets a complete (empty) sidecar
    batch: list[tuple[str, Any, str]] = []
    bar = tqdm(desc=f"recaption {name}", unit="img", disable=not progress, leave=False)

    def flush(b: int) -> None:
        keys = [k for k, _, _ in batch]
        images = [im for _, im, _ in batch]
        originals = [o for _, _, o in batch]
        x = images_to_tensor(images, image_size) if filters.uses_clip else None
        cols["key"] += keys
        cols["original"] += originals
        cols["original_tokens"] += [filters.count_tokens(o) for o in originals]
        cols["original_clip"] += ([float(c) for c in filters.alignment.cosines(x, originals)]
                                  if filters.uses_clip else [float("nan")] * len(keys))
        for kind in KINDS:
            for c, v in _caption_batch(captioner, filters, images, x, originals, kind, cfg, idx, b, counters).items():
                cols[c].extend(v)
        bar.update(len(batch))
        batch.clear()

    n_batches = 0
    for key, image, row in iter_shard(shard_uri):
        batch.append((key, image, _original_caption(row, key, name)))
        if len(batch) == cfg["batch_size"]:
            flush(n_batches)
            n_batches += 1
    if batch:
        flush(n_batches)
    bar.close()
    seconds = time.time() - t0
    after = filters.stats.as_dict()
    meta = {"format": FORMAT, "shard": name, "shard_uri": shard_uri, "captioner": captioner.name,
            "settings": {k: cfg[k] for k in ("top_p", "temperature", "max_retries", "seed")},
            "filters": filters.cfg, "uses_clip": filters.uses_clip, "seconds": seconds,
            "generated_captions": counters["captions"], "generated_tokens": counters["tokens"],
            "filter_counts": {k: after[k] - before.get(k, 0) for k in after if not k.endswith("_rate")},
            **({"inputs": inputs} if inputs else {})}
    table = pa.Table.from_pydict(cols, schema=SIDECAR_SCHEMA).replace_schema_metadata(
        {b"easel": json.dumps(meta).encode()})
    _write_parquet(table, sidecar_uri(out, idx))
    return {"shard": name, "records": table.num_rows, "seconds": seconds, **counters}


# ---------------------------------------------------------------- the job
def _inputs(dataset: str, spec, cap: Captioner, tokenizer: str | None, clip: str | None, cfg: dict,
            filters: CaptionFilters) -> dict:
    """What a shard's captions depend on (model_code.identity): the dataset's contents, the trained
    captioner, tokenizer and CLIP, the sampling settings and the filters."""
    def part(uri: str | None) -> str | None:
        return part_identity(uri) if uri and uri != "none" else None

    if not isinstance(spec, str):
        captioner = cap.name                                  # a Captioner object: its name
    elif spec == "oracle":
        captioner = "oracle"
    else:
        captioner = part(spec.removeprefix("pretrained:"))
    return {"dataset": dataset_identity(dataset), "captioner": captioner, "tokenizer": part(tokenizer),
            "clip": part(clip), "settings": {k: cfg[k] for k in ("top_p", "temperature", "max_retries", "seed")},
            "filters": json.loads(json.dumps(filters.cfg, default=str))}


def _check_same_inputs(sidecar: str, meta: dict, inputs: dict) -> None:
    """A finished sidecar is reused only if it was written from the same inputs (older sidecars,
    which recorded none, are reused as before); otherwise an error names what changed and the
    sidecar stays as it is."""
    diff = changed(meta.get("inputs"), inputs)
    if diff:
        raise ValueError(f"recaption: {sidecar} was written from other inputs (changed: {', '.join(diff)}); "
                         f"its captions are not this run's: use another out, or remove its captions/ to redo")


def _resolve(preset: str | dict, overrides: dict) -> dict:
    pcfg = preset if isinstance(preset, dict) else load_preset(preset)
    from model_code.models.pretrained import known_keys
    from model_code.recaption.filters import DEFAULTS as FILTER_DEFAULTS
    known_keys(pcfg.get("recaption") or {}, "recaption", set(DEFAULTS) | set(FILTER_DEFAULTS))
    cfg = {**DEFAULTS, **(pcfg.get("recaption") or {})}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if not 0 < float(cfg["top_p"]) <= 1:
        raise ValueError(f"recaption.top_p must be in (0, 1], got {cfg['top_p']!r}")
    if float(cfg["temperature"]) < 0:
        raise ValueError(f"recaption.temperature must be >= 0, got {cfg['temperature']!r}")
    for key, lo in (("max_retries", 0), ("batch_size", 1)):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < lo:
            raise ValueError(f"recaption.{key} must be an integer >= {lo}, got {cfg[key]!r}")
    return cfg


def _alignment(clip: str | None, captioner: Captioner, tokenizer: str | None):
    """The CLIP that judges alignment: `clip` (a CLIP dir/URI), else the CoCa's own contrastive
    towers; "none" turns the filter off. Returns (ClipAlignment | None, image size | None)."""
    if clip is not None and str(clip).lower() == "none":
        return None, None
    if clip is None:
        if isinstance(captioner, CoCaCaptioner):
            return ClipAlignment(captioner.model.clip, captioner.tokenizer), captioner.model.clip.config["image_size"]
        log.info("recaption: no CLIP given for a %s captioner; the alignment filter is off", captioner.name)
        return None, None
    from model_code.models.clip import CLIP
    from model_code.text.tokenizer import TextTokenizer
    if isinstance(captioner, CoCaCaptioner) and tokenizer is None:
        tok = captioner.tokenizer
    elif tokenizer is not None:
        tok = TextTokenizer.load(tokenizer)
    else:
        raise ValueError("recaption: the CLIP alignment filter needs `tokenizer` (the CLIP's TextTokenizer dir)")
    model = CLIP.from_pretrained(clip, map_location=getattr(captioner, "device", "cpu")).eval()
    if model.config["vocab_size"] != tok.vocab_size:
        raise ValueError(f"recaption: CLIP at {clip} has vocab_size {model.config['vocab_size']} but the "
                         f"tokenizer has {tok.vocab_size}")
    return ClipAlignment(model, tok), model.config["image_size"]


def _token_counter(cap: Captioner, tokenizer: str | None, alignment: ClipAlignment | None):
    """Lengths in the project's tokenizer where there is one (comparable across captioners and
    with the generators' text budget), else in the captioner's own tokens."""
    if isinstance(cap, CoCaCaptioner):
        return cap.count_tokens
    if alignment is not None:
        return alignment.tokenizer.count_tokens
    if tokenizer is not None:
        from model_code.text.tokenizer import TextTokenizer
        return TextTokenizer.load(tokenizer).count_tokens
    return cap.count_tokens


def check_out(out: str, dataset: str) -> None:
    """Refuse an `out` that is `dataset` (or the dataset whose shards it uses) or lies inside it:
    out/dataset.json would overwrite that dataset's own and corrupt it."""
    from model_code.data.dataset import shards_root

    for d in dict.fromkeys((dataset, shards_root(dataset))):
        if storage.within(out, d):
            where = "is" if storage.within(d, out) else "is inside"
            raise ValueError(f"recaption: out {out} {where} the dataset {d}; its dataset.json would be overwritten: "
                             f"give an --out outside it")


def recaption(dataset: str, out: str, captioner: str | Captioner, tokenizer: str | None = None,
              clip: str | None = None, shards: Sequence[str] | None = None, preset: str | dict = "tiny",
              top_p: float | None = None, temperature: float | None = None, max_retries: int | None = None,
              batch_size: int | None = None, seed: int | None = None, progress: bool = True,
              mlflow: bool = True, device: str | None = None, finalize_out: bool | None = None,
              threads: int | None = None) -> dict:
    """Recaption `dataset`'s shards (all, or the named subset) into sidecars under `out`.

    captioner: a trained CoCa directory/URI, "pretrained:PATH", "oracle" (Shapes only) or a Captioner.
    tokenizer: the project TextTokenizer directory: the CoCa's, `clip`'s, and the one caption lengths are
               counted in (without one, a pretrained captioner counts in its own tokens).
    clip: a CLIP directory/URI for the alignment filter; None uses the CoCa's own towers; "none" = off.
    Settings left None come from the preset's `recaption:` section, then the paper's defaults.
    finalize_out: write out/dataset.json at the end (default: when every shard was asked for;
               a shard named twice, in any spelling, is done and counted once).
    threads: torch's intra-op threads for this process (None or 0: torch's default, every core).
               Recaption tasks that share one machine (kfp.local runs a fan-out's groups at once)
               take a share each: two processes of two OpenMP threads on two cores spin against
               each other, 5x slower than one thread each (docs/benchmarks.md).
    `out` may not be the dataset or lie inside it (its dataset.json would be overwritten).
    Returns the run's summary (records: covered by the asked-for shards' sidecars, reused ones
    included; records_captioned: by this run; rates, filter counts, fallbacks).
    """
    cfg = _resolve(preset, {"top_p": top_p, "temperature": temperature, "max_retries": max_retries,
                            "batch_size": batch_size, "seed": seed})
    from model_code.data.dataset import shard_list

    import torch
    if threads:
        if int(threads) < 0:
            raise ValueError(f"threads: must be >= 0 (0: every core), got {threads}")
        torch.set_num_threads(int(threads))
    check_out(out, dataset)
    available = shard_list(dataset)
    if not available:
        raise ValueError(f"recaption: {dataset} has no shards (shards/shard-*.tar)")
    by_index = {shard_index(u): u for u in available}
    if shards is None:
        todo = available
    else:
        todo = []
        for s in shards:
            i = shard_index(s)
            if i not in by_index:
                raise ValueError(f"shards: {s!r} is not a shard of {dataset}")
            if by_index[i] not in todo:  # "shard-00000.tar" twice, or as "shards/shard-00000.tar": once
                todo.append(by_index[i])
    if finalize_out is None:  # the run covers the whole dataset: seal it
        finalize_out = {shard_index(u) for u in todo} == set(by_index)

    cap = captioner if not isinstance(captioner, str) else load_captioner(
        captioner, tokenizer, device=device, max_new_tokens=cfg.get("max_new_tokens") or None)
    alignment, clip_size = _alignment(clip, cap, tokenizer)
    filters = CaptionFilters(cfg, _token_counter(cap, tokenizer, alignment), alignment)

    inputs = _inputs(dataset, captioner, cap, tokenizer, clip, cfg, filters)
    t0 = time.time()
    done, skipped = [], []
    for uri in todo:
        side = sidecar_uri(out, shard_index(uri))
        meta = _finished_sidecar(side)
        if meta is not None:
            _check_same_inputs(side, meta, inputs)
            skipped.append(posixpath.basename(uri))
            continue
        done.append(_recaption_shard(uri, out, cap, filters, cfg, clip_size, progress, inputs))
    seconds = time.time() - t0
    n_cap = sum(d["captions"] for d in done)
    n_tok = sum(d["tokens"] for d in done)
    verdicts = _count_sidecars(out, [shard_index(u) for u in todo])
    summary = {
        "out": out, "dataset": dataset, "captioner": cap.name, "shards_done": [d["shard"] for d in done],
        # records: what the asked-for shards' sidecars cover, reused ones included (= their verdicts);
        # records_captioned: those captioned by this run
        "shards_skipped": skipped, "records": sum(verdicts[KINDS[0]].values()),
        "records_captioned": sum(d["records"] for d in done), "captions_generated": n_cap,
        "tokens_generated": n_tok, "seconds": seconds, "threads": torch.get_num_threads(),
        "captions_per_s": n_cap / seconds if done and seconds > 0 else 0.0,
        "tokens_per_s": n_tok / seconds if done and seconds > 0 else 0.0,
        "filters": filters.stats.as_dict(), "uses_clip": filters.uses_clip,
        "settings": {k: cfg[k] for k in ("top_p", "temperature", "max_retries", "batch_size", "seed")},
    }
    summary["verdicts"] = verdicts
    summary["fallback"] = {k: c["fallback"] for k, c in summary["verdicts"].items()}
    if finalize_out:
        summary["dataset_json"] = finalize(out, dataset)["path"]
    if mlflow:
        _log_mlflow(summary)
    log.info("recaption: %d records captioned in %d shards (%d reused; %d records in all), %.1f captions/s, "
             "%.0f tokens/s", summary["records_captioned"], len(done), len(skipped), summary["records"],
             summary["captions_per_s"], summary["tokens_per_s"])
    return summary


def _count_sidecars(out: str, indices: Sequence[int]) -> dict:
    """Verdict counts over the given shards' sidecars: {kind: {pass, retry, fallback}}."""
    counts = {k: dict.fromkeys(VERDICTS, 0) for k in KINDS}
    for i in indices:
        uri = sidecar_uri(out, i)
        if not storage.exists(uri):
            continue
        t = _read_parquet(uri)
        for kind in KINDS:
            for v in t.column(f"{kind}_verdict").to_pylist():
                counts[kind][v] += 1
    return counts


# ---------------------------------------------------------------- finalize: the new dataset version
def gather_sidecars(out: str, parts: Sequence[str]) -> int:
    """Copy the caption sidecars of a recaption fan-out's parts (each a `recaption` out) into
    `out/captions/`; a part that is `out` itself (the fan-out wrote there) is skipped. Returns
    the number of sidecars copied."""
    copied = 0
    for part in parts:
        if part.rstrip("/") == out.rstrip("/"):
            continue
        for uri in storage.ls(storage.join(part, "captions"), "*.parquet"):
            storage.write_bytes(storage.join(out, "captions", posixpath.basename(uri.rstrip("/"))),
                                storage.read_bytes(uri))
            copied += 1
    return copied


def finalize(out: str, parent: str) -> dict:
    """Write out/dataset.json: a new dataset version whose images are the parent's shards and
    whose captions are the sidecars. Every parent shard must have its sidecar, and each sidecar
    must cover exactly its shard's records (counts balance). Returns {"path", **meta}."""
    from model_code.data.dataset import absolute, content_id, info, manifest, read_meta, shard_list, version_id

    check_out(out, parent)
    existing = read_meta(out)
    if existing and existing.get("kind") != "recaptioned":
        raise ValueError(f"finalize: {out} already holds a dataset ({existing.get('kind')!r}, not a recaption): "
                         f"give another out")
    # recorded absolute (a local path) or as the URI: a relative one would name another directory's
    # dataset when read from another working directory
    parent = absolute(parent)
    parent_meta = info(parent)
    parent_shards = shard_list(parent)
    missing = [posixpath.basename(u) for u in parent_shards
               if not storage.exists(sidecar_uri(out, shard_index(u)))]
    if missing:
        raise ValueError(f"finalize: {len(missing)} shards of {parent} have no sidecar yet (first: {missing[0]}); "
                         f"run recaption on them first")
    counts = {k: dict.fromkeys(VERDICTS, 0) for k in KINDS}
    records = 0
    content = hashlib.sha256(str(content_id(parent_meta) or parent).encode())
    seconds = gen_caps = gen_toks = 0.0
    captioners, keys_seen = set(), 0
    for u in parent_shards:
        t = _read_parquet(sidecar_uri(out, shard_index(u)))
        # the version is the table's content (captions and verdicts), not the file's bytes, whose
        # metadata differs per run (timings): the same captions are the same version
        content.update(hashlib.sha256(json.dumps({c: t.column(c).to_pylist() for c in CONTENT_COLUMNS},
                                                 ensure_ascii=False).encode()).digest())
        meta = _sidecar_meta(t)
        records += t.num_rows
        keys_seen += len(set(t.column("key").to_pylist()))
        for kind in KINDS:
            for v in t.column(f"{kind}_verdict").to_pylist():
                counts[kind][v] += 1
        seconds += meta.get("seconds", 0.0)
        gen_caps += meta.get("generated_captions", 0)
        gen_toks += meta.get("generated_tokens", 0)
        captioners.add(meta.get("captioner", "?"))
    if keys_seen != records:
        raise ValueError(f"finalize: sidecars under {out} repeat keys ({records} rows, {keys_seen} distinct keys)")
    try:
        n_parent = len(manifest(parent))
    except (FileNotFoundError, storage.StorageError):
        n_parent = parent_meta.get("accepted")
    if n_parent is not None and int(n_parent) != records:
        raise ValueError(f"finalize: the sidecars hold {records} records but {parent} has {n_parent}")
    for kind in KINDS:
        if sum(counts[kind].values()) != records:  # pass + retry + fallback = records, per kind
            raise ValueError(f"finalize: {kind} verdicts do not add up to {records} records: {counts[kind]}")
    meta = {
        "format": FORMAT, "kind": "recaptioned",
        "parent": parent, "shards_from": parent,
        "parent_version": version_id(parent_meta) or parent_meta.get("content_hash"),
        "version": content.hexdigest()[:16],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "captioner": sorted(captioners)[0] if len(captioners) == 1 else sorted(captioners),
        "records": records, "accepted": records, "shards": len(parent_shards),
        "shard_files": parent_shards,
        "files": {"captions": "captions/shard-%05d.parquet", "shards": storage.join(parent, "shards", "shard-%05d.tar"),
                  "manifest": storage.join(parent, "manifest.parquet")},
        "captions": counts,
        "fallback_rate": {k: counts[k]["fallback"] / max(1, records) for k in KINDS},
        "generation": {"seconds": seconds, "captions": int(gen_caps), "tokens": int(gen_toks),
                       "captions_per_s": gen_caps / seconds if seconds else 0.0,
                       "tokens_per_s": gen_toks / seconds if seconds else 0.0},
        "size": parent_meta.get("size"),
        "balance": "records = pass + retry + fallback, per caption kind",
    }
    path = storage.join(out, "dataset.json")
    storage.write_text(path, json.dumps(meta, indent=2, default=str))
    return {"path": path, **meta}


# ---------------------------------------------------------------- MLflow
def _log_mlflow(summary: dict) -> None:
    """Totals, rates and filter counts to MLflow; a tracking problem is logged, never fatal
    (the sidecars are the product, the metrics describe them)."""
    try:
        from model_code.tracking import log_run
        metrics = {k: summary[k] for k in ("records", "captions_generated", "tokens_generated", "seconds",
                                           "captions_per_s", "tokens_per_s")}
        metrics.update({f"filter/{k}": v for k, v in summary["filters"].items()})
        for kind, c in summary["verdicts"].items():
            metrics.update({f"verdict/{kind}_{v}": n for v, n in c.items()})
        summary["mlflow_run_id"] = log_run(
            "easel-recaption", "recaption",
            {"dataset": summary["dataset"], "out": summary["out"], "captioner": summary["captioner"],
             "uses_clip": summary["uses_clip"], **summary["settings"]}, metrics,
            tags={"shards_done": ",".join(summary["shards_done"])[:5000], "stage": "recaption"},
            datasets={summary["dataset"]: "recaption"})
    except Exception as e:  # noqa: BLE001 - see docstring
        log.warning("recaption: MLflow logging failed: %s", e)
