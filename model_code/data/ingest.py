"""Ingest: any source (sources.py) -> WebDataset shards + manifest + quarantine + duplicates.

Output (docs/architecture.md, "Data on disk"), under OUT (a directory or s3:// prefix):
    shards/shard-%05d.tar    WebDataset: KEY.png (size x size RGB) + KEY.json (the manifest row;
                             plus "meta" with the source's extra fields when it had any)
    manifest.parquet         one row per accepted image, columns MANIFEST_COLUMNS
    quarantine.parquet       source, key, reason, detail (reasons: REASONS)
    duplicates.parquet       source, key, kept_key, kind ("exact" | "near"), distance
    dataset.json             counts, size, created, src, parameters, reasons, content hash

Every input record ends in exactly one of the three tables: input = accepted + quarantined +
duplicates, checked before anything is published.

Rules: images are verified, EXIF-oriented, converted from any mode to RGB (alpha on white,
16-bit scaled, first frame of an animation), refused when tiny, extreme in aspect or over the
pixel limit (decompression bombs), then resized (shorter side) and centre-cropped with Lanczos.
Captions holding control characters are quarantined (caption_control="strip" removes them
instead); whitespace is collapsed; empty, non-UTF-8 or over-long ones are quarantined (an empty
alt-text falls back to the curated caption when there is one). Opted-out records are
quarantined unless keep_opted_out. Duplicates: same sha256 of the normalised pixels ("exact"),
or pHash within near_dup_threshold bits and 16x16 thumbnails within near_dup_tolerance
("near"; see hashing.py for why pHash alone is not enough on the Shapes world).

How it runs:
- The source streams records (never all images at once). A process pool (`workers`, default
  all cores) decodes, validates, normalises, encodes and hashes them in chunks; results come
  back in input order and only a few chunks are in flight, so memory does not grow with the input.
- The parent process alone decides duplicates, in input order (first seen is kept), so the
  result does not depend on the number of workers. Its index holds fingerprints only
  (hashing.NearDupIndex: ~800 bytes per kept image).
- Resumable: each shard is written under a temporary name and renamed (or uploaded) when
  complete; then a small part (_parts/NNNNN.*) records its manifest rows, quarantine and
  duplicate rows and the input range it covers. A rerun skips the records of finished parts,
  rebuilds the dedup index from them and continues; the final tables are assembled from parts.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import chain, islice
from multiprocessing import get_context
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from model_code import storage
from model_code.data import hashing, sources
from model_code.text.control import CONTROL, first_control

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- vocabulary
EMPTY_FILE = "empty file"
NOT_AN_IMAGE = "not an image"
CORRUPT_IMAGE = "corrupt image"
TRUNCATED_IMAGE = "truncated image"
DECOMPRESSION_BOMB = "decompression bomb"
UNSUPPORTED_MODE = "unsupported image mode"
TOO_SMALL = "too small"
EXTREME_ASPECT = "extreme aspect ratio"
NO_CAPTION = "no caption"
EMPTY_CAPTION = "empty caption"
CAPTION_TOO_LONG = "caption too long"
OPTED_OUT = "opted out"
DUPLICATE_KEY = "duplicate key"
CONTROL_CHARS = "control characters in caption"
REASONS = (sources.MISSING_IMAGE, sources.UNREADABLE, sources.BAD_METADATA, sources.CAPTION_NOT_UTF8,
           sources.UNREADABLE_TAR, sources.OUTSIDE_SOURCE, sources.ORPHAN_CAPTION, sources.NOT_A_FILE,
           CONTROL_CHARS, EMPTY_FILE, NOT_AN_IMAGE, CORRUPT_IMAGE, TRUNCATED_IMAGE, DECOMPRESSION_BOMB,
           UNSUPPORTED_MODE, TOO_SMALL, EXTREME_ASPECT, NO_CAPTION, EMPTY_CAPTION, CAPTION_TOO_LONG,
           OPTED_OUT, DUPLICATE_KEY)

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("sha256", pa.string()), ("phash", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("orig_width", pa.int32()),
    ("orig_height", pa.int32()), ("orig_mode", pa.string()), ("orig_format", pa.string()),
    ("caption", pa.string()), ("curated_caption", pa.string()), ("scene", pa.string()),
    ("source", pa.string()), ("license", pa.string()), ("opt_out", pa.bool_()),
    ("split", pa.string()), ("caption_len", pa.int32()),
    # True when caption_control="strip" removed control characters from this record's captions
    ("caption_cleaned", pa.bool_()),
])
MANIFEST_COLUMNS = tuple(MANIFEST_SCHEMA.names)
PART_SCHEMA = MANIFEST_SCHEMA.append(pa.field("_thumb", pa.binary()))  # + the dedup thumbnail
QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("key", pa.string()),
                               ("reason", pa.string()), ("detail", pa.string())])
DUPLICATES_SCHEMA = pa.schema([("source", pa.string()), ("key", pa.string()), ("kept_key", pa.string()),
                               ("kind", pa.string()), ("distance", pa.int32())])

DEFAULTS: dict[str, Any] = {
    "min_side": 16,               # px; smaller originals carry too little to upsample from
    "max_aspect": 4.0,            # long/short side; a centre crop of a 1000x10 strip is noise
    "max_caption_chars": 20_000,  # the seeds' long captions are ~100-200 tokens (~1000 chars)
    "max_pixels": None,           # None: Pillow's Image.MAX_IMAGE_PIXELS at call time
    "near_dup_tolerance": 24,     # colour-thumbnail check behind a pHash match (hashing.py)
    "png_compress_level": 6,      # zlib level of the stored PNGs (Pillow's default)
    "keep_opted_out": False,      # an opted-out record is quarantined unless this is set
    # a caption holding control characters (NUL, ESC, bidi overrides, ...; tab/newline/CR are
    # whitespace and are collapsed) is quarantined: it is corrupt or hostile, and silently
    # stripping it hides that. "strip" keeps the record with the characters removed instead (the
    # manifest's caption_cleaned marks it); dataset.json's parameters record the policy.
    "caption_control": "quarantine",
    # local directories a manifest's image paths may point into besides the manifest's own
    # (paths elsewhere are quarantined "outside the source"); `--allow-root DIR` on the CLI
    "allow_roots": [],
}
CAPTION_CONTROL_POLICIES = ("quarantine", "strip")


class Reject(Exception):
    """A record that fails a check: quarantined with (reason, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------- captions

_SPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """Strip control characters and collapse whitespace (newlines, tabs) to single spaces."""
    return _SPACE.sub(" ", CONTROL.sub("", text)).strip()


def _caption_text(value: Any, field: str) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # None / NaN
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Reject(sources.CAPTION_NOT_UTF8, f"{field}: {e}") from None
    if not isinstance(value, str):
        raise Reject(sources.BAD_METADATA, f"{field} is a {type(value).__name__}, not text")
    bad = next((i for i, ch in enumerate(value) if 0xD800 <= ord(ch) <= 0xDFFF), None)
    if bad is not None:   # a lone surrogate (JSON "\ud800", or a byte of another encoding in a CSV)
        raise Reject(sources.CAPTION_NOT_UTF8, f"{field} is not valid Unicode text: "
                                               f"{sources.safe_text(value[bad])} at offset {bad}")
    return value


def captions_of(rec: dict, max_chars: int, control: str = "quarantine") -> tuple[str, str | None, bool]:
    """(caption, curated_caption) cleaned, or Reject. An empty alt-text falls back to the
    curated caption when there is one (the record still has a caption to train on). Control
    characters: Reject under control="quarantine" (the default), stripped under "strip" (the
    third value says whether anything was stripped: the manifest's caption_cleaned)."""
    out, cleaned = [], False
    for field in ("caption", "curated_caption"):
        text = _caption_text(rec.get(field), field)
        if text is not None and len(text) > max_chars:
            raise Reject(CAPTION_TOO_LONG, f"{field} too long ({len(text)} chars > {max_chars})")
        c = first_control(text) if text is not None else None
        if c and control == "quarantine":
            raise Reject(CONTROL_CHARS, f"{field} holds control character {c[1]} at offset {c[0]} "
                                        f"(ingest caption_control=strip keeps such records with the "
                                        f"characters removed)")
        cleaned = cleaned or bool(c)
        out.append(None if text is None else clean_caption(text))
    caption, curated = out
    curated = curated or None
    if not caption:
        if curated:
            caption = curated
        elif caption is None:
            raise Reject(NO_CAPTION, "the record has no caption field (no captions.jsonl line, "
                                     "KEY.txt or caption column)")
        else:
            raise Reject(EMPTY_CAPTION, "caption is empty after stripping whitespace and control "
                                        "characters, and there is no curated caption")
    return caption, curated, cleaned


# ---------------------------------------------------------------- images
def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = as stored; 5-8 rotate by 90 degrees)."""
    try:
        value = im.getexif().get(0x0112, 1)
        return value if value in range(1, 9) else 1
    except Exception:  # unreadable EXIF: orientation is then left as stored
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha (RGBA, LA, PA, P/L/RGB with a transparent colour) is
    composited on white; 16/32-bit and float grayscale are scaled, not clipped."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im).astype(np.float64)
        top = a.max() if a.size else 0.0
        if mode == "F":
            scale = 255.0 if top <= 1.0 else 1.0       # [0, 1] floats, else already 0-255
        elif mode.startswith("I;16") or top <= 65535:
            scale = 255.0 / 65535.0 if top > 255 or mode.startswith("I;16") else 1.0
        else:
            scale = 255.0 / top
        im = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "CMYK" and im.info.get("icc_profile"):
        try:  # the embedded profile gives the right colours; the naive formula is far off
            from PIL import ImageCms
            src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:
            pass
    return im if mode == "RGB" else im.convert("RGB")


def _resize_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side -> size, centre crop to size x size, in one Lanczos pass (resize's `box`
    is the centred square in source pixels)."""
    w, h = im.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    # reducing_gap: a fast integer reduce first when shrinking >3x; the Lanczos pass still sets the result
    return im.resize((size, size), Image.LANCZOS, box=box, reducing_gap=3.0)


