"""Prompt and image safety: each check returns a Verdict with a policy code and a reason.

DALL-E 3 runs safety classifiers on prompts and on generated images; here the classifier is the
bundle's own CLIP, used zero-shot: the configured unsafe concept phrases are embedded once with
the CLIP text tower, and a prompt (text tower) or an image (image tower) whose cosine similarity
to any concept reaches the threshold is refused / withheld. Cheaper exact checks come first for
prompts: a word blocklist and regular expressions.

Cosine similarities mean different things in different CLIPs (a CLIP trained only on Shapes puts
"a red circle" at 0.99 from "self-harm"), so a threshold of "auto" (the default) is calibrated at
start-up: the highest similarity any benign reference reaches (Shapes-world captions and renders,
everyday phrases) plus a margin, so that none of them is refused. When there is no such margin
(a benign reference within the margin of a similarity of 1), or, for images, when benign renders
are not nearer their own captions than the unsafe concepts, this CLIP cannot tell the concepts from
benign content: its concept matching is switched off (one warning in the log; `Safety.status` and
the model's info say so), and the concept phrases themselves are matched like blocklist phrases
instead, so a prompt that names one verbatim is still refused. The blocklist and patterns apply
whatever the CLIP.

Policy codes (the `policy` of a Verdict, also the label of the refusal metrics):
    prompt.blocklist   a blocklisted word or phrase
    prompt.pattern     a configured regular expression matched
    prompt.concept     close to an unsafe concept in CLIP text space (or, with concept matching
                       off for this CLIP, naming one)
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
    return [im for im, _ in benign_renders(n, seed)]


def benign_renders(n: int = 16, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """benign_images with the short caption of each (what a user would have asked for)."""
    from model_code.data import shapes
    rng = random.Random(seed)
    scenes = [shapes.sample_scene(rng, 64) for _ in range(n)]
    return [(shapes.render(sc), shapes.short_caption(sc)) for sc in scenes]


OFF = 1.01   # a threshold above any cosine similarity: concept matching off


def _calibrated(reference: torch.Tensor, margin: float, what: str,
                separation: torch.Tensor | None = None) -> tuple[float, str]:
    """The "auto" threshold from (R, C) similarities of benign references to the concepts, and
    why concept matching is off ("" when it is on). separation: (R,) how much nearer each benign
    reference is to what it shows (its caption) than to the nearest concept; a reference that is
    not nearer by the margin means this CLIP's similarities say nothing about the concepts."""
    top = float(reference.max())
    if top + margin > AUTO_CAP:
        return OFF, (f"this CLIP puts a benign {what} at similarity {top:.3f} to an unsafe concept, "
                     f"within the margin {margin:g} of a verbatim match")
    if separation is not None and float(separation.min()) < margin:
        return OFF, (f"this CLIP puts a benign {what} nearer an unsafe concept than its own caption "
                     f"(by {-float(separation.min()):.3f}), so its concept similarities carry no signal")
    log.info("safety: %s concept threshold calibrated to %.3f (benign references reach %.3f)", what, top + margin, top)
    return top + margin, ""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str | None = None        # a policy code (module docstring) when refused
    reason: str = ""
    score: float | None = None       # the concept similarity that decided, when one did

    def as_dict(self) -> dict:
        return {"allowed": self.allowed, "policy": self.policy, "reason": self.reason, "score": self.score}


ALLOWED = Verdict(True)


def _phrase(words: str) -> re.Pattern:
    """A blocklisted word or phrase (normalised) as a whole-word regex that also takes its plural."""
    parts = [t for t in re.split(r"[\W_]+", words) if t]
    # "_" separates words here ("gore_fest"), though \w counts it a letter
    return re.compile(r"(?<![^\W_])" + r"[\W_]+".join(map(re.escape, parts)) + r"(?:e?s)?(?![^\W_])")


# characters people insert to dodge word lists: zero-width spaces/joiners, invisible operators,
# the Mongolian vowel separator, soft hyphen, BOM
_INVISIBLE = set("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\u180e\u00ad\ufeff")


