"""Captioner backends: anything that turns a batch of images into captions of a kind.

Two backends share one protocol, so the recaption job does not care which model writes:
  - `CoCaCaptioner`: the project's own CoCa (models/coca.py), trained on the curated subset;
  - `PretrainedCaptioner` (recaption/pretrained.py): a pretrained vision-language model (BLIP, GIT,
    BLIP-2, Florence-2) loaded from a local directory or the object store, never from a hub.

and, on the Shapes world only, `OracleCaptioner`: the oracle's parse of the image written out as
truthful captions, the upper bound a trained captioner is measured against.

`load_captioner(spec, tokenizer)` picks one from a string: a CoCa directory/URI, "pretrained:PATH"
or "oracle".
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from PIL import Image

from model_code import storage
from model_code.models.pretrained import default_device

log = logging.getLogger(__name__)

KINDS = ("short", "long")
PRETRAINED_PREFIX = "pretrained:"
ORACLE = "oracle"


@runtime_checkable
class Captioner(Protocol):
    """caption(images, kind, top_p, temperature, seed) -> one caption per image."""

    name: str

    def caption(self, images: Sequence[Image.Image], kind: str = "long", top_p: float = 0.9,
                temperature: float = 0.7, seed: int = 0) -> list[str]: ...

    def count_tokens(self, text: str) -> int: ...


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def check_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    images = list(images)
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise ValueError(f"images[{i}] must be a PIL.Image, got {type(im).__name__}")
    return images


def images_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> float (B, 3, size, size) in [-1, 1] (the library's image convention)."""
    arrs = []
    for im in check_images(images):
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        arrs.append(np.asarray(im, dtype=np.float32))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)  # (B, 3, S, S) in [0, 255]
    return x / 127.5 - 1.0


def local_dir(path_or_uri: str, what: str) -> str:
    """A local directory holding path_or_uri's files (s3:// is downloaded to a temp dir)."""
    if storage.is_remote(path_or_uri):
        tmp = tempfile.mkdtemp(prefix="easel-captioner-")
        storage.get_dir(path_or_uri, tmp)
        return tmp
    path = storage.local_path(path_or_uri)
    if not os.path.isdir(path):
        raise ValueError(f"{what}: {path_or_uri} is not a directory")
    return path


def check_trained_tokenizer(model_dir_or_uri: str, tokenizer_dir: str) -> None:
    """Refuse a tokenizer other than the one the captioner was trained with: another BPE of the same
    vocabulary size fits the model's shapes and turns every caption into fluent-looking garbage that
    passes the filters. The trainer records its tokenizer's identity in train_state.json
    (inputs.deps.tokenizer, model_code.identity); a captioner trained elsewhere has none, and then
    only the vocabulary (CoCa.set_tokenizer) could be compared. The rule is a bundle's
    (generate.check_parts_fit); this adds the warning for a captioner that records nothing."""
    import json

    from model_code.generate import check_parts_fit
    from model_code.identity import STATE_FILE
    state_uri = storage.join(model_dir_or_uri, STATE_FILE)
    state = {}
    if storage.exists(state_uri):
        try:
            state = json.loads(storage.read_text(state_uri))
        except ValueError:
            state = {}
    recorded = ((state.get("inputs") or {}).get("deps") or {}).get("tokenizer")
    if not recorded:
        log.warning("captioner: %s records no tokenizer identity (no %s from this project's trainer); the "
                    "tokenizer at %s matches its vocabulary, but the match could not be verified",
                    model_dir_or_uri, STATE_FILE, tokenizer_dir)
        return
    check_parts_fit({"captioner": model_dir_or_uri, "tokenizer": tokenizer_dir}, where="recaption: ")


