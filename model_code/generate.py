"""Generation bundles and generators: prompts in, images out, for either recipe.

A *bundle* is one directory (or s3:// prefix) holding every trained part a recipe needs and a
`bundle.json` that names them:

    bundle.json   {"format": "easel-bundle/1", "recipe": "dalle"|"unclip", "preset": ...,
                   "parts": {"tokenizer": "tokenizer", "clip": "clip", ...},
                   "sampling": {...defaults...}, "lineage": {...}}
    tokenizer/ clip/ dvae/ transformer/            (dalle)
    tokenizer/ clip/ prior/ decoder/ upsampler/    (unclip; upsampler optional)

A generator samples `candidates` images per prompt and keeps the `n` its reranker ranks best
(DALL-E 1's generate-then-search; DALL-E 2 reranks too): CLIP by default, or, with
`rerank: captioner` and a `captioner/` part in the bundle, the captioner's log p(prompt | image).
Evaluation, the MLflow pyfunc model and the KServe server all call `Generator.generate`.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from model_code import storage

BUNDLE_FORMAT = "easel-bundle/1"
RECIPE_PARTS = {"dalle": ("tokenizer", "clip", "dvae", "transformer"),
                "unclip": ("tokenizer", "clip", "prior", "decoder")}
# captioner: the trained CoCa (with the bundle's tokenizer), for `rerank: captioner`
OPTIONAL_PARTS = {"unclip": ("upsampler", "captioner"), "dalle": ("captioner",)}
RERANKERS = ("clip", "captioner")
NO_CAPTIONER = "rerank: captioner needs a bundle with a captioner part (this one has none)"
DEFAULT_SAMPLING = {
    # DALL-E 1 samples at temperature 1 and reranks; the paper's N = 512 is far beyond CPU.
    # guidance_scale != 1: classifier-free guidance (a transformer trained with text_drop_prob)
    "dalle": {"temperature": 1.0, "top_k": None, "top_p": None, "guidance_scale": 1.0, "candidates": 4,
              "rerank": "clip"},
    # DALL-E 2 samples the prior and decoder with guidance; steps come from the part configs.
    "unclip": {"prior_guidance": None, "decoder_guidance": None, "prior_steps": None,
               "decoder_steps": None, "upsample": True, "candidates": 2, "rerank": "clip"},
}


# What each numeric setting may hold: (integer?, lowest, lowest excluded?, highest or None). None
# is allowed where the recipe's default is None (the part config's own value is used).
SAMPLING_RANGES = {
    "temperature": (False, 0.0, False, None),      # 0: greedy decoding
    "top_k": (True, 1, False, None),
    "top_p": (False, 0.0, True, 1.0),              # (0, 1]
    "guidance_scale": (False, 0.0, False, None),   # 1: no guidance, 0: unconditional
    "prior_guidance": (False, 0.0, False, None),
    "decoder_guidance": (False, 0.0, False, None),
    "prior_steps": (True, 1, False, None),         # the upper bound is the part's timesteps
    "decoder_steps": (True, 1, False, None),
    "candidates": (True, 1, False, None),
}


def check_sampling(recipe: str, sampling: dict | None) -> dict:
    """Sampling settings must be settings of the recipe (DEFAULT_SAMPLING) holding values in
    their range (SAMPLING_RANGES); a bad key or value is an error that names it (a preset's
    `sampling.<recipe>`, an evaluation's or a table's overrides)."""
    if recipe not in DEFAULT_SAMPLING:
        raise ValueError(f"unknown recipe {recipe!r}: choose dalle or unclip")
    sampling = dict(sampling or {})
    allowed = set(DEFAULT_SAMPLING[recipe])
    bad = sorted(set(sampling) - allowed)
    if bad:
        raise ValueError(f"sampling: {bad} are not {recipe} settings (allowed: {', '.join(sorted(allowed))})")
    if "rerank" in sampling and sampling["rerank"] not in RERANKERS:
        raise ValueError(f"sampling.rerank: {sampling['rerank']!r} is not a reranker (choose {' or '.join(RERANKERS)})")
    if "upsample" in sampling and not isinstance(sampling["upsample"], bool):
        raise ValueError(f"sampling.upsample: must be true or false, got {sampling['upsample']!r}")
    for key, v in sampling.items():
        if key not in SAMPLING_RANGES or (v is None and DEFAULT_SAMPLING[recipe][key] is None):
            continue
        integer, lo, lo_open, hi = SAMPLING_RANGES[key]
        kind = "an integer" if integer else "a finite number"
        want = (f"{kind} {'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else ""))
        # NaN compares False with everything: without the isfinite test a NaN guidance scale or
        # temperature passes every bound below and samples garbage (or silently equals scale 1)
        ok = (not isinstance(v, bool) and isinstance(v, int if integer else (int, float))
              and math.isfinite(v) and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi))
        if not ok:
            raise ValueError(f"sampling.{key}: must be {want}, got {v!r}")
    return sampling


# ---------------------------------------------------------------- tensors <-> images
def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> list of RGB images."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def to_tensor(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """list of images -> (B, 3, S, S) in [-1, 1] (resized to `size` if given)."""
    out = []
    for im in images:
        im = im.convert("RGB")
        if size and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 127.5 - 1


# ---------------------------------------------------------------- bundle files
# The model class of each network part: its MODEL_TYPE is what the part's config.json must say,
# and its from_pretrained loads the part (the tokenizer is model_code.text.tokenizer's).
PART_CLASSES = {"clip": ("model_code.models.clip", "CLIP"), "dvae": ("model_code.models.dvae", "DVAE"),
                "transformer": ("model_code.models.transformer", "DalleTransformer"),
                "prior": ("model_code.models.prior", "DiffusionPrior"),
                "decoder": ("model_code.models.decoder", "UnCLIPDecoder"),
                "upsampler": ("model_code.models.upsampler", "Upsampler"),
                "captioner": ("model_code.models.coca", "CoCa")}


def part_class(name: str):
    """The model class of network part `name` (imported on first use: each drags in its stack)."""
    import importlib
    module, cls = PART_CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def save_bundle(out: str, recipe: str, parts: dict[str, str], preset: str = "",
                sampling: dict | None = None, lineage: dict | None = None, config: dict | None = None) -> str:
    """Assemble a bundle from trained part directories (copied, so the bundle stands alone).

    `config`: the resolved preset (with overrides) the parts were trained with; the bundle keeps
    it, so that serving reads its `serve:` section from the bundle and a preset file edited (or
    absent) later does not change a registered model. `preset` is the name, for people.
    Parts that do not belong together are refused (check_parts_fit), before anything is copied."""
    if config is not None:  # a bad serve: section fails here, not when a server loads the model
        from model_code.serve.config import serve_config
        serve_config(section=config.get("serve") or {}, env={})
    if recipe not in RECIPE_PARTS:
        raise ValueError(f"unknown recipe {recipe!r}: choose dalle or unclip")
    missing = [p for p in RECIPE_PARTS[recipe] if not parts.get(p)]
    if missing:
        raise ValueError(f"a {recipe} bundle needs parts {', '.join(missing)}")
    parts = {name: src for name, src in parts.items() if src}
    for name, src in parts.items():   # every part checked before anything is copied
        if name not in RECIPE_PARTS[recipe] + OPTIONAL_PARTS[recipe]:
            raise ValueError(f"part {name!r} does not belong in a {recipe} bundle")
        marker = _part_marker(name)
        if not storage.exists(storage.join(src, marker)):
            raise ValueError(f"part {name}: {src} holds no trained {name} (no {marker}): train it first, "
                             f"or point at its output directory")
        # the parts are copied to out/<name>: an out that is, holds or lies in a part would copy a
        # part onto itself or nest the bundle (with every part's checkpoints) inside that part
        inside, around = storage.within(out, src), storage.within(src, out)
        if inside or around:
            where = "is" if inside and around else "is inside" if inside else "contains"
            raise ValueError(f"out {out} {where} the {name} part {src}: write the bundle to a directory "
                             f"beside its parts, not into or around one")
    check_parts_fit(parts)
    sampling = {**DEFAULT_SAMPLING[recipe], **check_sampling(recipe, sampling)}
    if sampling["rerank"] == "captioner" and "captioner" not in parts:
        raise ValueError(f"sampling.{recipe}.rerank is 'captioner' but the bundle is given no captioner part")
    names = {}
    for name, src in parts.items():
        # the weights and their config, not the training checkpoints (optimizer state: 2-3x the model)
        storage.copy_dir(src, storage.join(out, name), skip=("checkpoints",))
        names[name] = name
    meta = {"format": BUNDLE_FORMAT, "recipe": recipe, "preset": preset, "parts": names,
            "sampling": sampling, "lineage": lineage or {}}
    if config is not None:
        meta["config"] = config
    storage.write_text(storage.join(out, "bundle.json"), json.dumps(meta, indent=2, default=str))
    return out


def _part_marker(name: str) -> str:
    return "tokenizer.json" if name == "tokenizer" else "model.safetensors"


def _fixed_by(name: str, dep: str, dep_config) -> dict:
    """The keys of part `name`'s config that its trained dependency `dep` fixed when `name` was
    built (model_code.train.parts derives them from the dependency), with the values `dep` gives.
    dep_config: the dependency's config.json (for the tokenizer: the loaded TextTokenizer)."""
    if dep == "tokenizer":
        if name == "captioner":   # its vocabulary and special ids (CoCa.set_tokenizer's check)
            return part_class("captioner").config_for({}, dep_config)
        key = {"transformer": "text_vocab_size", "clip": "vocab_size"}.get(name)
        return {key: dep_config.vocab_size} if key else {}
    if (name, dep) == ("transformer", "dvae"):
        return {"codebook_size": dep_config["codebook_size"],
                "image_grid": dep_config["image_size"] // dep_config["downsample"]}
    if dep == "clip" and name in ("prior", "decoder"):
        from model_code.models.prior import clip_dims
        return clip_dims(dep_config)
    return {}


def _read_json(uri: str) -> dict:
    try:
        got = json.loads(storage.read_text(uri))
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def check_parts_fit(parts: dict[str, str], where: str = "") -> None:
    """Refuse parts that do not belong together (ValueError naming them and what disagrees;
    `where` prefixes the message). Each network part must be the model its role names (its
    config.json's model_type), and each part must have been trained with the bundle's parts it
    depends on (model_code.train.parts: the transformer on the tokenizer's ids and the dVAE's
    codes; CLIP, the prior, the decoder and the captioner on the tokenizer's ids; the prior and
    the decoder on CLIP's embeddings). A part's train_state.json records what its dependencies
    held (model_code.identity), and that must be what the given parts hold: another tokenizer or
    dVAE of the same sizes fits every shape and makes noise. A part trained elsewhere records
    nothing and is held to what its config says of them (vocabulary, codebook, code grid, CLIP
    widths), as is every part."""
    from model_code.identity import STATE_FILE, part_identity
    from model_code.train.parts import get_part
    configs: dict[str, Any] = {}
    for name, uri in parts.items():
        if name == "tokenizer":
            from model_code.text.tokenizer import TextTokenizer
            configs[name] = TextTokenizer.load(uri)
            continue
        if not storage.exists(storage.join(uri, "config.json")):
            raise ValueError(f"{where}part {name}: {uri} holds no config.json (not a saved {name})")
        configs[name] = cfg = _read_json(storage.join(uri, "config.json"))
        expected = part_class(name).MODEL_TYPE
        if cfg.get("model_type") != expected:
            raise ValueError(f"{where}part {name}: {uri} holds a {cfg.get('model_type')!r} model, not "
                             f"{expected!r}: a {name} part must be a trained {name}")
    found: dict[str, str] = {}
    for name, uri in parts.items():
        state = _read_json(storage.join(uri, STATE_FILE)) if storage.exists(storage.join(uri, STATE_FILE)) else {}
        recorded = (state.get("inputs") or {}).get("deps") or {}
        for dep in get_part(name).deps:   # optional deps (a captioner's warm-start CLIP) are not read at run time
            if dep not in parts:
                continue
            if recorded.get(dep):
                found.setdefault(dep, part_identity(parts[dep]))
                if found[dep] != recorded[dep]:
                    trained_with = (state.get("deps") or {}).get(dep) or "another"
                    raise ValueError(f"{where}parts {name} and {dep} do not belong together: the {name} "
                                     f"({uri}) was trained with the {dep} {trained_with} (identity "
                                     f"{recorded[dep]}), not with {parts[dep]} (identity {found[dep]}): give "
                                     f"the {dep} it was trained with, or retrain the {name} with this one")
            off = [f"{k}={configs[name].get(k)!r} where the {dep} gives {v!r}"
                   for k, v in _fixed_by(name, dep, configs[dep]).items() if configs[name].get(k) != v]
            if off:
                raise ValueError(f"{where}parts {name} and {dep} do not belong together: the {name} ({uri}) has "
                                 f"{', '.join(off)} ({parts[dep]})")


def read_bundle_meta(path: str) -> dict:
    """bundle.json, checked as save_bundle writes it: a known recipe, its parts, each a directory
    inside the bundle holding its trained part, parts that belong together (check_parts_fit). A
    registered version must stand alone (a part path to the host's /etc, or to a directory that
    may move, is refused), and a bundle that cannot load is refused when it is registered, not
    when a server starts."""
    meta_path = storage.join(path, "bundle.json")
    if not storage.exists(meta_path):
        raise FileNotFoundError(f"{path} is not an Easel bundle (no bundle.json)")
    try:
        meta = json.loads(storage.read_text(meta_path))
    except ValueError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: unsupported bundle format {meta.get('format')!r}")
    recipe, parts = meta.get("recipe"), meta.get("parts")
    if recipe not in RECIPE_PARTS:
        raise ValueError(f"{meta_path}: recipe {recipe!r} is not one of {', '.join(RECIPE_PARTS)}")
    if not isinstance(parts, dict):
        raise ValueError(f"{meta_path}: parts must be an object (part -> directory), got {parts!r}")
    missing = [p for p in RECIPE_PARTS[recipe] if p not in parts]
    if missing:
        raise ValueError(f"{meta_path}: a {recipe} bundle needs parts {', '.join(missing)}")
    base = None if storage.is_remote(path) else os.path.realpath(storage.local_path(path))
    dirs = {}
    for name, rel in parts.items():
        if name not in RECIPE_PARTS[recipe] + OPTIONAL_PARTS[recipe]:
            raise ValueError(f"{meta_path}: part {name!r} does not belong in a {recipe} bundle")
        norm = posixpath.normpath(rel) if isinstance(rel, str) and rel else ""
        if not norm or posixpath.isabs(rel) or "\x00" in rel or norm == ".." or norm.startswith("../") \
                or (base is not None and not os.path.realpath(os.path.join(base, norm)).startswith(base + os.sep)):
            raise ValueError(f"{meta_path}: part {name} is at {rel!r}, outside the bundle; a bundle's parts "
                             f"are directories inside it")
        if not storage.exists(storage.join(path, norm, _part_marker(name))):
            raise ValueError(f"{meta_path}: part {name} ({rel}) holds no trained {name} (no "
                             f"{_part_marker(name)})")
        dirs[name] = storage.join(path, norm)
    check_parts_fit(dirs, where=f"{meta_path}: ")
    return meta


def bundle_content_id(path: str) -> str:
    """What a bundle holds, byte for byte (every file's path and SHA-256): the registry tags each
    version with it, and a gate refuses an evaluation of other bytes than the version's."""
    import hashlib
    h = hashlib.sha256()
    for rel, uri in storage.files_under(path):
        h.update(rel.encode() + b"\0" + hashlib.sha256(storage.read_bytes(uri)).digest())
    return h.hexdigest()


# ---------------------------------------------------------------- prompt length
@dataclass(frozen=True)
class TextLimit:
    """How much of a prompt a generator reads: `positions` text positions, <bos> and <eos>
    included. The encoders cut longer prompts (evaluation's captions fit by construction); a
    server refuses them instead (`refusal`), so no part of a client's prompt is silently dropped."""
    tokenizer: Any
    positions: int

    @property
    def max_tokens(self) -> int:
        return self.positions - 2   # <bos> and <eos> (TextTokenizer.encode_batch, no prefix)

    def refusal(self, prompt: str) -> str | None:
        """Why `prompt` is too long for this generator, or None when it fits."""
        k = self.tokenizer.count_tokens(prompt)
        if k <= self.max_tokens:
            return None
        return f"is {k} tokens long; this model reads at most {self.max_tokens} tokens (longer prompts are refused, never truncated)"


def bundle_text_limit(path: str, tokenizer) -> TextLimit:
    """The TextLimit of a bundle's generator without loading its weights (a transformer role
    checks prompts for a predictor that holds them): from the part configs."""
    meta = read_bundle_meta(path)
    cls = {"dalle": DalleGenerator, "unclip": UnclipGenerator}[meta["recipe"]]

    def config_of(part: str) -> dict:
        return json.loads(storage.read_text(storage.join(path, meta["parts"][part], "config.json")))
    return TextLimit(tokenizer, cls.text_positions(tokenizer, config_of))


# ---------------------------------------------------------------- generators
@dataclass
class Generated:
    """The result for one prompt: the kept images (best first by the reranker) and their CLIP
    scores (with `rerank: captioner`, extra["caption_logprob"] holds the ranking's scores)."""
    prompt: str
    images: list[Image.Image]
    scores: list[float]
    candidates: int = 1
    extra: dict = field(default_factory=dict)
    # the kept images' L2-normalised CLIP embeddings (n, D) on the CPU, from the reranking: a
    # later CLIP check of the same images (serving's image safety) reuses them
    embeddings: torch.Tensor | None = None


class Generator:
    """Shared half of both recipes: text encoding, CLIP embedding and reranking."""

    recipe = ""

    def __init__(self, tokenizer, clip, sampling: dict | None = None, meta: dict | None = None,
                 captioner=None):
        self.tokenizer = tokenizer
        self.clip = clip.eval()
        self.captioner = captioner.eval() if captioner is not None else None
        self.sampling = {**DEFAULT_SAMPLING.get(self.recipe, {}), **(sampling or {})}
        self.meta = meta or {}

    # -- loading
    @staticmethod
    def load(path: str, device: str | torch.device | None = None) -> "Generator":
        """Load a bundle (local dir or s3:// prefix) as the generator of its recipe, on `device`
        (default: the GPU when there is one, else the CPU). Noise is drawn on the CPU generator
        and moved, so a seed gives the same samples on either device (up to kernel numerics)."""
        from model_code.models.pretrained import default_device
        meta = read_bundle_meta(path)
        cls = {"dalle": DalleGenerator, "unclip": UnclipGenerator}[meta["recipe"]]
        return cls._from_bundle(path, meta, default_device(device))

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    # -- text and CLIP
    @staticmethod
    def text_positions(tokenizer, config_of) -> int:
        """Text positions the generator encodes prompts to (config_of(part) -> that part's
        config): the one place that says how long a prompt may be (TextLimit)."""
        return int(tokenizer.max_len)

    @property
    def text_limit(self) -> TextLimit:
        return TextLimit(self.tokenizer, self.text_positions(self.tokenizer, lambda part: getattr(self, part).config))

    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode_batch(list(prompts), max_len=self.text_limit.positions)
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.encode_text(prompts)
        return self.clip.encode_text(ids, mask)

    def _fit(self, images: torch.Tensor | Sequence[Image.Image], size: int) -> torch.Tensor:
        """Images (tensor or PIL) -> (B, 3, size, size) on the generator's device."""
        if not isinstance(images, torch.Tensor):
            images = to_tensor(images, size)
        images = images.to(self.device)
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True,
                                                     align_corners=False)
        return images

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
        return self.clip.encode_image(self._fit(images, self.clip.config["image_size"]))

    @torch.no_grad()
    def clip_scores(self, images: torch.Tensor | Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its prompt (same length lists)."""
        return (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)

    @torch.no_grad()
    def caption_logprobs(self, images: torch.Tensor | Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """log p(prompt | image) under the bundle's captioner, for each (image, prompt) pair (B,).

        The captioner is asked for the prompt as either kind of caption it writes (short or
        long, equally likely a priori): p = (p_short + p_long) / 2, so a terse prompt and a
        rewritten scene description are both judged by the kind that fits them."""
        from model_code.models.coca import KINDS, encode_targets
        if self.captioner is None:
            raise ValueError(NO_CAPTIONER)
        memory, _ = self.captioner.encode_image_tokens(self._fit(images, self.captioner.clip.config["image_size"]))
        per_kind = []
        for kind in KINDS:   # the images are encoded once; each kind is one teacher-forced pass
            ids, mask = encode_targets(self.tokenizer, list(prompts), [kind] * len(prompts),
                                       max_len=self.captioner.config["max_text_tokens"])
            per_kind.append(self.captioner.caption_logprob(None, ids.to(self.device), mask.to(self.device),
                                                           memory=memory))
        return torch.logsumexp(torch.stack(per_kind), dim=0) - float(np.log(len(KINDS)))

    def reranker(self, settings: dict) -> str:
        """The reranker `settings` ask for, checked against what this generator holds."""
        name = settings.get("rerank", "clip")
        check_sampling(self.recipe, {"rerank": name})
        if name == "captioner" and self.captioner is None:
            raise ValueError(NO_CAPTIONER)
        return name

    @torch.no_grad()
    def judge(self, images: torch.Tensor, prompts: Sequence[str], settings: dict
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidates against their prompts (one prompt per image): their CLIP embeddings (B, D),
        CLIP scores (B,) and the keys the reranker ranks them by (B,; the CLIP scores, or the
        captioner's log p(prompt | image)). generate() and the rerank table both judge here."""
        emb = self.embed_images(images)                                  # (B, D)
        unique = list(dict.fromkeys(prompts))                            # each prompt's text encoded once
        row = {p: i for i, p in enumerate(unique)}
        txt = self.embed_texts(unique)[torch.tensor([row[p] for p in prompts], device=emb.device)]
        scores = (emb * txt).sum(-1)                                     # (B,)
        keys = self.caption_logprobs(images, prompts) if self.reranker(settings) == "captioner" else scores
        return emb, scores, keys

    # -- the public entry point
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int = 1, candidates: int | None = None,
                 seed: int | None = 0, **overrides) -> list[Generated]:
        """For each prompt, sample `candidates` images and keep the `n` the reranker likes best
        (the `rerank` setting: CLIP's cosine similarity, or the captioner's log p(prompt | image)).

        Deterministic for the same prompts, settings and seed. `overrides` are sampling
        settings of the recipe (see DEFAULT_SAMPLING)."""
        prompts = list(prompts)
        if not prompts:
            return []
        if any(not isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be strings")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        cand = int(candidates or self.sampling.get("candidates") or n)
        cand = max(cand, n)
        settings = {**self.sampling, **{k: v for k, v in overrides.items() if v is not None}}
        by_captioner = self.reranker(settings) == "captioner"
        gen = torch.Generator().manual_seed(int(seed if seed is not None else torch.seed() % 2**31))
        images = self.sample(prompts, cand, gen, settings)          # (P * cand, 3, H, W)
        emb, scores, keys = self.judge(images, [p for p in prompts for _ in range(cand)], settings)
        scores, keys = scores.view(len(prompts), cand), keys.view(len(prompts), cand)
        emb = emb.float().cpu()
        out = []
        for i, p in enumerate(prompts):
            order = torch.argsort(keys[i], descending=True)[:n]
            pil = to_pil(images[i * cand + order])
            extra = {"caption_logprob": [float(keys[i, j]) for j in order]} if by_captioner else {}
            out.append(Generated(p, pil, [float(scores[i, j]) for j in order], candidates=cand,
                                 embeddings=emb[i * cand + order.cpu()], extra=extra))
        return out

    def sample(self, prompts: list[str], num: int, generator: torch.Generator,
               settings: dict) -> torch.Tensor:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    @property
    def data_size(self) -> int:
        """The side of the images the bundle was trained on: its CLIP's input size (CLIP takes the
        dataset's images as ingested, exactly that size; the other parts may resize them, and an
        upsampler's output is larger)."""
        return int(self.clip.config["image_size"])


def _load_parts(path: str, names: dict[str, str], map_location: str) -> dict:
    """Every part of a bundle (names: part -> its directory in the bundle), loaded."""
    from model_code.text.tokenizer import TextTokenizer
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = storage.get_dir(path, tmp) if storage.is_remote(path) else storage.local_path(path)
        for part, rel in names.items():
            load = TextTokenizer.load if part == "tokenizer" else part_class(part).from_pretrained
            out[part] = load(os.path.join(local, rel))
    for m in out.values():
        if isinstance(m, torch.nn.Module):
            m.to(map_location).eval()
    return out


class DalleGenerator(Generator):
    """DALL-E 1: text tokens -> transformer samples image codes -> dVAE decodes them."""

    recipe = "dalle"

    def __init__(self, tokenizer, clip, dvae, transformer, sampling=None, meta=None, captioner=None):
        super().__init__(tokenizer, clip, sampling, meta, captioner)
        self.dvae, self.transformer = dvae.eval(), transformer.eval()

    @classmethod
    def _from_bundle(cls, path, meta, map_location):
        p = _load_parts(path, meta["parts"], map_location)
        return cls(p["tokenizer"], p["clip"], p["dvae"], p["transformer"], meta.get("sampling"), meta,
                   p.get("captioner"))

    @property
    def image_size(self) -> int:
        return int(self.dvae.config["image_size"])

    @staticmethod
    def text_positions(tokenizer, config_of) -> int:
        return int(config_of("transformer")["text_len"])   # the transformer's text positions

    def sample(self, prompts, num, generator, settings):
        ids, mask = self.encode_text(prompts)
        codes = self.transformer.generate(ids, mask, num_samples=num, temperature=settings["temperature"],
                                          top_k=settings.get("top_k"), top_p=settings.get("top_p"),
                                          guidance_scale=settings["guidance_scale"],
                                          generator=generator)
        return self.dvae.decode(codes)


class UnclipGenerator(Generator):
    """DALL-E 2: CLIP text embedding -> prior samples an image embedding -> decoder renders it
    (-> conv upsampler 4x)."""

    recipe = "unclip"

    def __init__(self, tokenizer, clip, prior, decoder, upsampler=None, sampling=None, meta=None,
                 captioner=None):
        super().__init__(tokenizer, clip, sampling, meta, captioner)
        # prior None: only the text-conditioned decoder (the paper's baseline) or given embeddings
        # (decode_embeddings) can be sampled
        self.prior = prior.eval() if prior is not None else None
        self.decoder = decoder.eval()
        self.upsampler = upsampler.eval() if upsampler is not None else None

    @classmethod
    def _from_bundle(cls, path, meta, map_location):
        p = _load_parts(path, meta["parts"], map_location)
        return cls(p["tokenizer"], p["clip"], p["prior"], p["decoder"], p.get("upsampler"),
                   meta.get("sampling"), meta, p.get("captioner"))

    @property
    def image_size(self) -> int:
        s = int(self.decoder.config["image_size"])
        if self.upsampler is not None and self.sampling.get("upsample", True):
            s *= int(self.upsampler.config["scale"])
        return s

    def text_condition(self, prompts: list[str]):
        ids, mask = self.encode_text(prompts)
        emb, tokens = self.clip.encode_text_all(ids, mask)
        return emb, tokens, mask

    def sample(self, prompts, num, generator, settings):
        emb, tokens, mask = self.text_condition(prompts)
        rep = lambda x: x.repeat_interleave(num, dim=0)  # noqa: E731  (B*num rows, prompt-major)
        emb, tokens, mask = rep(emb), rep(tokens), rep(mask)
        if self.decoder.conditioning == "text":  # the DALL-E 2 table's text-conditioned baseline
            z = emb
        else:
            if self.prior is None:
                raise ValueError("unclip: this generator has no prior, and its decoder is image-conditioned")
            z = self.prior.sample(emb, tokens, mask, steps=settings.get("prior_steps"),
                                  guidance_scale=settings.get("prior_guidance"), generator=generator)
        images = self.decode_embeddings(z, tokens, mask, generator, settings)
        return images

    def decode_embeddings(self, z, tokens, mask, generator, settings) -> torch.Tensor:
        images = self.decoder.sample(z, tokens, mask, steps=settings.get("decoder_steps"),
                                     guidance_scale=settings.get("decoder_guidance"), generator=generator)
        if self.upsampler is not None and settings.get("upsample", True):
            images = self.upsampler.sample(images, generator=generator)
        return images