def _hidden(ch: str) -> bool:
    # combining marks (accents, strike-through U+0336, the grapheme joiner U+034F), variation
    # selectors and tag characters decorate a letter without changing the word it spells
    return (ch in _INVISIBLE or unicodedata.category(ch) in ("Mn", "Me")
            or "\ufe00" <= ch <= "\ufe0f" or "\U000e0000" <= ch <= "\U000e007f")


# Cyrillic and Greek letters that look like Latin ones (lower case: normalize casefolds first;
# в, н, м, т stand for the capitals В, Н, М, Т). Unicode's confusables list, the common part.
_LOOKALIKE = str.maketrans("аеёіїјорсухѕԁԛԝһӏкмтвнαορνκιτυχεβ",
                           "aeeiijopcyxsdqwhlkmtbhaopvkituxeb")
_LATIN_OR_LOOKALIKE = re.compile(r"[a-z\d\u0430\u0435\u0451\u0456\u0457\u0458\u043e\u0440\u0441\u0443\u0445"
                                 r"\u0455\u0501\u051b\u051d\u04bb\u04cf\u043a\u043c\u0442\u0432\u043d"
                                 r"\u03b1\u03bf\u03c1\u03bd\u03ba\u03b9\u03c4\u03c5\u03c7\u03b5\u03b2]+")
# a word spelled out letter by letter ("n u d e", "n.u.d.e", "s-e-x"): three or more single
# letters or digits, each apart by a few separators
_SPELLED = re.compile(r"(?<![^\W_])[^\W_](?:[\s.*·•_-]{1,3}[^\W_](?![^\W_])){2,}")


def _fold_word(m: re.Match) -> str:
    # a word written only in Latin letters and look-alikes reads as Latin ("nudе" with a Cyrillic
    # е, "ѕех"); a Russian or Greek word has letters with no Latin twin and is left alone
    return m.group().translate(_LOOKALIKE)


