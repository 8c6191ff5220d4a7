"""Reading an ingested dataset (docs/architecture.md, "Data on disk"): its manifest, its
shard list and its records, on file:// or s3://. Also follows a recaptioned dataset's pointer
to its parent's shards."""
from __future__ import annotations

import io
import json
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


def shards_root(dataset: str) -> str:
    """The dataset whose shards hold the images (a recaptioned dataset points at its parent)."""
    if storage.exists(storage.join(dataset, "shards")):
        return dataset
    meta = info(dataset)
    parent = meta.get("shards_from") or meta.get("parent")
    if not parent:
        raise FileNotFoundError(f"{dataset} has no shards/ and names no parent dataset")
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