def _decode_error(e: Exception, where: str = "") -> Reject:
    text = f"{where}{type(e).__name__}: {e}"
    return Reject(TRUNCATED_IMAGE if "truncated" in text.lower() else CORRUPT_IMAGE, text)


def _looks_like_text(head: bytes) -> bool:
    text = head.decode("utf-8", "ignore")   # a character cut at the end is dropped
    return bool(text) and len(text) >= len(head) // 2 and all(c.isprintable() or c in "\t\r\n" for c in text)


def normalize_image(data: bytes, size: int, min_side: int = 16, max_aspect: float = 4.0,
                    max_pixels: int | None = None) -> tuple[Image.Image, dict]:
    """Encoded bytes -> (size x size RGB image, info about the original), or Reject.

    Checks, cheapest first: empty, recognisable format, pixel count (decompression bombs,
    from the header before any pixel is decoded), side and aspect (after EXIF orientation),
    structural verify, full decode (truncation), then orientation, mode, resize and crop.
    """
    if not data:
        raise Reject(EMPTY_FILE, "0 bytes")
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: both are bombs here
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            # what it looks like, never its bytes: the quarantine may travel further than the source
            looks = "text" if _looks_like_text(data[:512]) else f"binary, magic {data[:4].hex(' ')}"
            raise Reject(NOT_AN_IMAGE, f"{len(data)} bytes in no image format Pillow knows "
                                       f"(looks like {looks})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Reject(DECOMPRESSION_BOMB, str(e)) from None
        except Exception as e:  # a header that parses halfway
            raise Reject(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None
        w, h = im.size
        fmt, mode = im.format, im.mode
        if limit and w * h > limit:
            raise Reject(DECOMPRESSION_BOMB, f"{w}x{h} = {w * h} pixels > limit {limit}")
        try:
            im.verify()  # structure and checksums (PNG CRCs); must come straight after open
            im = Image.open(io.BytesIO(data))  # verify spends the image: open it again
        except Exception as e:
            raise _decode_error(e, "verify: ") from None
        orientation = _orientation(im)
        if orientation >= 5:  # displayed turned by 90 degrees: the checks see the displayed sides
            w, h = h, w
        # aspect first: a 1000x10 strip is refused for its shape, a 3x3 icon for its size
        if max(w, h) > max_aspect * max(min(w, h), 1):
            raise Reject(EXTREME_ASPECT, f"{w}x{h}: aspect ratio {max(w, h) / max(min(w, h), 1):.1f} > {max_aspect:g}")
        if min(w, h) < min_side:
            raise Reject(TOO_SMALL, f"{w}x{h}: shorter side < {min_side} px")
        try:
            if fmt == "JPEG":
                # decode at the smallest DCT scale still >= size: 2-8x less work for photos
                im.draft("RGB" if mode in ("RGB", "YCbCr") else mode, (size, size))
            im.load()  # full decode: truncated or broken data fails here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Reject(DECOMPRESSION_BOMB, str(e)) from None
        except Exception as e:
            raise _decode_error(e) from None
    if orientation != 1:  # (exif_transpose copies the image even when there is nothing to do)
        try:
            im = ImageOps.exif_transpose(im) or im
        except Exception:  # a broken EXIF block does not make the pixels bad
            pass
    try:
        rgb = _to_rgb(im)
    except Exception as e:
        raise Reject(UNSUPPORTED_MODE, f"{mode}: {type(e).__name__}: {e}") from None
    info = {"orig_width": w, "orig_height": h, "orig_mode": mode, "orig_format": fmt or "unknown"}
    return _resize_crop(rgb, size), info


# ---------------------------------------------------------------- one record (runs in workers)
def split_of(key: str, heldout_fraction: float) -> str:
    """"heldout" for a stable pseudo-random fraction of keys, "train" otherwise (a key keeps
    its split whatever else is in the dataset)."""
    if heldout_fraction <= 0:
        return "train"
    u = int.from_bytes(hashlib.sha256(f"easel-split:{key}".encode()).digest()[:8], "big") / 2.0 ** 64
    return "heldout" if u < heldout_fraction else "train"


def process_record(rec: dict, cfg: dict) -> dict:
    """One record -> {"status": "ok", "row", "png", "thumb"} or {"status": "quarantined", ...}.
    Never raises for bad input."""
    key, source = rec["key"], rec["source"]
    try:
        sources.load_image(rec)  # bytes only; an unreadable file outranks a caption problem
        if rec.get("error"):
            raise Reject(*rec["error"])
        caption, curated, cleaned = captions_of(rec, cfg["max_caption_chars"], cfg["caption_control"])
        if rec.get("opt_out") and not cfg["keep_opted_out"]:
            raise Reject(OPTED_OUT, "the record's opt_out flag is set")
        img, info = normalize_image(rec["image"], cfg["size"], cfg["min_side"], cfg["max_aspect"],
                                    cfg["max_pixels"])
    except Reject as r:
        return {"status": "quarantined", "source": source, "key": key, "reason": r.reason,
                "detail": sources.safe_text(r.detail[:2000])}
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=cfg["png_compress_level"])
    ph = hashing.phash(img)
    scene = rec.get("scene")
    row = {"key": key, "shard": None, "sha256": hashing.sha256_pixels(img),
           "phash": hashing.phash_hex(ph), "width": img.width, "height": img.height, **info,
           "caption": caption, "curated_caption": curated,
           "scene": json.dumps(scene, separators=(",", ":")) if scene is not None else None,
           "source": source, "license": None if rec.get("license") is None else sources.safe_text(str(rec["license"])),
           "opt_out": bool(rec.get("opt_out")), "split": split_of(key, cfg["heldout_fraction"]),
           "caption_len": len(caption), "caption_cleaned": cleaned}
    return {"status": "ok", "row": row, "png": buf.getvalue(), "phash": ph,
            "thumb": hashing.thumbnail(img), "meta": _safe_meta(rec.get("meta")) or None}


def _safe_meta(obj: Any) -> Any:
    """The source's other fields, writable as UTF-8 JSON (lone surrogates escaped)."""
    if isinstance(obj, str):
        return sources.safe_text(obj)
    if isinstance(obj, dict):
        return {sources.safe_text(str(k)): _safe_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_safe_meta(v) for v in obj]
    return obj


_CFG: dict = {}


def _init_worker(cfg: dict) -> None:
    global _CFG
    _CFG = cfg
    if cfg["max_pixels"]:  # Pillow's own guard inside open() follows our limit in workers
        Image.MAX_IMAGE_PIXELS = cfg["max_pixels"]


def _work(batch: list[dict]) -> list[dict]:
    return [process_record(r, _CFG) for r in batch]


def _ordered(ex: ProcessPoolExecutor, records: Iterator[dict], chunk: int, depth: int) -> Iterator[dict]:
    """Results in input order with back-pressure: at most `depth` chunks of `chunk` records are
    in flight, so the source is read only as fast as the workers go (Executor.map and
    Pool.imap would read the whole source ahead into their queues)."""
    pending: deque = deque()

    def submit() -> bool:
        batch = list(islice(records, chunk))
        if batch:
            pending.append(([r["key"] for r in batch], ex.submit(_work, batch)))
        return bool(batch)

    for _ in range(depth):
        if not submit():
            break
    while pending:
        keys, fut = pending.popleft()
        try:
            results = fut.result()
        except BrokenProcessPool as e:
            # a dead worker breaks the whole pool: every chunk in flight fails alike, so the one
            # that killed it is somewhere among them, not necessarily the first
            last = pending[-1][0][-1] if pending else keys[-1]
            raise RuntimeError(
                f"an ingest worker died while processing records among {keys[0]} .. {last} (killed "
                f"for memory, or a crash inside an image decoder); finished shards are kept, a rerun "
                f"resumes after them") from e
        submit()
        yield from results


@contextmanager
def _results(records: Iterator[dict], cfg: dict, workers: int) -> Iterator[Iterator[dict]]:
    """Processed results in input order, from `workers` processes (or in-process for 1)."""
    if workers <= 1:
        old = Image.MAX_IMAGE_PIXELS
        try:
            _init_worker(cfg)
            yield (process_record(r, cfg) for r in records)
        finally:
            Image.MAX_IMAGE_PIXELS = old
        return
    # fork: workers start in milliseconds and inherit the imported modules. A worker that dies
    # breaks the pool loudly (BrokenProcessPool) instead of hanging it, as multiprocessing.Pool would.
    ex = ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_init_worker,
                             initargs=(cfg,))
    try:
        yield _ordered(ex, iter(records), chunk=8, depth=4 * workers)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- output
