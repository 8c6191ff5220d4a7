"""Caption quality filters (DALL-E 3: "Length filter (10-300 tokens), repetition filter,
hallucination detection via CLIP alignment scores. Captions with alignment below a threshold are
regenerated or replaced with the original ground truth").

A caption holding control characters is rejected first (text/control.py).
Each filter looks at one caption and returns a `Verdict` (ok + reason); `CaptionFilters.check`
runs them in order (cheap text filters first, CLIP last) and counts every outcome in `FilterStats`.

Config keys (the `recaption:` preset section):
  long_tokens: [10, 300]    token bounds of a long caption (the seed's length filter)
  short_tokens: [3, 40]     token bounds of a short caption (~20 tokens in the seed)
  repetition_ngram: 3       n of the word n-grams the repetition filter counts
  max_repetition: 0.3       largest allowed share of repeated n-grams
  min_clip_cosine: 0.1      smallest allowed image-caption cosine under the alignment CLIP
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from model_code.text.control import first_control

FILTERS = ("control", "length", "repetition", "clip")
DEFAULTS = {
    "long_tokens": [10, 300],   # DALL-E 3 length filter
    "short_tokens": [3, 40],
    "repetition_ngram": 3,
    "max_repetition": 0.3,
    "min_clip_cosine": 0.1,
}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    filter: str = ""   # the filter that rejected the caption ("" when ok)
    reason: str = ""   # why, with the measured value


PASS = Verdict(True)


def resolve_config(cfg: dict | None) -> dict:
    out = {**DEFAULTS, **{k: v for k, v in (cfg or {}).items() if k in DEFAULTS}}
    for key in ("long_tokens", "short_tokens"):
        lo_hi = out[key]
        if (not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi)
                or not 0 <= lo_hi[0] <= lo_hi[1]):
            raise ValueError(f"recaption.{key} must be [min, max] token counts with 0 <= min <= max, got {lo_hi!r}")
    if not isinstance(out["repetition_ngram"], int) or out["repetition_ngram"] < 1:
        raise ValueError(f"recaption.repetition_ngram must be a positive integer, got {out['repetition_ngram']!r}")
    if not 0 <= out["max_repetition"] <= 1:
        raise ValueError(f"recaption.max_repetition must be in [0, 1], got {out['max_repetition']!r}")
    if not isinstance(out["min_clip_cosine"], (int, float)):
        raise ValueError(f"recaption.min_clip_cosine must be a number, got {out['min_clip_cosine']!r}")
    return out


# ---------------------------------------------------------------- text filters
_WORD = re.compile(r"[\w'-]+|[.,;:!?]")


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for fresh text, -> 1 for a loop
    ("a red circle a red circle a red circle" -> 0.57 for n=3)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def control_filter(text: str) -> Verdict:
    """A caption holding control characters (an undertrained byte-level captioner emits them:
    "plain\x1c\x07") is garbage, not a description: rejected, so the original caption is used."""
    c = first_control(text)
    if c:
        return Verdict(False, "control", f"control character {c[1]} at offset {c[0]}")
    return PASS


def length_filter(n_tokens: int, bounds: Sequence[int], kind: str) -> Verdict:
    lo, hi = bounds
    if n_tokens < lo:
        return Verdict(False, "length", f"{kind} caption too short: {n_tokens} tokens < {lo}")
    if n_tokens > hi:
        return Verdict(False, "length", f"{kind} caption too long: {n_tokens} tokens > {hi}")
    return PASS


def repetition_filter(text: str, n: int, max_ratio: float) -> Verdict:
    r = repetition_ratio(text, n)
    if r > max_ratio:
        return Verdict(False, "repetition", f"repeated {n}-grams {r:.2f} > {max_ratio}")
    return PASS


def clip_filter(cosine: float, min_cosine: float) -> Verdict:
    if not cosine >= min_cosine:  # NaN fails too
        return Verdict(False, "clip", f"CLIP alignment {cosine:.3f} < {min_cosine}")
    return PASS


# ---------------------------------------------------------------- CLIP alignment
class ClipAlignment:
    """Image-caption cosine under a CLIP (models/clip.py) and the project's tokenizer."""

    def __init__(self, clip, tokenizer):
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.max_len = clip.config["max_text_tokens"]
        self.image_size = clip.config["image_size"]

    @torch.no_grad()
    def cosines(self, images: torch.Tensor, texts: Sequence[str]) -> np.ndarray:
        """images (B, 3, S, S) in [-1, 1] (any size; resized to CLIP's), texts B captions -> (B,)."""
        if images.shape[0] != len(texts):
            raise ValueError(f"clip alignment: {images.shape[0]} images but {len(texts)} captions")
        device = next(self.clip.parameters()).device
        if images.shape[-1] != self.image_size:
            images = torch.nn.functional.interpolate(images, size=(self.image_size, self.image_size),
                                                     mode="bilinear", align_corners=False, antialias=True)
        ids, mask = self.tokenizer.encode_batch(list(texts), max_len=self.max_len)
        return self.clip.score(images.to(device), ids.to(device), mask.to(device)).float().cpu().numpy()


