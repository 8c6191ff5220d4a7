"""Caption policies: which caption a generator trains on for each image (DALL-E 3, section 3).

A record carries up to five captions: the original web alt-text, a curated caption (for a small
curated fraction), the scene graph (Shapes data), and the recaptioner's synthetic `short` and
`long` captions (sidecars ``DIR/captions/shard-*.parquet`` with columns key, original, short,
long). Policies:

    original   the web alt-text, as scraped
    short      the synthetic short caption (~20 tokens)
    long       the synthetic long, descriptive caption (~100-200 tokens)
    blend      synthetic (long by default) with probability `synthetic_fraction`, else original.
               DALL-E 3 trains on 95% synthetic / 5% original: the 5% keeps the model usable with
               short, human-style prompts (the seed's table: 95/5 beats both 100/0 and 0/100).
    curated    the curated human caption; records without one are skipped by the loader
               (the captioner's fine-tuning set)

Where a synthetic caption is missing:
- with sidecars, an empty/null synthetic caption falls back to the original (the recaptioner's own
  rule: a caption that failed its filters is replaced by the original) and is counted;
- without sidecars (a dataset not yet recaptioned), the curated caption stands in for `long` where
  present, else the scene graph's canonical caption (`shapes.long_caption` / `short_caption`) for
  Shapes data; a record with none of these is an error (ValueError naming the key), never a
  silent switch to the original caption.

The choice for a sample is a pure function of (seed, stream position): the same run re-reads the
same captions after a restart, and each pass over the data draws a fresh blend.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

POLICIES = ("original", "short", "long", "blend", "curated")
SYNTHETIC_KINDS = ("long", "short")
DEFAULT_SYNTHETIC_FRACTION = 0.95  # DALL-E 3: 95% synthetic / 5% original captions
SIDECAR_COLUMNS = ("key", "original", "short", "long")


def _present(v: Any) -> bool:
    """A usable caption: a non-empty string (pandas gives None or NaN for missing cells)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return isinstance(v, str) and bool(v.strip())


def _scene(record: Mapping[str, Any]) -> dict | None:
    """The record's scene graph when it has objects to caption."""
    from model_code.data.shapes import parse_scene
    s = parse_scene(record.get("scene"))
    return s if s and s.get("objects") else None