def normalize(text: str) -> str:
    """NFKC (fullwidth and styled letters -> plain), accents and other combining marks and
    invisible characters removed, casefolded, Latin look-alikes read as Latin, words spelled out
    letter by letter joined, whitespace collapsed: what the word, pattern and concept checks read."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    text = unicodedata.normalize("NFC", "".join(ch for ch in text if not _hidden(ch))).casefold()
    text = re.sub(r"[^\W_]+", lambda m: _LATIN_OR_LOOKALIKE.sub(_fold_word, m.group())
                  if _LATIN_OR_LOOKALIKE.fullmatch(m.group()) else m.group(), text)
    text = _SPELLED.sub(_join_spelled, text)
    return " ".join(text.split())


def _join_spelled(m: re.Match) -> str:
    letters = re.split(r"[\s.*·•_-]+", m.group())
    if len(letters) >= 4 and letters[0] in ("a", "i") and m.group()[1].isspace():
        return letters[0] + " " + "".join(letters[1:])   # "a n u d e": the article stays a word
    return "".join(letters)


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
        # whole words/phrases only ("gore" must not refuse "Gorey Street"), and their plurals
        # ("nudes"); phrases match across any run of whitespace or punctuation
        self._blocklist = [(w, _phrase(w)) for w in words if w]
        self._patterns = [(re.compile(p["pattern"], re.IGNORECASE), p["reason"]) for p in cfg.get("patterns") or []]
        self.embedder = embedder
        self.prompt_concepts = list(cfg.get("prompt_concepts") or [])
        self.image_concepts = list(cfg.get("image_concepts") or [])
        auto = {k: cfg.get(k, OFF) == "auto" for k in ("prompt_threshold", "image_threshold")}
        # "auto" without a CLIP: off until calibrated below
        self.prompt_threshold = OFF if auto["prompt_threshold"] else float(cfg.get("prompt_threshold", OFF))
        self.image_threshold = OFF if auto["image_threshold"] else float(cfg.get("image_threshold", OFF))
        margin = float(cfg.get("calibration_margin", 0.02))
        # policy -> why concept matching is off for this CLIP (calibration found no margin)
        self.disabled: dict[str, str] = {}
        self._prompt_emb = self._image_emb = None
        if embedder is not None:   # concepts are embedded once, at start-up
            if self.prompt_concepts:
                self._prompt_emb = embedder.embed_texts([normalize(c) for c in self.prompt_concepts])   # (C, D)
                if auto["prompt_threshold"]:
                    self.prompt_threshold, why = _calibrated(self.prompt_similarities(benign_prompts()), margin,
                                                             "prompt")
                    self._disable("prompt.concept", why)
            if self.image_concepts:
                self._image_emb = embedder.embed_texts([normalize(c) for c in self.image_concepts])   # (C', D)
                if auto["image_threshold"]:
                    renders = benign_renders()
                    img = embedder.embed_images([im for im, _ in renders])
                    concept = img @ self._image_emb.T                                           # (R, C')
                    own = (img * embedder.embed_texts([c for _, c in renders])).sum(-1)          # (R,)
                    self.image_threshold, why = _calibrated(concept, margin, "image",
                                                            own - concept.max(dim=1).values)
                    self._disable("image.concept", why)
        # with prompt concept matching off, a prompt that names a concept is still refused
        self._concept_phrases = ([(c, _phrase(normalize(c))) for c in self.prompt_concepts]
                                 if "prompt.concept" in self.disabled else [])

    def _disable(self, policy: str, why: str) -> None:
        if why:
            self.disabled[policy] = why
            log.warning("safety: %s matching is off for this model: %s (the blocklist and patterns still "
                        "apply%s)", policy, why,
                        ", and prompts naming a concept are refused" if policy == "prompt.concept" else "")

    @property
    def status(self) -> str:
        """One line for the model's info: which concept checks are off and why."""
        return "; ".join(f"{p} off: {why}" for p, why in self.disabled.items()) or "all checks on"

    # -------------------------------------------------------------- prompts
    def check_prompt_text(self, prompt: str) -> Verdict:
        """The exact checks (blocklist, patterns): no model involved."""
        text = normalize(prompt)
        for word, rx in self._blocklist:
            if rx.search(text):
                return Verdict(False, "prompt.blocklist", f"the prompt contains the blocked term {word!r}")
        for rx, reason in self._patterns:
            if rx.search(text) or (text != prompt and rx.search(prompt)):
                return Verdict(False, "prompt.pattern", f"the prompt contains {reason}")
        for concept, rx in self._concept_phrases:
            if rx.search(text):
                return Verdict(False, "prompt.concept", f"the prompt names the unsafe concept {concept!r} "
                                                        f"(this model's CLIP cannot match concepts by similarity)")
        return ALLOWED

    def check_prompts(self, prompts: Sequence[str]) -> list[Verdict]:
        verdicts = [self.check_prompt_text(p) for p in prompts]
        todo = [i for i, v in enumerate(verdicts) if v.allowed]
        if todo and self._prompt_emb is not None and self.prompt_threshold <= 1.0:
            # the normalised text: spacing or styled letters must not move a prompt in CLIP space
            sims = self.prompt_similarities([prompts[i] for i in todo])   # (P, C)
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
        """(P, C) cosine similarity of each (normalised) prompt to each prompt concept."""
        return self.embedder.embed_texts([normalize(p) for p in prompts]) @ self._prompt_emb.T

    @staticmethod
    def _concept_verdict(row: torch.Tensor, concepts: list[str], threshold: float, policy: str,
                         what: str) -> Verdict:
        j = int(torch.argmax(row))
        score = float(row[j])
        if score >= threshold:
            return Verdict(False, policy, f"{what} is too close to the unsafe concept {concepts[j]!r} "
                                          f"(similarity {score:.2f} >= {threshold:.2f})", score)
        return Verdict(True, None, "", score)
