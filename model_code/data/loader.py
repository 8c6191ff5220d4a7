"""Training data: an ingested dataset (shards + manifest + caption sidecars) as a deterministic,
resumable stream of (image, caption) batches.

    from model_code.data.loader import make_loader
    loader = make_loader("runs/x/data", batch_size=32, total_batches=1000, seed=0,
                         caption_policy="blend")
    batch = next(iter(loader))   # {"image": (B,3,H,W) float in [-1,1], "caption": [B str],
                                 #  "key": [B str], "position": (B,) long}

Design (why map-style, not a WebDataset stream). Training runs for `max_steps` over a repeated
stream of the data, shuffled afresh each epoch. We define that stream as a pure function:

    stream[p] = record perm_e[p mod n],   e = p // n,   perm_e = permutation(n, seed, e)

so the data a step sees depends only on the step. A restarted run (spot preemption) recomputes
its position from the checkpoint (`samples_seen`) and continues at exactly the next sample: no
buffered shuffle state, no worker-order dependence, no skipping by re-reading. Every record is
seen once per epoch (a full permutation, not a shuffle buffer), and the global batch of step s is
the same whatever the number of workers. Random access needs an index: the loader scans each tar
once for its members' byte offsets (headers only, tarfile's offset_data) and reads a sample's PNG
directly at its offset. Not wids (WebDataset's indexed datasets, the field's tool for this): its
tar index (wids 0.1.11, MMIndexedTar) reads ustar header names only, so a member whose name needs
a PAX or GNU long-name header (a key over 100 bytes, a non-ASCII key; Python's tarfile, which
WebDataset's TarWriter uses, writes PAX) comes back truncated or mangled (checked 2026-12-04), and
the manifest's keys would no longer find their images; tarfile reads those headers.
Remote shards (s3://) are copied once to a local cache (`EASEL_DATA_CACHE`, default
~/.cache/easel/shards; shards are immutable, so a cached copy of the right size is reused), which
also makes random reads as fast as local ones. Datasets that fit (`cache="auto"`: decoded pixels
under 2 GiB, so tiny and small) are decoded once into one uint8 array; workers share it through
fork without copying, and a step then costs a slice and a cast.

Captions come from manifest.parquet (the `caption`, `curated_caption`, `scene` columns the shards'
JSON also carry) and the recaption sidecars, chosen per sample by model_code.text.blend.
Rows whose manifest `split` is not "train" (the held-out prompts) are never trained on.
No augmentation: a flip would turn "left of" into "right of" in the Shapes world.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from model_code import storage
from model_code.text.blend import CaptionPolicy, load_sidecars

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
DECODED_CACHE_LIMIT = 2 << 30  # bytes of uint8 pixels below which cache="auto" decodes everything


# --------------------------------------------------------------------------- shards on local disk
def cache_dir() -> str:
    return os.environ.get("EASEL_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "easel", "shards")


def local_shard(uri: str) -> str:
    """A local path for a shard: file URIs as they are, s3 objects copied once into the cache
    (atomic rename, so concurrent ranks on one node never see a half-written file)."""
    if not storage.is_remote(uri):
        return storage.local_path(uri)
    name = hashlib.sha1(uri.encode()).hexdigest()[:16] + "-" + os.path.basename(uri)
    path = os.path.join(cache_dir(), name)
    if os.path.exists(path) and os.path.getsize(path) == storage.size(uri):
        return path
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.part"
    storage.get_file(uri, tmp)
    os.replace(tmp, path)
    return path


def scan_tar(path: str) -> dict[str, tuple[int, int]]:
    """{member name: (byte offset of its data, size)} of a tar, reading headers only."""
    with tarfile.open(path, "r:") as tar:  # "r:" = uncompressed: offsets are file offsets
        return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}


# --------------------------------------------------------------------------- the index
class ShardIndex:
    """Where every trainable record's image lives, plus its caption fields, in manifest order.

    Arrays (length n): keys, shard (int, into `paths`), offset, length; `record(i)` is the
    caption-bearing row of record i (key, caption, curated_caption, scene, and short/long from the
    sidecars). Built from manifest.parquet, the tars and the sidecars. Strings are kept in Arrow
    and fixed-width numpy arrays, not Python objects: DataLoader workers share them through fork
    without the copy-on-write growth that reference counts cause on lists of str."""

    FIELDS = ("key", "caption", "curated_caption", "scene", "short", "long")

    def __init__(self, dataset: str, split: str | None = "train", policy: CaptionPolicy | None = None):
        import pyarrow as pa

        from model_code.data.dataset import manifest, read_meta, shard_list
        self.dataset = dataset
        man = manifest(dataset)
        if "key" not in man.columns:
            raise ValueError(f"{dataset}/manifest.parquet has no 'key' column")
        if split is not None and "split" in man.columns:
            man = man[man["split"] == split]
        side = load_sidecars(dataset)
        self.has_sidecars = side is not None
        if side is not None:
            man = man.drop(columns=[c for c in ("short", "long") if c in man.columns])
            man = man.merge(side[["short", "long"]], left_on="key", right_index=True, how="left")
        if policy is not None and policy.policy == "curated":
            man = man[[policy.eligible(r) for r in man[["curated_caption"]].to_dict("records")]]
        if len(man) == 0:
            hint = ("; the captioner learns from curated captions (DALL-E 3's careful descriptions: a "
                    "`curated_caption` field on some records), and this dataset has none: add some, or "
                    "recaption with a pretrained captioner (`easel recaption --captioner pretrained:DIR`)"
                    if policy is not None and policy.policy == "curated" else "")
            raise ValueError(f"{dataset}: no records to train on (split={split!r}"
                             f"{', policy=' + policy.policy if policy else ''}){hint}")
        self.meta = read_meta(dataset)

        uris = shard_list(dataset)
        if not uris:
            raise ValueError(f"{dataset}: no shards (shards/shard-*.tar)")
        self.paths = [local_shard(u) for u in uris]
        members: dict[str, tuple[int, int, int]] = {}  # member name -> (shard, offset, size)
        for s, path in enumerate(self.paths):
            for name, (off, size) in scan_tar(path).items():
                members[name] = (s, off, size)
        keys = man["key"].astype(str).tolist()
        loc, missing = [], []
        for k in keys:  # WebDataset: KEY.png (the key itself may contain dots)
            hit = next((members[f"{k}.{e}"] for e in IMAGE_EXTS if f"{k}.{e}" in members), None)
            if hit is None:
                missing.append(k)
            else:
                loc.append(hit)
        if missing:
            raise ValueError(f"{dataset}: {len(missing)} manifest keys have no image in the shards "
                             f"(first: {missing[0]!r})")
        loc = np.array(loc, dtype=np.int64).reshape(-1, 3)
        self.keys = np.array(keys, dtype=str)  # fixed-width unicode: no per-key Python objects
        self.shard, self.offset, self.length = loc[:, 0], loc[:, 1], loc[:, 2]
        cols = [c for c in self.FIELDS if c in man.columns]
        table = pa.Table.from_pandas(man[cols].reset_index(drop=True), preserve_index=False)
        self._columns = {c: table.column(c).combine_chunks() for c in cols}
        if policy is not None:  # fail now, not at step 40 000, if a record lacks a needed caption
            for i in range(len(self)):
                policy.check(self.record(i), self.has_sidecars)

    def record(self, i: int) -> dict[str, Any]:
        return {c: col[i].as_py() for c, col in self._columns.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def read_image_bytes(self, i: int, files: dict[int, Any]) -> bytes:
        s = int(self.shard[i])
        f = files.get(s)
        if f is None:
            f = files[s] = open(self.paths[s], "rb")
        f.seek(int(self.offset[i]))
        return f.read(int(self.length[i]))

    @property
    def version(self) -> str | None:
        """The dataset version id from dataset.json, if it records one."""
        from model_code.data.dataset import version_id
        return version_id(self.meta)

    @property
    def content_hash(self) -> str | None:
        """Ingest's hash of (key, pixels, caption) of every record: the data's identity."""
        return self.meta.get("content_hash")


def scene_of(record: dict) -> dict | None:
    from model_code.data.shapes import parse_scene
    return parse_scene(record.get("scene"))


def decode_rgb(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy


def to_model_images(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return pixels.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------- the stream
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The record order of one epoch: a seeded full permutation (independent of anything else)."""
    return np.random.Generator(np.random.PCG64([int(seed), int(epoch)])).permutation(n)