class _Out:
    """Where files go: straight into a local OUT (temp name + rename), or a local staging
    directory uploaded through storage for s3:// (an S3 PUT is atomic)."""

    def __init__(self, out: str):
        self.out = out
        self.remote = storage.is_remote(out)
        self.stage = tempfile.mkdtemp(prefix="easel-ingest-") if self.remote else None

    def prepare(self) -> None:
        if not self.remote:
            os.makedirs(os.path.join(storage.local_path(self.out), "shards"), exist_ok=True)
            os.makedirs(os.path.join(storage.local_path(self.out), "_parts"), exist_ok=True)

    def uri(self, rel: str) -> str:
        return storage.join(self.out, *rel.split("/"))

    def tmp_path(self, rel: str) -> str:
        """A local file to write `rel` into before publishing it."""
        if self.remote:
            return os.path.join(self.stage, rel.replace("/", "__"))
        d, name = os.path.split(os.path.join(storage.local_path(self.out), rel))
        return os.path.join(d, f".tmp-{name}")  # hidden: never matches shard-*.tar

    def publish(self, tmp: str, rel: str) -> None:
        if self.remote:
            storage.put_file(tmp, self.uri(rel))
            os.remove(tmp)
        else:
            os.replace(tmp, os.path.join(storage.local_path(self.out), rel))

    def write_table(self, rows: list[dict], schema: pa.Schema, rel: str) -> None:
        tmp = self.tmp_path(rel)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        self.publish(tmp, rel)

    def write_json(self, obj: dict, rel: str) -> None:
        tmp = self.tmp_path(rel)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
        self.publish(tmp, rel)

    def read_json(self, rel: str) -> dict | None:
        uri = self.uri(rel)
        return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None

    def read_table(self, rel: str) -> pa.Table:
        return pq.read_table(io.BytesIO(storage.read_bytes(self.uri(rel))))

    def close(self) -> None:
        if self.stage:
            shutil.rmtree(self.stage, ignore_errors=True)