def uniform(seed: int, position: int) -> float:
    """A uniform number in [0, 1) from (seed, position): splitmix64, no RNG state to carry."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(position) + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


class CaptionPolicy:
    """Picks the training caption of a record. `record` is a mapping with `key`, `caption` (the
    original alt-text), optional `curated_caption`, `scene`, `short`, `long`; `has_sidecars` says
    whether short/long come from a recaption run (then missing ones fall back to the original)."""

    def __init__(self, policy: str = "blend", synthetic_fraction: float = DEFAULT_SYNTHETIC_FRACTION,
                 synthetic_kind: str = "long", seed: int = 0):
        if policy not in POLICIES:
            raise ValueError(f"caption_policy must be one of {POLICIES}, got {policy!r}")
        if synthetic_kind not in SYNTHETIC_KINDS:
            raise ValueError(f"synthetic_kind must be one of {SYNTHETIC_KINDS}, got {synthetic_kind!r}")
        f = float(synthetic_fraction)
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {synthetic_fraction!r}")
        self.policy, self.synthetic_fraction, self.synthetic_kind = policy, f, synthetic_kind
        self.seed = int(seed)

    def __repr__(self) -> str:
        return (f"CaptionPolicy({self.policy!r}, synthetic_fraction={self.synthetic_fraction}, "
                f"synthetic_kind={self.synthetic_kind!r})")

    # ------------------------------------------------------------------ the captions of a record
    @staticmethod
    def original(record: Mapping[str, Any]) -> str:
        cap = record.get("caption")
        if not _present(cap):
            cap = record.get("original")
        if not _present(cap):
            raise ValueError(f"record {record.get('key')!r} has no original caption")
        return cap

    @staticmethod
    def synthetic(record: Mapping[str, Any], kind: str, has_sidecars: bool) -> tuple[str, str]:
        """(caption, source) for kind "long" or "short"; source is one of sidecar, original
        (sidecar fallback), curated, scene."""
        if has_sidecars:
            cap = record.get(kind)
            if _present(cap):
                return cap, "sidecar"
            return CaptionPolicy.original(record), "original"
        if kind == "long" and _present(record.get("curated_caption")):
            return record["curated_caption"], "curated"
        scene = _scene(record)
        if scene is not None:
            from model_code.data import shapes
            return (shapes.long_caption(scene) if kind == "long" else shapes.short_caption(scene)), "scene"
        raise ValueError(
            f"record {record.get('key')!r} has no {kind} caption: the dataset has no recaption "
            f"sidecars (captions/shard-*.parquet), and the record has no "
            f"{'curated caption or ' if kind == 'long' else ''}scene graph to stand in; recaption the "
            f"dataset first (`easel recaption`, DALL-E 3's synthetic captions), or train on its own "
            f"captions (caption_policy original: `--set train.PART.caption_policy=original`)")

    def needs(self) -> tuple[str, ...]:
        """The caption kinds this policy can draw (for checking a dataset up front)."""
        return {"original": ("original",), "short": ("short",), "long": ("long",),
                "blend": ("original", self.synthetic_kind), "curated": ("curated",)}[self.policy]

    def check(self, record: Mapping[str, Any], has_sidecars: bool = False) -> None:
        """ValueError if the record lacks a caption this policy may draw (checked up front by the
        loader, so a bad dataset fails before training, not at step 40 000)."""
        for kind in self.needs():
            if kind == "original":
                self.original(record)
            elif kind == "curated":
                if not _present(record.get("curated_caption")):
                    raise ValueError(f"record {record.get('key')!r} has no curated caption")
            else:
                self.synthetic(record, kind, has_sidecars)

    def eligible(self, record: Mapping[str, Any]) -> bool:
        """Whether the loader keeps this record (only `curated` drops records: those without one)."""
        return self.policy != "curated" or _present(record.get("curated_caption"))

    def choose(self, record: Mapping[str, Any], position: int, has_sidecars: bool = False) -> str:
        """The caption for the sample at stream `position` (deterministic in seed and position)."""
        p = self.policy
        if p == "original":
            return self.original(record)
        if p == "curated":
            if not _present(record.get("curated_caption")):
                raise ValueError(f"record {record.get('key')!r} has no curated caption")
            return record["curated_caption"]
        if p in SYNTHETIC_KINDS:
            return self.synthetic(record, p, has_sidecars)[0]
        # blend: DALL-E 3's mix, decided per sample and per pass
        if uniform(self.seed, position) < self.synthetic_fraction:
            return self.synthetic(record, self.synthetic_kind, has_sidecars)[0]
        return self.original(record)


def tokenizer_texts(records: Iterable[Mapping[str, Any]], has_sidecars: bool = False) -> list[str]:
    """Every caption a model may be trained or prompted with (original, curated, synthetic short
    and long, where they exist): the tokenizer's training corpus, in record order."""
    out: list[str] = []
    for r in records:
        if _present(r.get("caption")):
            out.append(r["caption"])
        if _present(r.get("curated_caption")):
            out.append(r["curated_caption"])
        for kind in SYNTHETIC_KINDS:
            try:
                cap, source = CaptionPolicy.synthetic(r, kind, has_sidecars)
            except ValueError:
                continue  # a real dataset without sidecars has no synthetic captions yet
            if source in ("sidecar", "scene"):  # curated / original are already in
                out.append(cap)
    return out


def read_sidecars(dataset: str):
    """Every recaption sidecar of a dataset (DIR/captions/shard-*.parquet) as one DataFrame with
    all its columns plus `sidecar` (the file's name), or None when the dataset has none. The one
    reader of sidecars: the loader (load_sidecars), the caption report and the captioner metrics.
    ValueError names a sidecar that lacks SIDECAR_COLUMNS."""
    import posixpath

    import pandas as pd

    from model_code import storage
    root = storage.join(dataset, "captions")
    files = storage.ls(root, "shard-*.parquet") if storage.exists(root) else []
    if not files:
        return None
    frames = []
    for uri in files:
        with storage.open_uri(uri, "rb") as f:
            df = pd.read_parquet(f)
        missing = [c for c in SIDECAR_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"caption sidecar {uri} lacks columns {missing} "
                             f"(expected {list(SIDECAR_COLUMNS)})")
        df["sidecar"] = posixpath.basename(uri.rstrip("/"))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def load_sidecars(dataset: str):
    """The recaption sidecars of a dataset as one DataFrame indexed by key (columns original,
    short, long), or None when the dataset has none."""
    df = read_sidecars(dataset)
    if df is None:
        return None
    df = df[list(SIDECAR_COLUMNS)]
    dup = df["key"][df["key"].duplicated()]
    if len(dup):
        raise ValueError(f"caption sidecars of {dataset} list key {dup.iloc[0]!r} more than once")
    return df.set_index("key")