class CoCaCaptioner:
    """The project's CoCa captioner (models/coca.py) + its TextTokenizer."""

    def __init__(self, model_dir_or_uri: str, tokenizer_dir: str | None = None,
                 device: str | None = None, max_new_tokens: dict | None = None):
        from model_code.models.coca import CoCa
        from model_code.text.tokenizer import TextTokenizer

        if not storage.exists(storage.join(model_dir_or_uri, "config.json")):
            raise ValueError(f"captioner: no CoCa model at {model_dir_or_uri} (config.json missing)")
        if tokenizer_dir is None:  # a bundle may keep its tokenizer beside the weights
            tokenizer_dir = storage.join(model_dir_or_uri, "tokenizer")
            if not storage.exists(storage.join(tokenizer_dir, "tokenizer.json")):
                raise ValueError(f"captioner: give the tokenizer directory (none at {tokenizer_dir})")
        self.device = default_device(device)
        self.model = CoCa.from_pretrained(model_dir_or_uri, map_location=self.device).eval()
        self.tokenizer = TextTokenizer.load(tokenizer_dir)
        try:
            self.model.set_tokenizer(self.tokenizer)
        except ValueError as e:
            raise ValueError(f"captioner: tokenizer at {tokenizer_dir} does not fit the model at "
                             f"{model_dir_or_uri}: {e}") from None
        check_trained_tokenizer(model_dir_or_uri, tokenizer_dir)
        self.name = f"coca:{model_dir_or_uri}"
        room = self.model.config["max_text_tokens"] - 2
        # caps per kind: DALL-E 3's short captions are ~20 tokens, long ones ~100-200
        caps = {"short": min(40, room), "long": room, **(max_new_tokens or {})}
        self.max_new_tokens = {k: min(int(v), room) for k, v in caps.items()}

    @property
    def image_size(self) -> int:
        return self.model.clip.config["image_size"]

    def caption(self, images: Sequence[Image.Image], kind: str = "long", top_p: float = 0.9,
                temperature: float = 0.7, seed: int = 0, use_cache: bool = True) -> list[str]:
        check_kind(kind)
        images = check_images(images)
        if not images:
            return []
        x = images_to_tensor(images, self.image_size).to(self.device)
        return self.model.generate(x, kind=kind, top_p=top_p, temperature=temperature,
                                   max_new_tokens=self.max_new_tokens[kind], seed=seed, use_cache=use_cache)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)


class OracleCaptioner:
    """Shapes world only: data/oracle.py parses the image into its scene graph and the caption
    writers of data/shapes.py describe it (short: `short_caption`; long: `curated_caption`, whose
    wording the seed varies as sampling would). A perfect captioner, for reference runs."""

    name = ORACLE

    def caption(self, images: Sequence[Image.Image], kind: str = "long", top_p: float = 0.9,
                temperature: float = 0.7, seed: int = 0) -> list[str]:
        import random

        from model_code.data import oracle, shapes
        check_kind(kind)
        out = []
        for i, im in enumerate(check_images(images)):
            scene = oracle.parse_image(im)
            if not scene["objects"] or any(o["shape"] not in shapes.SHAPES for o in scene["objects"]):
                out.append("")  # nothing (or a blob of no shape) to describe: the filters reject it,
                                # the original caption stays
            elif kind == "short":
                out.append(shapes.short_caption(scene))
            else:
                out.append(shapes.curated_caption(scene, random.Random(seed * 100_003 + i)))
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())  # words: there is no model tokenizer


def load_captioner(spec: str, tokenizer: str | None = None, device: str | None = None,
                   max_new_tokens: dict | None = None) -> Captioner:
    """"pretrained:PATH" -> PretrainedCaptioner(PATH); "oracle" -> OracleCaptioner; anything else
    is a CoCa directory/URI."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"captioner must be a CoCa directory/URI, 'pretrained:PATH' or 'oracle', got {spec!r}")
    if spec == ORACLE:
        return OracleCaptioner()
    if spec.startswith(PRETRAINED_PREFIX):
        from model_code.recaption.pretrained import PretrainedCaptioner
        return PretrainedCaptioner(spec[len(PRETRAINED_PREFIX):], device=device, max_new_tokens=max_new_tokens)
    return CoCaCaptioner(spec, tokenizer, device=device, max_new_tokens=max_new_tokens)