class _Part:
    """The open shard and the rows of the input range it covers."""

    def __init__(self, out: _Out, index: int, input_start: int):
        self.out, self.index, self.input_start = out, index, input_start
        self.name = f"shard-{index:05d}.tar"
        self.manifest: list[dict] = []
        self.quarantine: list[dict] = []
        self.duplicates: list[dict] = []
        self.tmp = out.tmp_path(f"shards/{self.name}")
        self.tar = None   # a webdataset.TarWriter once the first record arrives

    def add(self, row: dict, png: bytes, meta: dict | None) -> None:
        if self.tar is None:
            # WebDataset's writer (imported here: the package takes ~1 s to import); fixed metadata
            # (mtime 0, no owner names) keeps reruns byte-identical
            from webdataset import TarWriter
            self.tar = TarWriter(self.tmp, user="", group="", mode=0o644, mtime=0.0, encoder=False)
        row["shard"] = f"shards/{self.name}"
        doc = {k: row[k] for k in MANIFEST_COLUMNS}
        if meta:
            doc["meta"] = meta
        js = json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8")
        self.tar.write({"__key__": row["key"], "png": png, "json": js})   # KEY.json, KEY.png
        self.manifest.append(row)

    def commit(self, input_end: int) -> dict:
        """Publish the shard, then the part tables, then the marker that makes them count."""
        shard = None
        if self.tar is not None:
            self.tar.close()
            self.out.publish(self.tmp, f"shards/{self.name}")
            shard = f"shards/{self.name}"
        stem = f"_parts/{self.index:05d}"
        self.out.write_table(self.manifest, PART_SCHEMA, f"{stem}.manifest.parquet")
        self.out.write_table(self.quarantine, QUARANTINE_SCHEMA, f"{stem}.quarantine.parquet")
        self.out.write_table(self.duplicates, DUPLICATES_SCHEMA, f"{stem}.duplicates.parquet")
        marker = {"index": self.index, "shard": shard, "input_start": self.input_start,
                  "input_end": input_end, "accepted": len(self.manifest),
                  "quarantined": len(self.quarantine), "duplicates": len(self.duplicates)}
        self.out.write_json(marker, f"{stem}.done.json")
        return marker

    def abandon(self) -> None:
        if self.tar is not None:
            self.tar.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