# ---------------------------------------------------------------- the chain + counts
class FilterStats:
    """Counts of checks and rejections per kind and filter (every attempt, retries included)."""

    def __init__(self):
        self.checked: Counter = Counter()    # kind -> captions checked
        self.passed: Counter = Counter()     # kind -> captions that passed every filter
        self.rejected: Counter = Counter()   # (kind, filter) -> rejections

    def add(self, kind: str, verdict: Verdict) -> None:
        self.checked[kind] += 1
        if verdict.ok:
            self.passed[kind] += 1
        else:
            self.rejected[(kind, verdict.filter)] += 1

    def as_dict(self) -> dict:
        out = {}
        for kind in sorted(self.checked):
            out[f"{kind}_checked"] = self.checked[kind]
            out[f"{kind}_passed"] = self.passed[kind]
            out[f"{kind}_pass_rate"] = self.passed[kind] / max(1, self.checked[kind])
            for f in FILTERS:
                out[f"{kind}_rejected_{f}"] = self.rejected[(kind, f)]
        return out


class CaptionFilters:
    """The filter chain. `count_tokens` is the captioner's tokenizer; `alignment` is optional
    (without a CLIP the alignment filter is skipped, and says so in `uses_clip`)."""

    def __init__(self, cfg: dict | None, count_tokens: Callable[[str], int], alignment: ClipAlignment | None = None):
        self.cfg = resolve_config(cfg)
        self.count_tokens = count_tokens
        self.alignment = alignment
        self.stats = FilterStats()

    @property
    def uses_clip(self) -> bool:
        return self.alignment is not None

    def check(self, texts: Sequence[str], kind: str, images: torch.Tensor | None = None
              ) -> tuple[list[Verdict], list[int], list[float]]:
        """Check B captions of one kind -> (verdicts, token counts, CLIP cosines (NaN without CLIP))."""
        if kind not in ("short", "long"):
            raise ValueError(f"kind must be 'short' or 'long', got {kind!r}")
        bounds = self.cfg[f"{kind}_tokens"]
        n_tok = [self.count_tokens(t) for t in texts]
        verdicts = []
        for t, n in zip(texts, n_tok):
            v = control_filter(t)
            if v.ok:
                v = length_filter(n, bounds, kind)
            if v.ok:
                v = repetition_filter(t, self.cfg["repetition_ngram"], self.cfg["max_repetition"])
            verdicts.append(v)
        cos = [float("nan")] * len(texts)
        if self.alignment is not None:
            if images is None:
                raise ValueError("the CLIP alignment filter needs the images")
            cos = [float(c) for c in self.alignment.cosines(images, texts)]
            verdicts = [clip_filter(c, self.cfg["min_clip_cosine"]) if v.ok else v for v, c in zip(verdicts, cos)]
        for v in verdicts:
            self.stats.add(kind, v)
        return verdicts, n_tok, cos
