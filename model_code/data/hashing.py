"""Image fingerprints for deduplication: exact (sha256 of pixels), perceptual (64-bit pHash) and
a colour thumbnail that confirms a perceptual match.

Why three: pHash alone is blind to colour and to small objects. On the Shapes world (flat
shapes on a flat background) distinct scenes collide all the time: among 4000 random 64 px
scenes, 10119 pairs are within Hamming distance 4 (a red circle and a blue circle in the same
cell hash alike), and only 51 of those pairs are the same scene up to jitter. A near duplicate
therefore needs both a close pHash and a 16x16 RGB thumbnail within a small max-abs
difference. An 8x8 thumbnail is not enough: a small circle and a large star in the same cell
have nearly the same area and centroid (max difference 9). Measured at 16x16 (same scenes, and
matplotlib's sample photos at 32, 64 and 256 px): distinct Shapes scenes differ by >= 30, while
a JPEG re-encode (q=50), a 2x downscale or a +5% brightness change of a photo stays <= 24; so
the default tolerance is 24. Scenes identical up to a sub-pixel jitter fall below it (8 of the
51 pairs), which is what a near duplicate is.

`NearDupIndex` is the in-memory index ingest keeps: 8 bytes (pHash) + 768 bytes (thumbnail)
+ 16 bytes (sha256 prefix) per kept image, no pixels: ~80 MB per 100k kept images.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_SIDE = 8       # pHash: the top-left 8x8 DCT coefficients -> 64 bits
DCT_SIDE = 32       # ... of a 32x32 grayscale reduction (the usual pHash recipe)
THUMB_SIDE = 16     # colour thumbnail: 16x16 RGB = 768 bytes
THUMB_BYTES = THUMB_SIDE * THUMB_SIDE * 3
THUMB_BLOCK = 8192  # thumbnails per index block (6 MB)


def sha256_pixels(img: Image.Image) -> str:
    """sha256 (hex) of an image's decoded pixels, with its mode and size (so two encodings of
    the same pixels hash alike and a 2x8 image never equals an 8x2 one)."""
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n, n): dct(x) = M @ x."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash: 32x32 grayscale -> 2-D DCT -> the 8x8 lowest frequencies, each
    bit = coefficient above the median of the 63 AC terms (DC excluded from the median, as in
    pHash, so that a flat brightness shift does not move the threshold)."""
    g = np.asarray(img.convert("L").resize((DCT_SIDE, DCT_SIDE), Image.LANCZOS), dtype=np.float64)
    m = _dct_matrix(DCT_SIDE)
    low = (m @ g @ m.T)[:HASH_SIDE, :HASH_SIDE].reshape(-1)   # (64,)
    bits = low > np.partition(low[1:], 31)[31]  # the median of the 63 AC terms
    return int(np.packbits(bits).view(">u8")[0])


def phash_hex(h: int) -> str:
    return f"{h:016x}"


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def thumbnail(img: Image.Image) -> bytes:
    """16x16 RGB box-filtered thumbnail (768 bytes): the colour check behind a pHash match."""
    return img.convert("RGB").resize((THUMB_SIDE, THUMB_SIDE), Image.BOX).tobytes()


class NearDupIndex:
    """Kept images' fingerprints, searched in insertion order.

    `find(sha, ph, thumb)` -> (kept_id, kind, distance) of the earliest-kept match or None:
    kind "exact" when the pixel sha256 matches, "near" when the pHash is within `threshold`
    bits and the thumbnails within `tolerance` (max abs difference, 0-255). Among several
    near matches the closest pHash wins, ties to the earliest kept.
    The search is a vectorised scan (numpy popcount): ~1 us per 1000 kept images.
    """

    def __init__(self, threshold: int = 4, tolerance: int = 24):
        if not -1 <= threshold <= 64:
            raise ValueError(f"near_dup_threshold must be in [0, 64] bits (-1: off), got {threshold}")
        if not 0 <= tolerance <= 255:
            raise ValueError(f"near_dup_tolerance must be in [0, 255], got {tolerance}")
        self.threshold, self.tolerance = threshold, tolerance
        self.n = 0
        self._ph = np.zeros(1024, dtype=np.uint64)        # (cap,) pHashes, doubled when full
        # thumbnails in fixed blocks, not one doubling array: growing never copies (or briefly
        # triples) what is already held
        self._th: list[np.ndarray] = []                    # each (THUMB_BLOCK, 768) uint8
        self._sha: dict[bytes, int] = {}                   # sha256[:16] -> id

    def __len__(self) -> int:
        return self.n

    def add(self, sha256_hex: str, ph: int, thumb: bytes) -> int:
        i = self.n
        if i == len(self._ph):
            self._ph = np.concatenate([self._ph, np.zeros_like(self._ph)])
        if i % THUMB_BLOCK == 0:
            self._th.append(np.empty((THUMB_BLOCK, THUMB_BYTES), dtype=np.uint8))
        self._ph[i] = np.uint64(ph)
        self._th[i // THUMB_BLOCK][i % THUMB_BLOCK] = np.frombuffer(thumb, dtype=np.uint8)
        self._sha.setdefault(bytes.fromhex(sha256_hex)[:16], i)
        self.n += 1
        return i

    def _thumbs(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), 768) thumbnails of kept ids (sorted ascending)."""
        blocks = ids // THUMB_BLOCK
        return np.concatenate([self._th[b][ids[blocks == b] % THUMB_BLOCK] for b in np.unique(blocks)])

    def find(self, sha256_hex: str, ph: int, thumb: bytes) -> tuple[int, str, int] | None:
        hit = self._sha.get(bytes.fromhex(sha256_hex)[:16])
        if hit is not None:
            return hit, "exact", 0
        if self.n == 0 or self.threshold < 0:  # -1 turns near-dup detection off
            return None
        dist = np.bitwise_count(self._ph[: self.n] ^ np.uint64(ph))    # (n,)
        cand = np.flatnonzero(dist <= self.threshold)                   # ascending ids
        if cand.size == 0:
            return None
        t = np.frombuffer(thumb, dtype=np.uint8).astype(np.int16)
        diff = np.abs(self._thumbs(cand).astype(np.int16) - t).max(axis=1)  # (len(cand),)
        ok = cand[diff <= self.tolerance]
        if ok.size == 0:
            return None
        best = ok[np.argmin(dist[ok])]  # closest; argmin takes the first (earliest kept) on ties
        return int(best), "near", int(dist[best])
