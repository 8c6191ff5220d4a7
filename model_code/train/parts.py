"""The registry of trainable parts: for each part, how to build its model from a preset, which
trained parts it depends on (frozen), what captions it reads, and how a data batch becomes the
keyword arguments of its `forward_loss`.

    part         deps (frozen)        batch -> forward_loss(...)
    tokenizer    -                    not a network: TextTokenizer.train on the dataset's captions
    dvae         -                    images, step
    transformer  tokenizer, dvae      text_ids, text_mask (tokenizer), image_codes (dvae.encode)
    clip         tokenizer            images, ids, mask
    captioner    tokenizer [, clip]   images, ids, mask (curated captions, short or long kind)
    prior        tokenizer, clip      text_emb, text_tokens, text_mask, image_emb (all from CLIP)
    decoder      tokenizer, clip      images, image_emb, text_tokens, text_mask
    upsampler    -                    hi_res

Every model module is imported lazily, so training one part never imports the others.
`PartSpec.prepare(batch, ctx)` runs on the training device inside the trainer's autocast; `ctx`
(a `Context`) holds the frozen dependencies (eval mode, no grad), the model's resolved config,
the resolved training config and the global step. Per-part optimiser defaults from the
papers live in `train_defaults` (the preset's `train:` section and the part section override them;
see model_code.train.module.resolve_train_config).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from model_code.text.blend import uniform

Batch = dict[str, Any]
Deps = dict[str, Any]


@dataclass
class Context:
    """What `prepare` and `sample_fn` may read besides the batch."""
    deps: Deps                      # loaded, frozen dependencies by part name
    model_config: dict              # the trained model's resolved config (model.config)
    train: dict                     # the resolved training config (module.resolve_train_config)
    step: int = 0                   # the global (optimizer) step of the current batch

    @property
    def seed(self) -> int:
        return int(self.train.get("seed", 0))


@dataclass(frozen=True)
class PartSpec:
    name: str
    build: Callable[[dict, Deps], torch.nn.Module] | None   # (whole preset, loaded deps) -> model
    load: Callable[[str], Any]                             # trained artifact URI -> object (as a dep)
    prepare: Callable[[Batch, Context], dict] | None        # (batch, ctx) -> forward_loss kwargs
    deps: tuple[str, ...] = ()
    optional_deps: tuple[str, ...] = ()
    caption_policy: str | None = "blend"                   # None: the part reads no captions
    train_defaults: dict = field(default_factory=dict)
    # (model, batch, ctx, n, seed) -> (images (M,3,H,W) in [-1,1], captions or None), for grids
    sample_fn: Callable[..., tuple[torch.Tensor, list[str] | None]] | None = None
    # tokens in one prepared batch (a tensor or int; summed on device, read only at log steps)
    tokens_fn: Callable[[dict], Any] | None = None
    with_scene: bool = False                                # the batch carries scene graphs
    # (model config, loaded deps) -> the length its captions are tokenized to, in the data
    # loader's workers (batch "text_ids"/"text_mask"); None: the part tokenizes for itself
    text_len: Callable[[dict, Deps], int] | None = None

    @property
    def is_network(self) -> bool:
        return self.build is not None


PARTS: dict[str, PartSpec] = {}


def register_part(spec: PartSpec) -> PartSpec:
    PARTS[spec.name] = spec
    return spec


def get_part(name: str) -> PartSpec:
    if name not in PARTS:
        raise ValueError(f"unknown part {name!r}: choose one of {', '.join(PARTS)}")
    return PARTS[name]


def training_keys() -> set[str]:
    """Keys that are training settings wherever they are written (module.TRAIN_DEFAULTS and every
    part's train_defaults): a model's config never holds them."""
    from model_code.train.module import TRAIN_DEFAULTS
    return set(TRAIN_DEFAULTS) | {k for p in PARTS.values() for k in p.train_defaults}


def section(cfg: dict, name: str) -> dict:
    """A part's preset section: its model config, which a bundle saves as config.json. Training
    settings live under `train.<part>` (resolve_train_config); one written here is an error that
    names where it goes, not a key silently read or dropped."""
    sec = cfg.get(name) or {}
    if not isinstance(sec, dict):
        raise ValueError(f"preset section {name!r} must be a mapping, got {type(sec).__name__}")
    misplaced = sorted(set(sec) & training_keys())
    if misplaced:
        raise ValueError(f"{', '.join(f'{name}.{k}' for k in misplaced)}: training settings go under "
                         f"train.{name} (e.g. train.{name}.{misplaced[0]}), not in the model's section")
    return dict(sec)


def _derived(sec: dict, part: str, **values: Any) -> dict:
    """Set keys that must agree with a trained dependency (vocabulary sizes, code grid, CLIP
    widths). The dependency wins: a preset value is the intent (a BPE may learn fewer merges than
    asked), and a mismatch is reported on stderr, not left to fail deep inside the model."""
    for k, v in values.items():
        if sec.get(k) is not None and sec[k] != v:
            print(f"{part}.{k}: the preset says {sec[k]!r}, the trained dependency gives {v!r}; "
                  f"using {v!r}", file=sys.stderr)
        sec[k] = v
    return sec


# --------------------------------------------------------------------------- loaders of deps
def _load_tokenizer(uri: str):
    from model_code.text.tokenizer import TextTokenizer
    return TextTokenizer.load(uri)


def _load_dvae(uri: str):
    from model_code.models.dvae import DVAE
    return DVAE.from_pretrained(uri)


def _load_clip(uri: str):
    from model_code.models.clip import CLIP
    return CLIP.from_pretrained(uri)


def _load_with(module: str, cls: str) -> Callable[[str], Any]:
    def load(uri: str):
        import importlib
        return getattr(importlib.import_module(module), cls).from_pretrained(uri)
    return load


def _text(ctx: Context, batch: Batch, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's captions as (ids (B, L) long, mask (B, L) bool) on `device`: tokenized by the
    loader's workers where the loader did (PartSpec.text_len), else here."""
    if batch.get("text_max_len") == max_len:
        ids, mask = batch["text_ids"], batch["text_mask"]
    else:
        ids, mask = ctx.deps["tokenizer"].encode_batch(batch["caption"], max_len=max_len)
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Images at a part's own resolution (area downsampling keeps flat colours flat)."""
    if size is None or images.shape[-1] == size:
        return images
    mode = "area" if size < images.shape[-1] else "bicubic"
    return F.interpolate(images, size=(size, size), mode=mode).clamp(-1, 1)


# --------------------------------------------------------------------------- dvae
def _build_dvae(cfg: dict, deps: Deps):
    from model_code.models.dvae import DVAE
    sec = section(cfg, "dvae")
    sec.setdefault("image_size", cfg.get("data", {}).get("size", sec.get("image_size")))
    return DVAE.from_config(sec)


def _prepare_dvae(batch: Batch, ctx: Context) -> dict:
    return {"images": batch["image"], "step": int(ctx.step)}


def _sample_dvae(model, batch: Batch, ctx: Context, n: int, seed: int):
    x = batch["image"][:n]
    recon = model.decode(model.encode(x))                       # (n, 3, H, W)
    return torch.cat([x, recon.to(x.dtype)]), None              # originals row, then reconstructions


register_part(PartSpec(
    "dvae", _build_dvae, _load_dvae, _prepare_dvae, caption_policy=None,
    # DALL-E 1 appendix A.2: AdamW beta (0.9, 0.999), eps 1e-8, weight decay 1e-4; lr 1e-4 cosine
    # annealed to 1.25e-6 over 1.2M updates (module.lr_lambda, schedule "dvae")
    train_defaults={"lr": 1e-4, "lr_end": 1.25e-6, "lr_anneal_steps": 1_200_000, "lr_warmup_steps": 0,
                    "adam_betas": (0.9, 0.999), "adam_eps": 1e-8, "weight_decay": 1e-4,
                    "lr_schedule": "dvae"},
    sample_fn=_sample_dvae))


# --------------------------------------------------------------------------- transformer
def _transformer_dims(cfg: dict, deps: Deps) -> dict:
    sec = section(cfg, "transformer")
    tok, dvae = deps["tokenizer"], deps["dvae"]
    size = int(cfg.get("data", {}).get("size", dvae.config["image_size"]))
    sec.setdefault("text_len", tok.max_len)  # the transformer may read fewer text tokens
    return _derived(sec, "transformer", text_vocab_size=tok.vocab_size,
                    image_grid=size // dvae.downsample, codebook_size=dvae.codebook_size)


def _build_transformer(cfg: dict, deps: Deps):
    from model_code.models.transformer import DalleTransformer
    return DalleTransformer.from_config(_transformer_dims(cfg, deps))


@contextlib.contextmanager
def frozen(device: torch.device):
    """A frozen dependency's forward: no grad, and in full precision outside the trainer's autocast.
    Its outputs are the part's targets and conditioning, and must be what sampling and evaluation
    compute in fp32: under CPU bf16 autocast 48% of the laptop dVAE's argmax codes differ from its
    fp32 codes, and a transformer trained on them scored 2.26 nats/token on fp32 codes (0.77 in fp32)."""
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        yield


def _prepare_transformer(batch: Batch, ctx: Context) -> dict:
    images = batch["image"]
    with frozen(images.device):
        codes = ctx.deps["dvae"].encode(images)                 # (B, h, w) long
    ids, mask = _text(ctx, batch, ctx.model_config["text_len"], images.device)
    return {"text_ids": ids, "text_mask": mask, "image_codes": codes}


def _sample_transformer(model, batch: Batch, ctx: Context, n: int, seed: int):
    caps = batch["caption"][:n]
    ids, mask = _text(ctx, {"caption": caps}, ctx.model_config["text_len"], batch["image"].device)
    codes = model.generate(ids, mask, num_samples=1, seed=seed)    # (n, h, w)
    return ctx.deps["dvae"].decode(codes), caps


def _tokens_transformer(kw: dict) -> int:
    return kw["text_ids"].shape[0] * (kw["text_ids"].shape[1] + kw["image_codes"][0].numel())


register_part(PartSpec(
    "transformer", _build_transformer, _load_with("model_code.models.transformer", "DalleTransformer"),
    _prepare_transformer, deps=("tokenizer", "dvae"),
    # DALL-E 1 appendix B.2: AdamW beta (0.9, 0.96), eps 1e-8, weight decay 4.5e-2, lr 4.5e-4
    # after a linear warm-up of 5000 updates (the paper then halves on plateau; cosine here)
    train_defaults={"lr": 4.5e-4, "adam_betas": (0.9, 0.96), "adam_eps": 1e-8,
                    "weight_decay": 4.5e-2, "warmup_steps": 5000},
    sample_fn=_sample_transformer, tokens_fn=_tokens_transformer,
    text_len=lambda mc, deps: mc["text_len"]))


# --------------------------------------------------------------------------- clip
def _clip_cfg(cfg: dict, deps: Deps) -> dict:
    sec = section(cfg, "clip")
    tok = deps["tokenizer"]
    sec.setdefault("image_size", cfg.get("data", {}).get("size"))
    sec.setdefault("max_text_tokens", tok.max_len)
    return _derived(sec, "clip", vocab_size=tok.vocab_size)


def _build_clip(cfg: dict, deps: Deps):
    from model_code.models.clip import CLIP
    return CLIP.from_config({k: v for k, v in _clip_cfg(cfg, deps).items() if v is not None})


def _prepare_clip(batch: Batch, ctx: Context) -> dict:
    ids, mask = _text(ctx, batch, ctx.model_config["max_text_tokens"], batch["image"].device)
    return {"images": batch["image"], "ids": ids, "mask": mask}


def _tokens_text(kw: dict) -> torch.Tensor:
    return kw["mask"].sum() if "mask" in kw else kw["text_mask"].sum()  # real tokens, no host sync


register_part(PartSpec(
    "clip", _build_clip, _load_clip, _prepare_clip, deps=("tokenizer",),
    # CLIP (Radford et al. 2021): AdamW beta (0.9, 0.98), eps 1e-6, weight decay 0.2, cosine decay
    train_defaults={"lr": 5e-4, "adam_betas": (0.9, 0.98), "adam_eps": 1e-6, "weight_decay": 0.2,
                    "warmup_steps": 2000},
    tokens_fn=_tokens_text, text_len=lambda mc, deps: mc["max_text_tokens"]))


# --------------------------------------------------------------------------- captioner (CoCa)
def _build_captioner(cfg: dict, deps: Deps):
    from model_code.models.coca import CoCa
    sec = section(cfg, "captioner")
    tok = deps["tokenizer"]
    sec.setdefault("max_text_tokens", tok.max_len)
    clip_sec = dict(sec.get("clip") or section(cfg, "clip"))
    clip_sec.setdefault("image_size", cfg.get("data", {}).get("size"))
    sec["clip"] = {k: v for k, v in clip_sec.items() if v is not None}
    conf = CoCa.config_for(sec, tok)
    if "clip" in deps:  # warm start from a trained CLIP (the seed's "CLIP encoder + random decoder")
        return CoCa.from_clip(deps["clip"], conf)
    return CoCa.from_config(conf)


def _captioner_targets(batch: Batch, ctx: Context) -> tuple[list[str], list[str]]:
    """DALL-E 3 trains its captioner for short and long captions: each curated example is a long
    target, or (with probability short_fraction, decided by stream position) its short summary."""
    from model_code.models.coca import short_target
    frac, seed = float(ctx.train.get("short_fraction", 0.5)), ctx.seed
    caps, kinds = [], []
    for cap, scene, pos in zip(batch["caption"], batch["scene"], batch["position"].tolist()):
        if uniform(seed + 1, pos) < frac:
            caps.append(short_target(cap, scene))
            kinds.append("short")
        else:
            caps.append(cap)
            kinds.append("long")
    return caps, kinds


def _prepare_captioner(batch: Batch, ctx: Context) -> dict:
    from model_code.models.coca import encode_targets
    caps, kinds = _captioner_targets(batch, ctx)
    ids, mask = encode_targets(ctx.deps["tokenizer"], caps, kinds, max_len=ctx.model_config["max_text_tokens"])
    dev = batch["image"].device
    return {"images": batch["image"], "ids": ids.to(dev), "mask": mask.to(dev)}


register_part(PartSpec(
    "captioner", _build_captioner, _load_with("model_code.models.coca", "CoCa"), _prepare_captioner,
    deps=("tokenizer",), optional_deps=("clip",), caption_policy="curated", with_scene=True,
    # CoCa (Yu et al. 2022): beta (0.9, 0.999), decoupled weight decay 0.01, peak lr 8e-4 with a
    # warm-up (the paper's Adafactor is replaced by AdamW, the one optimiser of this trainer)
    train_defaults={"lr": 8e-4, "adam_betas": (0.9, 0.999), "adam_eps": 1e-8, "weight_decay": 0.01,
                    "warmup_steps": 2000, "short_fraction": 0.5},
    tokens_fn=_tokens_text))


# --------------------------------------------------------------------------- prior
def _clip_text_len(model_config: dict, deps: Deps) -> int:
    return int(deps["clip"].config["max_text_tokens"])


def _clip_text(batch: Batch, ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen CLIP on the captions: (z_t (B, D), token states (B, L, W), mask (B, L))."""
    clip = ctx.deps["clip"]
    ids, mask = _text(ctx, batch, clip.config["max_text_tokens"], batch["image"].device)
    with frozen(ids.device):
        z_t, tokens = clip.encode_text_all(ids, mask)
    return z_t, tokens, mask


def _clip_image(images: torch.Tensor, ctx: Context) -> torch.Tensor:
    clip = ctx.deps["clip"]
    with frozen(images.device):
        return clip.encode_image(_resize(images, clip.config["image_size"]))  # (B, D) unit norm


def _build_prior(cfg: dict, deps: Deps):
    from model_code.models.prior import DiffusionPrior, clip_dims
    sec = _derived(section(cfg, "prior"), "prior", **clip_dims(deps["clip"].config))
    return DiffusionPrior.from_config(sec)


def _prepare_prior(batch: Batch, ctx: Context) -> dict:
    z_t, tokens, mask = _clip_text(batch, ctx)
    return {"text_emb": z_t, "text_tokens": tokens, "text_mask": mask,
            "image_emb": _clip_image(batch["image"], ctx)}


# unCLIP appendix C: AdamW, EMA decay 0.9999 for the prior and the decoder; prior lr 1.1e-4,
# decoder lr 1.2e-4 (the paper's weight decay 6.0e-2 for the prior, 0 for the decoder)
register_part(PartSpec(
    "prior", _build_prior, _load_with("model_code.models.prior", "DiffusionPrior"), _prepare_prior,
    deps=("tokenizer", "clip"),
    train_defaults={"lr": 1.1e-4, "adam_betas": (0.9, 0.96), "adam_eps": 1e-10,
                    "weight_decay": 6.0e-2, "ema_decay": 0.9999, "warmup_steps": 1000},
    tokens_fn=_tokens_text, text_len=_clip_text_len))


# --------------------------------------------------------------------------- decoder
def _build_decoder(cfg: dict, deps: Deps):
    from model_code.models.decoder import UnCLIPDecoder
    from model_code.models.prior import clip_dims
    sec = _derived(section(cfg, "decoder"), "decoder", **clip_dims(deps["clip"].config))
    return UnCLIPDecoder.from_config(sec)


def _prepare_decoder(batch: Batch, ctx: Context) -> dict:
    z_t, tokens, mask = _clip_text(batch, ctx)
    size = ctx.model_config.get("image_size")
    # conditioning "text": the DALL-E 2 comparison decoder takes z_t where unCLIP takes z_i
    emb = z_t if ctx.model_config.get("conditioning") == "text" else _clip_image(batch["image"], ctx)
    return {"images": _resize(batch["image"], size), "image_emb": emb,
            "text_tokens": tokens, "text_mask": mask}


def _sample_decoder(model, batch: Batch, ctx: Context, n: int, seed: int):
    head = {k: (v[:n] if isinstance(v, (list, tuple)) or torch.is_tensor(v) else v) for k, v in batch.items()}
    kw = _prepare_decoder(head, ctx)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = model.sample(kw["image_emb"], kw["text_tokens"], kw["text_mask"], generator=gen)
    return torch.cat([kw["images"], images.to(kw["images"].dtype)]), None  # originals, then samples


register_part(PartSpec(
    "decoder", _build_decoder, _load_with("model_code.models.decoder", "UnCLIPDecoder"), _prepare_decoder,
    deps=("tokenizer", "clip"),
    train_defaults={"lr": 1.2e-4, "adam_betas": (0.9, 0.999), "adam_eps": 1e-8,
                    "weight_decay": 0.0, "ema_decay": 0.9999, "warmup_steps": 1000},
    sample_fn=_sample_decoder, text_len=_clip_text_len))


# --------------------------------------------------------------------------- upsampler
def _build_upsampler(cfg: dict, deps: Deps):
    from model_code.models.upsampler import Upsampler
    return Upsampler.from_config(section(cfg, "upsampler"))


def _prepare_upsampler(batch: Batch, ctx: Context) -> dict:
    return {"hi_res": _resize(batch["image"], ctx.model_config.get("image_size"))}


def _sample_upsampler(model, batch: Batch, ctx: Context, n: int, seed: int):
    hi = _resize(batch["image"][:n], ctx.model_config.get("image_size"))
    low = F.interpolate(hi, scale_factor=1 / model.config["scale"], mode="area")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.cat([hi, model.sample(low, generator=gen).to(hi.dtype)]), None  # truth, then 4x


register_part(PartSpec(
    "upsampler", _build_upsampler, _load_with("model_code.models.upsampler", "Upsampler"),
    _prepare_upsampler, caption_policy=None, sample_fn=_sample_upsampler,
    # unCLIP appendix C: the 64->256 upsampler's AdamW lr 1.2e-4, no weight decay
    train_defaults={"lr": 1.2e-4, "adam_betas": (0.9, 0.999), "adam_eps": 1e-8, "weight_decay": 0.0,
                    "warmup_steps": 1000}))


# --------------------------------------------------------------------------- tokenizer
register_part(PartSpec("tokenizer", None, _load_tokenizer, None, caption_policy=None))
