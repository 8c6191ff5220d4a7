"""Write a raw Shapes-world source: an ordinary image folder with a captions.jsonl beside it.

Layout (docs/architecture.md, "Data on disk"):
    OUT/images/{key}.png
    OUT/captions.jsonl    one object per line: key, file, caption (web alt-text),
                          curated_caption (or null), scene (the scene graph), license

Every item is a pure function of (seed, index) (`shapes_item`), so the output is the same
whatever the number of workers, n=1000 is a prefix of n=2000, and the `shapes://` source
(sources.py) yields exactly these records without touching disk.

Resumable: images are written atomically, captions.jsonl last; a rerun renders only the
missing images and leaves a complete output alone.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import random
import tempfile
from multiprocessing import get_context
from typing import Any, Iterator

from model_code import storage
from model_code.data import shapes

log = logging.getLogger(__name__)

LICENSE = "CC0-1.0"
CAPTIONS = "captions.jsonl"
IMAGES = "images"
CHUNK = 64  # indices per worker task


def item_key(seed: int, i: int) -> str:
    return f"shapes-{seed}-{i:07d}"


def item_rng(seed: int, i: int) -> random.Random:
    """The item's own generator: a hash of (seed, index), so items are independent of order
    and of how the index range is split between workers."""
    digest = hashlib.sha256(f"easel-shapes:{seed}:{i}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def is_curated(i: int, fraction: float) -> bool:
    """Exactly floor(n * fraction) of the first n items are curated, spread evenly
    (item i is curated when floor((i+1) f) steps up)."""
    return math.floor((i + 1) * fraction + 1e-9) > math.floor(i * fraction + 1e-9)


def curated_count(n: int, fraction: float) -> int:
    return math.floor(n * fraction + 1e-9)


def shapes_item(seed: int, i: int, size: int = 64, curated_fraction: float = 0.1) -> dict[str, Any]:
    """The captions.jsonl row of item i (no pixels): key, file, caption, curated_caption,
    scene, license. The image is `shapes.render(row["scene"])`."""
    rng = item_rng(seed, i)
    key = item_key(seed, i)
    scene = shapes.sample_scene(rng, size)
    caption = shapes.alt_text(scene, rng, key)
    curated = shapes.curated_caption(scene, rng) if is_curated(i, curated_fraction) else None
    return {"key": key, "file": f"{IMAGES}/{key}.png", "caption": caption,
            "curated_caption": curated, "scene": scene, "license": LICENSE}


def render_png(scene: dict) -> bytes:
    buf = io.BytesIO()
    shapes.render(scene).save(buf, "PNG")
    return buf.getvalue()


def _check_args(n: int, size: int, curated_fraction: float) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(size, int) or not 8 <= size <= 4096:
        raise ValueError(f"size must be an integer in [8, 4096], got {size!r}")
    if not 0.0 <= curated_fraction <= 1.0:
        raise ValueError(f"curated_fraction must be in [0, 1], got {curated_fraction!r}")


def _write_atomic_local(path: str, data: bytes) -> None:
    # a kill mid-write leaves only a .tmp file, never a truncated PNG that looks finished
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _render_chunk(job: tuple[str, int, int, float, list[int]]) -> int:
    """Worker: render and write the images of a list of indices. Returns how many."""
    images_uri, seed, size, frac, indices = job
    for i in indices:
        row = shapes_item(seed, i, size, frac)
        uri = storage.join(images_uri, f"{row['key']}.png")
        data = render_png(row["scene"])
        if storage.is_remote(uri):
            storage.write_bytes(uri, data)  # an S3 PUT is atomic
        else:
            _write_atomic_local(storage.local_path(uri), data)
    return len(indices)


def _existing_images(images_uri: str) -> set[str]:
    if storage.is_remote(images_uri):
        return {u.rsplit("/", 1)[-1] for u in storage.ls(images_uri)}
    path = storage.local_path(images_uri)
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def _rows(n: int, size: int, seed: int, frac: float) -> Iterator[dict]:
    for i in range(n):
        yield shapes_item(seed, i, size, frac)


def _captions_complete(captions_uri: str, n: int, size: int, seed: int, frac: float) -> bool:
    """True when captions.jsonl is exactly this source's; ValueError when it is another's."""
    if not storage.exists(captions_uri):
        return False
    with storage.open_uri(captions_uri, "rt", encoding="utf-8") as f:
        lines = iter(f)
        for i, want in enumerate(_rows(n, size, seed, frac)):
            line = next(lines, None)
            got = json.loads(line) if line and line.strip() else None
            if got != want:
                # partial files never exist (written last, atomically): this is another source
                raise ValueError(
                    f"out={os.path.dirname(captions_uri)} already holds a different source: line {i + 1} of "
                    f"{CAPTIONS} is not item {want['key']} of (n={n}, size={size}, seed={seed}, "
                    f"curated_fraction={frac}); choose an empty directory")
        if next(lines, "").strip():
            raise ValueError(f"out={os.path.dirname(captions_uri)}: {CAPTIONS} has more than n={n} lines "
                             f"(another source); choose an empty directory")
    return True


def synthesize(out: str, n: int = 1000, size: int = 64, seed: int = 0, curated_fraction: float = 0.1,
               workers: int | None = None) -> dict:
    """Write n Shapes-world images and their captions to `out` (a directory or s3:// prefix).

    Returns {"n", "out", "curated", "size", "seed", "rendered"} ("rendered": images drawn by
    this call; 0 when the output was already complete).
    """
    _check_args(n, size, curated_fraction)
    images_uri = storage.join(out, IMAGES)
    captions_uri = storage.join(out, CAPTIONS)
    storage.makedirs(images_uri)

    have = _existing_images(images_uri)
    for name in [h for h in have if ".png.tmp" in h]:  # left by a killed run
        storage.remove(storage.join(images_uri, name))
    want = {f"{item_key(seed, i)}.png" for i in range(n)}
    stray = sorted(name for name in have - want if name.endswith(".png"))
    if stray:
        raise ValueError(f"out={out}: {IMAGES}/ holds {len(stray)} images that are not part of this source "
                         f"(e.g. {stray[0]}); choose an empty directory")
    complete = _captions_complete(captions_uri, n, size, seed, curated_fraction)
    todo = [i for i in range(n) if f"{item_key(seed, i)}.png" not in have]

    rendered = 0
    if todo:
        chunks = [todo[j:j + CHUNK] for j in range(0, len(todo), CHUNK)]
        jobs = [(images_uri, seed, size, curated_fraction, c) for c in chunks]
        workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        log.info("synth: rendering %d of %d images with %d workers -> %s", len(todo), n, workers, out)
        if workers == 1:
            rendered = sum(map(_render_chunk, jobs))
        else:
            with get_context("fork").Pool(workers) as pool:
                for k in pool.imap_unordered(_render_chunk, jobs):
                    rendered += k
    if not complete:
        # captions.jsonl last, atomically: its presence marks a complete source
        fd, tmp = tempfile.mkstemp(suffix=".jsonl", prefix=".captions-",
                                   dir=None if storage.is_remote(out) else storage.local_path(out))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for row in _rows(n, size, seed, curated_fraction):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            if storage.is_remote(out):
                storage.put_file(tmp, captions_uri)
            else:
                os.replace(tmp, storage.local_path(captions_uri))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return {"n": n, "out": out, "curated": curated_count(n, curated_fraction), "size": size,
            "seed": seed, "rendered": rendered}