# ---------------------------------------------------------------- progress
LOG_EVERY = 5000  # records between progress log lines when stderr is not a terminal


class _Progress:
    """tqdm on a terminal; otherwise a log line every `every` records (or 30 s)."""

    def __init__(self, enabled: bool, total: int | None, initial: int = 0, every: int | None = None):
        every = every or LOG_EVERY
        self.n, self.every, self.t0, self.last = initial, every, time.monotonic(), time.monotonic()
        self.start = initial
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="img", desc="ingest", file=sys.stderr,
                            mininterval=0.5)

    def update(self, counts: dict, k: int = 1) -> None:
        self.n += k
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(k)
            if self.n % 256 == 0:
                self.bar.set_postfix(ok=counts["accepted"], bad=counts["quarantined"],
                                     dup=counts["duplicates"], refresh=False)
        elif self.n % self.every == 0 or time.monotonic() - self.last > 30:
            self.last = time.monotonic()
            rate = (self.n - self.start) / max(time.monotonic() - self.t0, 1e-9)
            log.info("ingest: %d records (%d accepted, %d quarantined, %d duplicates), %.0f img/s",
                     counts["input"], counts["accepted"], counts["quarantined"], counts["duplicates"], rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- the driver
def _check_args(size, shard_size, workers, near_dup_threshold, heldout_fraction, opts) -> None:
    if not isinstance(size, int) or not 8 <= size <= 4096:
        raise ValueError(f"size must be an integer in [8, 4096], got {size!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be a non-negative integer or None, got {workers!r}")
    if not isinstance(near_dup_threshold, int) or not -1 <= near_dup_threshold <= 64:
        raise ValueError(f"near_dup_threshold must be an integer in [0, 64] (-1: off), got {near_dup_threshold!r}")
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction!r}")
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown ingest option(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    if opts.get("min_side", 1) < 1:
        raise ValueError(f"min_side must be >= 1, got {opts['min_side']!r}")
    if opts.get("max_aspect", 1) < 1:
        raise ValueError(f"max_aspect must be >= 1, got {opts['max_aspect']!r}")
    if opts.get("caption_control", "quarantine") not in CAPTION_CONTROL_POLICIES:
        raise ValueError(f"caption_control must be one of {', '.join(CAPTION_CONTROL_POLICIES)}, "
                         f"got {opts['caption_control']!r}")
    if opts.get("max_caption_chars", 1) < 1:
        raise ValueError(f"max_caption_chars must be >= 1, got {opts['max_caption_chars']!r}")


def _diff(a: dict, b: dict) -> str:
    return ", ".join(f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def _summary(meta: dict, out: str) -> dict:
    return {"input": meta["input"], "accepted": meta["accepted"], "quarantined": meta["quarantined"],
            "duplicates": meta["duplicates"], "manifest": storage.join(out, "manifest.parquet"),
            "quarantine": storage.join(out, "quarantine.parquet"),
            "duplicates_file": storage.join(out, "duplicates.parquet"), "shards": meta["shards"],
            "out": out, "size": meta["size"], "kind": meta["kind"], "reasons": meta["reasons"],
            "resumed_parts": meta.get("resumed_parts", 0)}


def ingest(src: str, out: str, size: int = 64, kind: str = "auto", shard_size: int = 1000,
           workers: int | None = None, near_dup_threshold: int = 4, heldout_fraction: float = 0.0,
           progress: bool = True, **options: Any) -> dict:
    """Ingest a source (folder, WebDataset tars, parquet/CSV manifest, shapes://...) into OUT.

    options (see DEFAULTS): min_side, max_aspect, max_caption_chars, max_pixels,
    near_dup_tolerance, png_compress_level, keep_opted_out, caption_control, allow_roots.

    Returns {"input", "accepted", "quarantined", "duplicates", "manifest", "quarantine",
    "duplicates_file", "shards", "out", "size", "kind", "reasons", "resumed_parts"}.
    A complete OUT with the same parameters is returned as it is; a partial one is resumed.
    """
    _check_args(size, shard_size, workers, near_dup_threshold, heldout_fraction, options)
    opts = {**DEFAULTS, **options}
    if isinstance(opts["allow_roots"], str):
        opts["allow_roots"] = [opts["allow_roots"]]
    opts["allow_roots"] = [str(r) for r in opts["allow_roots"]]
    if opts["max_pixels"] is None:
        opts["max_pixels"] = Image.MAX_IMAGE_PIXELS
    kind = sources.detect_kind(src) if kind == "auto" else kind
    if kind not in sources.KINDS:
        raise ValueError(f"kind must be one of auto, {', '.join(sources.KINDS)}; got {kind!r}")
    params = {"src": src if isinstance(src, str) else list(src), "kind": kind, "size": size,
              "shard_size": shard_size, "near_dup_threshold": near_dup_threshold,
              "heldout_fraction": heldout_fraction, **opts}
    _check_out(src, out, kind)
    o = _Out(out)
    try:
        done = o.read_json("dataset.json")
        fp = sources.fingerprint(src, kind)
        if done is not None:
            if done.get("parameters") != params:
                raise ValueError(f"out={out} already holds a dataset ingested with other parameters "
                                 f"({_diff(done.get('parameters') or {}, params)}); choose another out")
            if done.get("source_fingerprint") not in (None, fp):   # (None: written before it was recorded)
                raise ValueError(f"out={out} already holds a dataset ingested from {src}, which has changed "
                                 f"since (files added, removed or rewritten); choose another out, or remove "
                                 f"{out} to ingest the source as it is now")
            _remove_parts(o)  # a kill between dataset.json and the clean-up
            return _summary(done, out)
        return _run(src, o, params, workers, progress, fp)
    finally:
        o.close()


def _check_out(src: str | list[str], out: str, kind: str) -> None:
    """A dataset is written beside its source, never into it: the next ingest of that folder
    would read the dataset's own files as records."""
    if kind != "folder" or not isinstance(src, str) or storage.is_remote(src) or storage.is_remote(out):
        return
    if storage.within(out, src):
        raise ValueError(f"out={out} is inside the source folder {src}: write the dataset somewhere else")


def _remove_parts(o: _Out) -> None:
    storage.remove(o.uri("_parts"), recursive=True)


def _load_parts(o: _Out) -> list[dict]:
    """Finished parts' markers, in order; only a gap-free prefix counts."""
    markers = []
    for uri in storage.ls(o.uri("_parts"), "[0-9]*.done.json"):  # not .tmp-* files
        markers.append(json.loads(storage.read_bytes(uri)))
    markers.sort(key=lambda m: m["index"])
    good = []
    for i, m in enumerate(markers):
        if m["index"] != i or (good and m["input_start"] != good[-1]["input_end"]):
            break
        good.append({**m, "resumed": True})
    return good


def _run(src: str, o: _Out, params: dict, workers: int | None, progress: bool, fp: str | None) -> dict:
    cfg = {k: params[k] for k in ("size", "heldout_fraction", *DEFAULTS)}
    records = sources.iter_records(src, params["kind"], lazy=True, allow_roots=params["allow_roots"])
    # the first record before anything is written: a source that cannot be read at all (no
    # such directory, a manifest without an image column) fails here and leaves OUT untouched
    records = chain(list(islice(records, 1)), records)
    o.prepare()
    saved = o.read_json("_parts/params.json")
    if saved is not None and saved != params:
        raise ValueError(f"out={o.out} holds a partial ingest with other parameters ({_diff(saved, params)}); "
                         f"remove it or choose another out")
    begun = o.read_json("_parts/source.json")
    if begun is not None and begun.get("fingerprint") != fp:
        # finished parts cover records by position: on a source that changed they are other records
        log.warning("ingest: the source changed since the partial ingest in %s began; starting over", o.out)
        _remove_parts(o)
        storage.remove(o.uri("shards"), recursive=True)   # its shards too: fewer may be written now
        o.prepare()
        saved = None
    if saved is None:
        o.write_json(params, "_parts/params.json")
        o.write_json({"fingerprint": fp}, "_parts/source.json")

    index = hashing.NearDupIndex(params["near_dup_threshold"], params["near_dup_tolerance"])
    kept_keys: list[str] = []            # index id -> key
    seen: set[str] = set()               # every key so far (accepted, quarantined, duplicate)
    counts = {"input": 0, "accepted": 0, "quarantined": 0, "duplicates": 0}
    parts = _load_parts(o)
    for m in parts:  # rebuild the dedup index and counters from finished parts
        stem = f"_parts/{m['index']:05d}"
        man = o.read_table(f"{stem}.manifest.parquet").select(["key", "sha256", "phash", "_thumb"]).to_pylist()
        for r in man:
            index.add(r["sha256"], int(r["phash"], 16), r["_thumb"])
            kept_keys.append(r["key"])
            seen.add(r["key"])
        for name in ("quarantine", "duplicates"):
            seen.update(o.read_table(f"{stem}.{name}.parquet").column("key").to_pylist())
        counts["input"] += m["input_end"] - m["input_start"]
        counts["accepted"] += m["accepted"]
        counts["quarantined"] += m["quarantined"]
        counts["duplicates"] += m["duplicates"]
    if parts:
        log.info("ingest: resuming after %d finished shard(s), %d records", len(parts), counts["input"])

    bar = _Progress(progress, _known_total(params), initial=counts["input"])
    records = islice(records, counts["input"], None)  # the records of finished parts are skipped
    workers = workers if workers is not None else (os.cpu_count() or 1)
    part = _Part(o, len(parts), counts["input"])
    try:
        with _results(records, cfg, workers) as results:
            for res in results:
                counts["input"] += 1
                key = res["row"]["key"] if res["status"] == "ok" else res["key"]
                if key in seen:  # keys are ids: a second record under one key cannot be stored
                    res = {"status": "quarantined", "source": res["row"]["source"] if res["status"] == "ok"
                           else res["source"], "key": key, "reason": DUPLICATE_KEY,
                           "detail": f"key {key!r} already used by an earlier record"}
                seen.add(key)
                if res["status"] == "quarantined":
                    part.quarantine.append({k: res[k] for k in QUARANTINE_SCHEMA.names})
                    counts["quarantined"] += 1
                else:
                    row = res["row"]
                    hit = index.find(row["sha256"], res["phash"], res["thumb"])
                    if hit is not None:
                        kept, dkind, dist = hit
                        part.duplicates.append({"source": row["source"], "key": key,
                                                "kept_key": kept_keys[kept], "kind": dkind,
                                                "distance": dist})
                        counts["duplicates"] += 1
                    else:
                        index.add(row["sha256"], res["phash"], res["thumb"])
                        kept_keys.append(key)
                        row["_thumb"] = res["thumb"]
                        part.add(row, res["png"], res["meta"])
                        counts["accepted"] += 1
                        if len(part.manifest) == params["shard_size"]:
                            parts.append(part.commit(counts["input"]))
                            part = _Part(o, len(parts), counts["input"])
                bar.update(counts)
        if part.tar is not None or part.quarantine or part.duplicates or not parts:
            parts.append(part.commit(counts["input"]))
    except BaseException:
        part.abandon()
        raise
    finally:
        bar.close()
    return _assemble(o, params, parts, counts, resumed=sum(1 for m in parts if m.get("resumed")), fp=fp)


def _known_total(params: dict) -> int | None:
    if params["kind"] == "shapes":
        return sources.parse_shapes_uri(params["src"])["n"]
    return None


def _assemble(o: _Out, params: dict, parts: list[dict], counts: dict, resumed: int, fp: str | None) -> dict:
    """Parts -> manifest / quarantine / duplicates parquet (streamed, one part at a time),
    the balance check, dataset.json, then the parts are removed."""
    n_in = counts["input"]
    if n_in != counts["accepted"] + counts["quarantined"] + counts["duplicates"]:
        raise RuntimeError(f"ingest lost records: input {n_in} != accepted {counts['accepted']} + "
                           f"quarantined {counts['quarantined']} + duplicates {counts['duplicates']}")
    reasons: dict[str, int] = {}
    dup_kinds: dict[str, int] = {}
    splits: dict[str, int] = {}
    content = hashlib.sha256()
    rows_written = {}
    for name, schema in (("manifest", MANIFEST_SCHEMA), ("quarantine", QUARANTINE_SCHEMA),
                         ("duplicates", DUPLICATES_SCHEMA)):
        tmp = o.tmp_path(f"{name}.parquet")
        n = 0
        with pq.ParquetWriter(tmp, schema) as w:
            for m in parts:
                t = o.read_table(f"_parts/{m['index']:05d}.{name}.parquet").select(schema.names)
                n += t.num_rows
                if name == "manifest":
                    for key, sha, cap, split in zip(*(t.column(c).to_pylist() for c in
                                                      ("key", "sha256", "caption", "split"))):
                        content.update(f"{key}\t{sha}\t{cap}\n".encode())
                        splits[split] = splits.get(split, 0) + 1
                elif name == "quarantine":
                    for r in t.column("reason").to_pylist():
                        reasons[r] = reasons.get(r, 0) + 1
                else:
                    for r in t.column("kind").to_pylist():
                        dup_kinds[r] = dup_kinds.get(r, 0) + 1
                w.write_table(t.cast(schema))
        rows_written[name] = n
        o.publish(tmp, f"{name}.parquet")
    if (rows_written["manifest"], rows_written["quarantine"], rows_written["duplicates"]) != (
            counts["accepted"], counts["quarantined"], counts["duplicates"]):
        raise RuntimeError(f"ingest parts do not match the counts: {rows_written} vs {counts}")
    shards = [m["shard"] for m in parts if m["shard"]]
    meta = {**counts, "size": params["size"], "kind": params["kind"], "src": params["src"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "parameters": params, "shards": len(shards), "shard_files": shards,
            "reasons": dict(sorted(reasons.items())), "duplicate_kinds": dup_kinds,
            "splits": dict(sorted(splits.items())), "content_hash": content.hexdigest(),
            "balance": "input = accepted + quarantined + duplicates",
            "files": {"manifest": "manifest.parquet", "quarantine": "quarantine.parquet",
                      "duplicates": "duplicates.parquet", "shards": "shards/shard-%05d.tar"},
            "resumed_parts": resumed, "source_fingerprint": fp}
    o.write_json(meta, "dataset.json")
    _remove_parts(o)
    log.info("ingest: %d in -> %d accepted, %d quarantined, %d duplicates, %d shards -> %s",
             n_in, counts["accepted"], counts["quarantined"], counts["duplicates"], len(shards), o.out)
    return _summary(meta, o.out)
