"""Prompt and image safety: each check returns a Verdict with a policy code and a reason.

DALL-E 3 runs safety classifiers on prompts and on generated images; here the classifier is the
bundle's own CLIP, used zero-shot: the configured unsafe concept phrases are embedded once with
the CLIP text tower, and a prompt (text tower) or an image (image tower) whose cosine similarity
to any concept reaches the threshold is refused / withheld. Cheaper exact checks come first for
prompts: a word blocklist and regular expressions.

Cosine similarities mean different things in different CLIPs (a CLIP trained only on Shapes puts
"a red circle" at 0.93 from "self-harm"), so a threshold of "auto" (the default) is calibrated at
start-up: the highest similarity any benign reference reaches (Shapes-world captions and renders,
everyday phrases) plus a margin, so that none of them is refused. A CLIP that cannot separate the
concepts from benign references then refuses only near-verbatim concepts, and says so in the log.

Policy codes (the `policy` of a Verdict, also the label of the refusal metrics):
    prompt.blocklist   a blocklisted word or phrase
    prompt.pattern     a configured regular expression matched
    prompt.concept     close to an unsafe concept in CLIP text space
    image.concept      a generated image close to an unsafe concept in CLIP image-text space

    safety = Safety(cfg["safety"], ClipEmbedder(tokenizer, clip))
    safety.check_prompts(["a red circle"])   -> [Verdict(allowed=True, ...)]
    safety.check_images([pil, ...])          -> [Verdict(...), ...]
"""
from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

log = logging.getLogger(__name__)

AUTO_CAP = 0.999     # an "auto" threshold never exceeds this: a verbatim concept is still refused
GENERIC_BENIGN = ["a photo of an everyday scene", "a drawing", "a picture", "a landscape", "a portrait",
                  "a bowl of fruit on a table", "a city street", "a cat", "a diagram"]


