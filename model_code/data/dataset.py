"""Reading an ingested dataset (docs/architecture.md, "Data on disk"): its manifest, its
shard list and its records, on file:// or s3://. Also follows a recaptioned dataset's pointer
to its parent's shards."""
from __future__ import annotations

import io
import json
import os
import posixpath
import random
import tarfile
from typing import Iterator

import pandas as pd
from PIL import Image

from model_code import storage


def info(dataset: str) -> dict:
    """dataset.json of an ingested (or recaptioned) dataset."""
    path = storage.join(dataset, "dataset.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{dataset} is not an ingested dataset (no dataset.json)")
    return json.loads(storage.read_text(path))


def read_meta(dataset: str) -> dict:
    """dataset.json, or {} where there is none (a bare manifest.parquet dataset)."""
    path = storage.join(dataset, "dataset.json")
    return json.loads(storage.read_text(path)) if storage.exists(path) else {}


VERSION_KEYS = ("version", "version_id", "dataset_version")   # the spellings dataset.json has used


def version_id(meta: dict) -> str | None:
    """The version id a dataset.json records (ingest's DVC version, a recaption's version)."""
    return next((str(meta[k]) for k in VERSION_KEYS if meta.get(k)), None)


def content_id(meta: dict) -> str | None:
    """What the dataset holds, as one id: ingest's content hash (every record's key, pixels and
    caption), else its version id (a recaption's: its parent's content and every caption)."""
    return meta.get("content_hash") or version_id(meta)


def absolute(uri: str) -> str:
    """A dataset's location as it should be recorded: an absolute path (local) or the URI as
    given (s3://...), so a record means the same from any working directory."""
    return uri if storage.is_remote(uri) else os.path.abspath(storage.local_path(uri))


def _under(base: str, rel: str) -> str:
    if storage.is_remote(base):
        sch, path = base.split("://", 1)
        return f"{sch}://{posixpath.normpath(posixpath.join(path, rel))}"
    return os.path.normpath(os.path.join(absolute(base), rel))


def parent_of(dataset: str, meta: dict | None = None, key: str = "parent") -> str | None:
    """The dataset a recaptioned dataset.json names (`key`: "parent" or "shards_from"), absolute.

    Recaption records an absolute path or a URI. Older recaptions recorded the path as typed,
    relative to a working directory nobody wrote down: their `shard_files` (always absolute)
    say where the parent's shards were; else a relative name is read against the dataset's own
    directory, never against today's working directory (which may hold another dataset)."""
    meta = read_meta(dataset) if meta is None else meta
    parent = meta.get(key) or (meta.get("parent") if key != "parent" else None)
    if not parent:
        return None
    parent = str(parent)
    if storage.is_remote(parent) or os.path.isabs(storage.local_path(parent)):
        return parent
    files = [str(f) for f in meta.get("shard_files") or []]
    if files and (storage.is_remote(files[0]) or os.path.isabs(files[0])):
        return posixpath.dirname(posixpath.dirname(files[0])) if storage.is_remote(files[0]) \
            else os.path.dirname(os.path.dirname(files[0]))     # .../PARENT/shards/shard-N.tar
    return _under(dataset, parent)


def shards_root(dataset: str) -> str:
    """The dataset whose shards hold the images (a recaptioned dataset points at its parent)."""
    if storage.exists(storage.join(dataset, "shards")):
        return dataset
    parent = parent_of(dataset, info(dataset), "shards_from")
    if not parent:
        raise FileNotFoundError(f"{dataset} has no shards/ and names no parent dataset")
    if not storage.exists(storage.join(parent, "shards")):
        # a clear stop rather than an empty (or another dataset's) shard list
        raise FileNotFoundError(f"{dataset}: its parent dataset {parent} has no shards/ (moved or deleted?)")
    return parent


def shard_list(dataset: str) -> list[str]:
    root = shards_root(dataset)
    return storage.ls(storage.join(root, "shards"), "shard-*.tar")


def manifest(dataset: str) -> pd.DataFrame:
    with storage.open_uri(storage.join(shards_root(dataset), "manifest.parquet")) as f:
        return pd.read_parquet(f)


def iter_shard(shard_uri: str) -> Iterator[tuple[str, Image.Image, dict]]:
    """(key, RGB image, manifest row) for each record of one WebDataset shard."""
    with storage.open_uri(shard_uri, "rb") as f:
        data = f.read()
    groups: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            key, _, ext = m.name.rpartition(".")
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext] = tar.extractfile(m).read()
    for key in order:
        g = groups[key]
        img_bytes = next((g[e] for e in ("png", "jpg", "jpeg", "webp") if e in g), None)
        if img_bytes is None:
            continue
        row = json.loads(g["json"]) if "json" in g else {}
        yield key, Image.open(io.BytesIO(img_bytes)).convert("RGB"), row


def iter_records(dataset: str, shards: list[str] | None = None) -> Iterator[tuple[str, Image.Image, dict]]:
    for uri in shards or shard_list(dataset):
        yield from iter_shard(uri)


def sample_images(dataset: str, k: int = 8, seed: int = 0, cols: int = 4) -> Image.Image:
    """A captioned grid of k records from the first shard (README and report pictures)."""
    from model_code.viz import image_grid
    recs = []
    for rec in iter_records(dataset, shard_list(dataset)[:1]):
        recs.append(rec)
        if len(recs) >= 4 * k:
            break
    random.Random(seed).shuffle(recs)
    recs = recs[:k]
    caps = [(r.get("curated_caption") or f"alt-text: {r.get('caption', '')}") for _, _, r in recs]
    return image_grid([im for _, im, _ in recs], caps, cols=cols, cell=160, caption_lines=7,
                      chars_per_line=26)
