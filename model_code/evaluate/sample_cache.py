"""Resumable sampling: each batch an evaluation or a table samples is written under its `out` as
soon as it is drawn, and a re-run with the same inputs reads it back instead of sampling it again.
A table at the laptop preset samples for tens of minutes; killed (preempted pod, Ctrl-C) it resumes
at the first batch it had not written, where before it started over.

A batch is keyed by everything that decides its images: the bundle's content (every file's path,
size and modification time, so a bundle retrained in place is a new key), the batch's prompts, the
number of images and candidates, the seed and the sampling settings. A changed input is a new key,
never a stale image. One file per batch (.npz: uint8 images, CLIP scores, embeddings, prompts); a
file that does not load (cut short by the kill) is sampled again.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Callable

import numpy as np
import torch
from PIL import Image

from model_code import storage

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"   # under an evaluation's or a table's out; removed once the work finished


def bundle_fingerprint(bundle: str) -> str:
    """What identifies a bundle's content cheaply (no weights read): a hash of every file's path,
    size and modification time (ETag on S3). A bundle rebuilt at the same place (a re-trained
    part) changes it."""
    return storage.fingerprint(bundle)


class SampleCache:
    """Batches of one bundle under `root`; SampleCache() (no root) keeps nothing and samples every
    batch. `fingerprint` is the bundle's bundle_fingerprint when the caller already computed it."""

    def __init__(self, root: str | None = None, bundle: str | None = None, fingerprint: str | None = None):
        if root is not None and bundle is None and fingerprint is None:
            raise ValueError("a sample cache with a root needs the bundle it holds samples of")
        self.root = root
        self.fingerprint = (fingerprint or bundle_fingerprint(bundle)) if root else ""
        self.hits = 0   # batches read back instead of sampled

    def _path(self, key: dict) -> str:
        text = json.dumps({"bundle": self.fingerprint, **key}, sort_keys=True, default=str)
        return storage.join(self.root, f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz")

    def _read(self, path: str) -> dict | None:
        if not storage.exists(path):
            return None
        try:
            with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # a file cut short by the kill that stopped the last run
            log.warning("sample cache: %s does not load (%s): sampling that batch again", path, e)
            return None

    def arrays(self, key: dict, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The batch's arrays: read back when this key was written, else make() and write them."""
        if self.root is None:
            return make()
        path = self._path(key)
        got = self._read(path)
        if got is not None:
            self.hits += 1
            return got
        arrays = make()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        # written to a side name and moved: a kill mid-write leaves no half file under the real name
        tmp = path + ".part"
        storage.write_bytes(tmp, buf.getvalue())
        storage.move(tmp, path)
        return arrays

    def clear(self) -> None:
        """Remove every batch under the root (the work they were kept for has finished)."""
        if self.root is not None:
            storage.remove(self.root, recursive=True)

    def generated(self, key: dict, make: Callable[[], list]) -> list:
        """Generator.generate's results for one batch (make() draws them), through the cache."""
        if self.root is None:
            return make()
        return arrays_to_generated(self.arrays(key, lambda: generated_to_arrays(make())))


def images_to_array(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])


def array_to_images(arr: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(a, "RGB") for a in arr]


def generated_to_arrays(generated: list) -> dict[str, np.ndarray]:
    """Generator.generate's results (same n per prompt) -> arrays."""
    emb = [g.embeddings for g in generated]
    out = {"images": np.stack([images_to_array(g.images) for g in generated]),        # (P, n, H, W, 3)
           "scores": np.array([g.scores for g in generated], dtype=np.float64),         # (P, n)
           "candidates": np.array([g.candidates for g in generated], dtype=np.int64),   # (P,)
           "prompts": np.array([g.prompt for g in generated])}
    if all(e is not None for e in emb):
        out["embeddings"] = torch.stack(emb).numpy()                                  # (P, n, D)
    return out


def arrays_to_generated(arrays: dict[str, np.ndarray]) -> list:
    from model_code.generate import Generated
    emb = arrays.get("embeddings")
    return [Generated(str(arrays["prompts"][i]), array_to_images(arrays["images"][i]),
                      [float(s) for s in arrays["scores"][i]], candidates=int(arrays["candidates"][i]),
                      embeddings=torch.from_numpy(emb[i].copy()) if emb is not None else None)
            for i in range(len(arrays["prompts"]))]