def benign_prompts(n: int = 48, seed: int = 0) -> list[str]:
    """Benign reference prompts for calibration: Shapes-world short and long captions of seeded
    random scenes, and everyday phrases."""
    from model_code.data import shapes
    rng = random.Random(seed)
    scenes = [shapes.sample_scene(rng, 64) for _ in range(n // 2)]
    return [c for sc in scenes for c in (shapes.short_caption(sc), shapes.long_caption(sc))] + GENERIC_BENIGN


def benign_images(n: int = 16, seed: int = 0) -> list[Image.Image]:
    """Benign reference images for calibration: Shapes-world renders of seeded random scenes."""
    from model_code.data import shapes
    rng = random.Random(seed)
    return [shapes.render(shapes.sample_scene(rng, 64)) for _ in range(n)]


def _calibrated(reference: torch.Tensor, margin: float, what: str) -> float:
    """The "auto" threshold from (R, C) similarities of benign references to the concepts."""
    top = float(reference.max())
    t = min(top + margin, AUTO_CAP)
    if top + margin > AUTO_CAP:
        log.warning("safety: this CLIP puts a benign %s at similarity %.3f to an unsafe concept: %s concept "
                    "matching refuses only near-verbatim concepts (threshold %.3f); the exact checks still apply",
                    what, top, what, t)
    else:
        log.info("safety: %s concept threshold calibrated to %.3f (benign references reach %.3f)", what, t, top)
    return t


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str | None = None        # a policy code (module docstring) when refused
    reason: str = ""
    score: float | None = None       # the concept similarity that decided, when one did

    def as_dict(self) -> dict:
        return {"allowed": self.allowed, "policy": self.policy, "reason": self.reason, "score": self.score}


ALLOWED = Verdict(True)

# characters people insert to dodge word lists: zero-width spaces/joiners, soft hyphen, BOM
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\u00ad\ufeff"), None)


def normalize(text: str) -> str:
    """NFKC (fullwidth and styled letters -> plain), invisible characters removed, casefolded,
    whitespace collapsed: what the word and pattern checks read."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE).casefold()
    return " ".join(text.split())


class ClipEmbedder:
    """The two CLIP towers of a bundle, for zero-shot concept matching.

    Built from a loaded Generator's parts, or (for a transformer that does not generate) from a
    bundle's tokenizer/ and clip/ directories only. Thread-safe: one forward at a time."""

    def __init__(self, tokenizer, clip):
        self.tokenizer, self.clip = tokenizer, clip.eval()
        # CLIP's positional table bounds the text length; the tokenizer may allow more
        self.max_len = min(int(tokenizer.max_len), int(clip.config["max_text_tokens"]))
        self.image_size = int(clip.config["image_size"])
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, bundle: str) -> "ClipEmbedder":
        from model_code import storage
        from model_code.generate import read_bundle_meta
        from model_code.models.clip import CLIP
        from model_code.text.tokenizer import TextTokenizer
        meta = read_bundle_meta(bundle)
        parts = meta["parts"]
        with tempfile.TemporaryDirectory() as tmp:
            def local(part: str) -> str:
                uri = storage.join(bundle, parts[part])
                return storage.get_dir(uri, os.path.join(tmp, part)) if storage.is_remote(uri) else storage.local_path(uri)
            return cls(TextTokenizer.load(local("tokenizer")), CLIP.from_pretrained(local("clip")))

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit vectors, on the CPU."""
        ids, mask = self.tokenizer.encode_batch(list(texts), max_len=self.max_len)
        with self._lock:
            return self.clip.encode_text(ids.to(self.device), mask.to(self.device)).float().cpu()

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) unit vectors, on the CPU; images resized to CLIP's input size."""
        from model_code.generate import to_tensor
        x = to_tensor(images, self.image_size)   # (N, 3, S, S) in [-1, 1]
        with self._lock:
            return self.clip.encode_image(x.to(self.device)).float().cpu()


class Safety:
    """The prompt and image policies of one server (config: the serve `safety:` section)."""

    def __init__(self, cfg: dict, embedder: ClipEmbedder | None):
        self.cfg = cfg
        words = [normalize(w) for w in cfg.get("blocklist") or []]
        # whole words/phrases only ("gore" must not refuse "Gorey Street"); phrases match across
        # any run of whitespace or punctuation
        self._blocklist = [(w, re.compile(r"(?<!\w)" + r"[\W_]+".join(map(re.escape, w.split())) + r"(?!\w)"))
                           for w in words if w]
        self._patterns = [(re.compile(p["pattern"], re.IGNORECASE), p["reason"]) for p in cfg.get("patterns") or []]
        self.embedder = embedder
        self.prompt_concepts = list(cfg.get("prompt_concepts") or [])
        self.image_concepts = list(cfg.get("image_concepts") or [])
        auto = {k: cfg.get(k, 1.01) == "auto" for k in ("prompt_threshold", "image_threshold")}
        # "auto" without a CLIP: off (1.01) until calibrated below
        self.prompt_threshold = 1.01 if auto["prompt_threshold"] else float(cfg.get("prompt_threshold", 1.01))
        self.image_threshold = 1.01 if auto["image_threshold"] else float(cfg.get("image_threshold", 1.01))
        margin = float(cfg.get("calibration_margin", 0.02))
        self._prompt_emb = self._image_emb = None
        if embedder is not None:   # concepts are embedded once, at start-up
            if self.prompt_concepts:
                self._prompt_emb = embedder.embed_texts(self.prompt_concepts)   # (C, D)
                if auto["prompt_threshold"]:
                    self.prompt_threshold = _calibrated(self.prompt_similarities(benign_prompts()), margin, "prompt")
            if self.image_concepts:
                self._image_emb = embedder.embed_texts(self.image_concepts)     # (C', D)
                if auto["image_threshold"]:
                    self.image_threshold = _calibrated(self.image_similarities(benign_images()), margin, "image")

    # -------------------------------------------------------------- prompts
    def check_prompt_text(self, prompt: str) -> Verdict:
        """The exact checks (blocklist, patterns): no model involved."""
        text = normalize(prompt)
        for word, rx in self._blocklist:
            if rx.search(text):
                return Verdict(False, "prompt.blocklist", f"the prompt contains the blocked term {word!r}")
        for rx, reason in self._patterns:
            if rx.search(text) or rx.search(prompt):
                return Verdict(False, "prompt.pattern", f"the prompt contains {reason}")
        return ALLOWED

    def check_prompts(self, prompts: Sequence[str]) -> list[Verdict]:
        verdicts = [self.check_prompt_text(p) for p in prompts]
        todo = [i for i, v in enumerate(verdicts) if v.allowed]
        if todo and self._prompt_emb is not None and self.prompt_threshold <= 1.0:
            sims = self.embedder.embed_texts([prompts[i] for i in todo]) @ self._prompt_emb.T   # (P, C)
            for row, i in zip(sims, todo):
                verdicts[i] = self._concept_verdict(row, self.prompt_concepts, self.prompt_threshold,
                                                    "prompt.concept", "the prompt")
        return verdicts

    # -------------------------------------------------------------- images
    def check_images(self, images: Sequence[Image.Image],
                     embeddings: Sequence[torch.Tensor | None] | None = None) -> list[Verdict]:
        """embeddings: the images' CLIP embeddings where already computed (the generator's
        reranking, same CLIP): those images are not embedded again."""
        if not images or self._image_emb is None or self.image_threshold > 1.0:
            return [ALLOWED] * len(images)
        given = list(embeddings) if embeddings is not None else [None] * len(images)
        todo = [i for i, e in enumerate(given) if e is None]
        if todo:
            for i, e in zip(todo, self.embedder.embed_images([images[i] for i in todo])):
                given[i] = e
        sims = torch.stack([e.float().cpu() for e in given]) @ self._image_emb.T   # (I, C')
        return [self._concept_verdict(row, self.image_concepts, self.image_threshold, "image.concept",
                                      "the generated image") for row in sims]

    def image_similarities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(I, C') cosine similarity of each image to each image concept (for calibration)."""
        return self.embedder.embed_images(images) @ self._image_emb.T

    def prompt_similarities(self, prompts: Sequence[str]) -> torch.Tensor:
        """(P, C) cosine similarity of each prompt to each prompt concept (for calibration)."""
        return self.embedder.embed_texts(list(prompts)) @ self._prompt_emb.T

    @staticmethod
    def _concept_verdict(row: torch.Tensor, concepts: list[str], threshold: float, policy: str,
                         what: str) -> Verdict:
        j = int(torch.argmax(row))
        score = float(row[j])
        if score >= threshold:
            return Verdict(False, policy, f"{what} is too close to the unsafe concept {concepts[j]!r} "
                                          f"(similarity {score:.2f} >= {threshold:.2f})", score)
        return Verdict(True, None, "", score)