class ImageTextStream(Dataset):
    """Map-style view of the infinite, per-epoch-shuffled stream: item p is the sample at global
    stream position p (see the module docstring). len() is the epoch length n."""

    def __init__(self, index: ShardIndex, policy: CaptionPolicy | None, seed: int = 0,
                 cache: str = "auto", image_size: int | None = None, with_scene: bool = False):
        if cache not in ("auto", "decoded", "none"):
            raise ValueError(f"data cache must be auto, decoded or none, got {cache!r}")
        self.index, self.policy, self.seed = index, policy, int(seed)
        self.with_scene = with_scene
        self._perms: dict[int, np.ndarray] = {}
        self._files: dict[int, Any] = {}
        first = decode_rgb(index.read_image_bytes(0, self._files))
        self.image_shape = first.shape  # (H, W, 3): ingest normalised every image to one size
        if image_size is not None and first.shape[:2] != (image_size, image_size):
            raise ValueError(f"{index.dataset}: images are {first.shape[1]}x{first.shape[0]}, but "
                             f"data.size is {image_size}; ingest the data at this preset's size")
        nbytes = len(index) * int(np.prod(first.shape))
        self.pixels: np.ndarray | None = None
        if cache == "decoded" or (cache == "auto" and nbytes <= DECODED_CACHE_LIMIT):
            self.pixels = np.empty((len(index), *first.shape), dtype=np.uint8)  # (N, H, W, 3)
            for i in range(len(index)):
                self.pixels[i] = self._decode(i)
            self._close()

    def __len__(self) -> int:
        return len(self.index)

    def _close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict:  # open files do not cross into worker processes
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def _decode(self, i: int) -> np.ndarray:
        px = decode_rgb(self.index.read_image_bytes(i, self._files))
        if px.shape != self.image_shape:
            raise ValueError(f"{self.index.dataset}: record {self.index.keys[i]!r} is "
                             f"{px.shape[1]}x{px.shape[0]}, others are "
                             f"{self.image_shape[1]}x{self.image_shape[0]}")
        return px

    def record_at(self, position: int) -> int:
        n = len(self.index)
        epoch, j = divmod(int(position), n)
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) >= 2:  # a batch can straddle two epochs; keep no more than that
                self._perms.pop(min(self._perms))
            perm = self._perms[epoch] = epoch_permutation(n, self.seed, epoch)
        return int(perm[j])

    def __getitem__(self, position: int) -> dict[str, Any]:
        i = self.record_at(position)
        px = self.pixels[i] if self.pixels is not None else self._decode(i)
        out = {"pixels": torch.from_numpy(np.ascontiguousarray(px)), "key": str(self.index.keys[i]),
               "position": int(position)}
        if self.policy is not None:
            out["caption"] = self.policy.choose(self.index.record(i), position, self.index.has_sidecars)
        if self.with_scene:
            out["scene"] = scene_of(self.index.record(i))
        return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch = {"image": to_model_images(torch.stack([s["pixels"] for s in samples])),  # (B,3,H,W)
             "key": [s["key"] for s in samples],
             "position": torch.tensor([s["position"] for s in samples], dtype=torch.long)}
    for field in ("caption", "scene"):
        if field in samples[0]:
            batch[field] = [s[field] for s in samples]
    return batch


class TokenizingCollate:
    """collate, then the captions tokenized to `max_len` as "text_ids" (B, L) / "text_mask" (B, L)
    (and "text_max_len"):
    the tokenizer runs in the loader's worker processes, beside image decoding, instead of on the
    training process between steps."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, int(max_len)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(samples)
        if "caption" in batch:
            batch["text_ids"], batch["text_mask"] = self.tokenizer.encode_batch(batch["caption"],
                                                                                max_len=self.max_len)
            batch["text_max_len"] = self.max_len
        return batch


class StepBatchSampler(Sampler[list[int]]):
    """Micro-batch b of rank r reads stream positions
        start_sample + ((b - start_batch) * world_size + r) * batch_size + [0, batch_size)
    for b in [start_batch, total_batches): the ranks of one step read disjoint, consecutive slices
    of the stream, and a resumed run continues at `start_sample` (the samples seen so far, saved in
    the checkpoint), whatever the world size was before.

    len() is `total_batches`, not the number left: Lightning restores its batch counter to
    `start_batch` on resume and ends the epoch when the counter reaches len()."""

    def __init__(self, batch_size: int, total_batches: int, start_batch: int = 0,
                 start_sample: int | None = None, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= start_batch <= total_batches:
            raise ValueError(f"start_batch {start_batch} must be in [0, total_batches={total_batches}]")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.batch_size, self.total_batches, self.start_batch = batch_size, total_batches, start_batch
        self.start_sample = start_batch * batch_size * world_size if start_sample is None else start_sample
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.total_batches

    def __iter__(self) -> Iterator[list[int]]:
        B, W = self.batch_size, self.world_size
        for b in range(self.start_batch, self.total_batches):
            p0 = self.start_sample + ((b - self.start_batch) * W + self.rank) * B
            yield list(range(p0, p0 + B))


def make_dataset(data: str, caption_policy: str | None = "blend", seed: int = 0,
                 synthetic_fraction: float = 0.95, synthetic_kind: str = "long",
                 cache: str = "auto", split: str | None = "train",
                 image_size: int | None = None, with_scene: bool = False) -> ImageTextStream:
    """The stream over an ingested dataset. caption_policy None: images only (dVAE, upsampler);
    with_scene: each sample also carries its scene graph (dict, or None for non-Shapes data)."""
    policy = None if caption_policy is None else CaptionPolicy(
        caption_policy, synthetic_fraction=synthetic_fraction, synthetic_kind=synthetic_kind, seed=seed)
    return ImageTextStream(ShardIndex(data, split=split, policy=policy), policy, seed=seed,
                           cache=cache, image_size=image_size, with_scene=with_scene)


class StreamLoader(DataLoader):
    """A DataLoader over the stream that says it is resumable: its position is not state to save
    but a function of the run's progress (the sampler's start, from the checkpoint's samples_seen),
    so `state_dict` only records it and `load_state_dict` has nothing to restore. (Lightning treats
    loaders with this interface as resumable mid-epoch.)"""

    def state_dict(self) -> dict:
        s = self.batch_sampler
        return {"start_batch": s.start_batch, "start_sample": s.start_sample}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_loader(data: str | ImageTextStream, batch_size: int, total_batches: int, *,
                start_batch: int = 0, start_sample: int | None = None, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                text: tuple[Any, int] | None = None, **dataset_kw) -> DataLoader:
    """A DataLoader of `total_batches` micro-batches (fewer when resuming: from `start_batch`).
    text: (tokenizer, max_len): batches also carry the captions tokenized (TokenizingCollate)."""
    ds = data if isinstance(data, ImageTextStream) else make_dataset(data, **dataset_kw)
    sampler = StepBatchSampler(batch_size, total_batches, start_batch, start_sample, rank, world_size)
    if text is not None and num_workers > 0:
        # the tokenizer's own threads in forked workers: tokenizers warns and turns them off
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return StreamLoader(ds, batch_sampler=sampler, num_workers=num_workers,
                        collate_fn=TokenizingCollate(*text) if text is not None else collate,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if num_workers > 0 else None)
