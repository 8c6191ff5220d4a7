"""unCLIP decoder: P(x | z_i, y), a GLIDE-style pixel diffusion model at the base resolution (64x64 in the paper).

Paper (Ramesh et al. 2022, sec. 2.1): GLIDE's architecture with CLIP conditioning added two ways:
the CLIP image embedding is (1) projected and ADDED to the timestep embedding and (2) projected into
FOUR extra context tokens concatenated to the text encoder's output sequence. For classifier-free
guidance the CLIP embedding is dropped (replaced by a learned null embedding) 10% of the time and
the caption 50% of the time. 3.5B parameters, 1000 steps (cosine), 250 strided sampling steps.

Built here as:
  UNet   diffusers UNet2DConditionModel in ADM/GLIDE form: ResNet blocks with scale-shift (AdaGN)
         timestep conditioning, ResNet up/downsampling, and attention whose keys/values are the
         text context concatenated to the image tokens (GLIDE's encoder_kv attention = diffusers'
         SimpleCrossAttn blocks with AttnAddedKV processors).
  text   GLIDE's decoder owns a text transformer; here it reads the frozen CLIP text encoder's token
         states (CLIP.encode_text_tokens), projected to `text_width`, through `text_layers` more
         transformer layers (0 = projection only). Paper: width 2048, 24 layers, 32 heads.
  `conditioning: "text"`: the paper's text-conditioned comparison decoder: the same network with
         the CLIP TEXT embedding z_t in the embedding slot (no image embedding, no prior needed).

Also here: `variations`, `interpolate`, `text_diff` (sec. 3 of the paper) taking embeddings.

Config keys (`decoder:` preset section) plus the CLIP dims (prior.clip_dims(clip.config)):
  image_size, channels, channel_mult, layers_per_block, attention_levels, head_dim, norm_groups, dropout,
  text_width, text_layers, text_heads, extra_tokens, conditioning, emb_drop_prob, text_drop_prob,
  timesteps, noise_schedule, prediction_type, snr_gamma, sampler, sample_steps, guidance_scale, eta
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from model_code.models.pretrained import PretrainedMixin, positive_ints
from model_code.models.diffusion import (add_noise, diffusion_loss, make_scheduler, randn, sample_loop, sample_timesteps, slerp,
                                         validate_schedule)
from model_code.models.prior import pad_tokens

CONDITIONINGS = ("image", "text")


class TextEncoder(nn.Module):
    """CLIP token states (B, L, Wc) -> decoder context (B, L, W): projection, `layers` pre-LN
    transformer layers over the caption (padding masked), final LayerNorm."""

    def __init__(self, in_width: int, width: int, layers: int, heads: int, max_len: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(in_width, width)
        self.pos = nn.Parameter(torch.zeros(1, max_len, width)) if layers else None
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(tokens)  # (B, L, W)
        if self.layers:
            h = h + self.pos[:, : h.shape[1]]
            # a row with no caption (dropped / absent) would be all-masked -> NaN softmax; let it attend
            # to its (zeroed) first position. Its outputs are masked again in the UNet's attention.
            attend = mask.clone()
            attend[:, 0] |= ~mask.any(dim=1)
            for layer in self.layers:
                h = layer(h, src_key_padding_mask=~attend)
        return self.norm(h)


class UnCLIPDecoder(PretrainedMixin, nn.Module):
    SECTION = "decoder"
    MODEL_TYPE = "easel-unclip-decoder"
    REQUIRED = ("clip_embed_dim", "clip_text_width", "max_text_tokens")
    DEFAULTS = {
        "image_size": 32,
        "channels": 32,
        "channel_mult": [1, 2],
        "layers_per_block": 1,
        "attention_levels": [False, True],  # per level: self+text attention (paper: at 32, 16, 8 px)
        "head_dim": 32,                     # paper: 64 channels per head
        "norm_groups": 32,
        "dropout": 0.0,                     # paper: 0.1
        "text_width": 64,                   # decoder context width (paper: 2048)
        "text_layers": 0,                   # paper: 24
        "text_heads": 4,                    # paper: 32
        "extra_tokens": 4,                  # paper: 4 extra context tokens from the CLIP embedding
        "conditioning": "image",            # "text": the paper's text-embedding decoder baseline
        "emb_drop_prob": 0.1,               # paper: CLIP embedding dropped 10%
        "text_drop_prob": 0.5,              # paper: caption dropped 50%
        "timesteps": 1000,
        "noise_schedule": "cosine",
        "prediction_type": "epsilon",
        "snr_gamma": None,                  # Min-SNR-gamma loss weighting (models/diffusion.py); None = off
        "clip_sample": True,
        "sampler": "ddim",
        "sample_steps": 250,                # paper: 250 strided steps
        "guidance_scale": 3.0,
        "eta": 0.0,
    }

    @classmethod
    def _validate(cls, cfg: dict) -> None:
        positive_ints(cfg, "decoder", "clip_embed_dim", "clip_text_width", "max_text_tokens", "image_size", "channels",
                      "layers_per_block", "head_dim", "norm_groups", "text_width", "text_heads", "extra_tokens")
        if cfg["conditioning"] not in CONDITIONINGS:
            raise ValueError(f"decoder.conditioning must be one of {CONDITIONINGS} (got {cfg['conditioning']!r})")
        mult, attn = list(cfg["channel_mult"]), list(cfg["attention_levels"])
        if not mult or len(attn) != len(mult):
            raise ValueError(f"decoder.attention_levels ({len(attn)}) must have one flag per channel_mult level ({len(mult)})")
        for m in mult:
            c = cfg["channels"] * m
            if c % cfg["norm_groups"] or c % cfg["head_dim"]:
                raise ValueError(f"decoder: level width {c} (channels*channel_mult) must be divisible by "
                                 f"norm_groups={cfg['norm_groups']} and head_dim={cfg['head_dim']}")
        if cfg["image_size"] % 2 ** (len(mult) - 1):
            raise ValueError(f"decoder.image_size={cfg['image_size']} must be divisible by 2**(levels-1)={2 ** (len(mult) - 1)}")
        if not isinstance(cfg["text_layers"], int) or cfg["text_layers"] < 0:
            raise ValueError(f"decoder.text_layers must be an integer >= 0 (got {cfg['text_layers']!r})")
        if cfg["text_width"] % cfg["text_heads"]:
            raise ValueError(f"decoder.text_width={cfg['text_width']} must be divisible by decoder.text_heads={cfg['text_heads']}")
        for k in ("emb_drop_prob", "text_drop_prob"):
            if not 0 <= cfg[k] < 1:
                raise ValueError(f"decoder.{k} must be in [0, 1) (got {cfg[k]!r})")
        validate_schedule(cfg, "decoder")

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = self.resolve_config(cfg)
        self.config = cfg
        D, W = cfg["clip_embed_dim"], cfg["text_width"]
        self.embed_scale = math.sqrt(D)  # unit vectors -> unit per-dimension variance before the projections
        widths = tuple(cfg["channels"] * m for m in cfg["channel_mult"])
        attn = list(cfg["attention_levels"])
        self.unet = UNet2DConditionModel(
            sample_size=cfg["image_size"], in_channels=3, out_channels=3, block_out_channels=widths,
            layers_per_block=cfg["layers_per_block"],
            down_block_types=tuple("SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn),
            up_block_types=tuple("SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=cfg["head_dim"],
            cross_attention_dim=W, resnet_time_scale_shift="scale_shift", norm_num_groups=cfg["norm_groups"],
            dropout=cfg["dropout"],
            # (1) the CLIP embedding, projected (Linear-SiLU-Linear), is added to the timestep embedding
            class_embed_type="projection", projection_class_embeddings_input_dim=D,
        )
        # (2) ... and projected into `extra_tokens` context tokens placed before the caption's tokens
        self.emb_to_tokens = nn.Linear(D, cfg["extra_tokens"] * W)
        self.text_encoder = TextEncoder(cfg["clip_text_width"], W, cfg["text_layers"], cfg["text_heads"],
                                        cfg["max_text_tokens"], cfg["dropout"])
        self.null_emb = nn.Parameter(torch.randn(D) / math.sqrt(D))  # learned null CLIP embedding (CFG)
        self.scheduler = make_scheduler("ddpm", cfg)
        # H*W of every UNet level (the context must not be exactly this long: see _eps)
        self._spatial_tokens = {(cfg["image_size"] >> i) ** 2 for i in range(len(widths))}

    @property
    def conditioning(self) -> str:
        """"image": the embedding slot takes the CLIP image embedding z_i; "text": the CLIP text embedding z_t."""
        return self.config["conditioning"]

    # ---- the network --------------------------------------------------------------------------

    def _eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """x_t (B, 3, H, W), t scalar or (B,), cond {emb (B, D), tokens (B, L, Wc), mask (B, L)} -> eps (B, 3, H, W)."""
        emb = cond["emb"] * self.embed_scale
        B, W = emb.shape[0], self.config["text_width"]
        extra = self.emb_to_tokens(emb).view(B, self.config["extra_tokens"], W)   # (B, 4, W)
        text = self.text_encoder(cond["tokens"], cond["mask"])                     # (B, L, W)
        context = torch.cat([extra, text], dim=1)                                  # (B, 4 + L, W)
        context_mask = torch.cat([torch.ones(B, extra.shape[1], dtype=torch.bool, device=emb.device), cond["mask"]], dim=1)
        if context.shape[1] in self._spatial_tokens:
            # diffusers' added-KV attention pads the context mask by the spatial length only when
            # the two lengths differ (Attention.prepare_attention_mask): a context exactly as long
            # as a level's H*W keeps an unpadded mask and fails. One masked-out token avoids it.
            context = F.pad(context, (0, 0, 0, 1))
            context_mask = F.pad(context_mask, (0, 1), value=False)
        if t.dim() == 0:
            t = t.expand(B)
        return self.unet(x_t, t, encoder_hidden_states=context, class_labels=emb,
                         encoder_attention_mask=context_mask).sample

    def _cond(self, emb: torch.Tensor, text_tokens, text_mask) -> dict:
        D = self.config["clip_embed_dim"]
        if emb.dim() != 2 or emb.shape[1] != D:
            raise ValueError(f"decoder: the {self.conditioning} embedding must be (B, clip_embed_dim={D}); got {tuple(emb.shape)}")
        # no padding to max_text_tokens (and trailing all-padding columns trimmed): the UNet attends to fewer keys
        tokens, mask = pad_tokens(text_tokens, text_mask, self.config["max_text_tokens"], self.config["clip_text_width"],
                                  emb.shape[0], emb.device, emb.dtype, "decoder", pad=False)
        return {"emb": emb, "tokens": tokens, "mask": mask}

    def _drop(self, cond: dict, drop_emb: torch.Tensor, drop_text: torch.Tensor) -> dict:
        """Null out the embedding of rows where drop_emb (B,) and the caption of rows where drop_text (B,)."""
        return {
            "emb": torch.where(drop_emb[:, None], self.null_emb.to(cond["emb"].dtype), cond["emb"]),
            "tokens": cond["tokens"] * (~drop_text)[:, None, None],
            "mask": cond["mask"] & ~drop_text[:, None],
        }

    def _check_images(self, images: torch.Tensor) -> None:
        s = self.config["image_size"]
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(f"decoder: images must be (B, 3, {s}, {s}) in [-1, 1]; got {tuple(images.shape)}")

    # ---- training ---------------------------------------------------------------------------

    def forward_loss(self, images: torch.Tensor, image_emb: torch.Tensor, text_tokens: torch.Tensor | None = None,
                     text_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The diffusion MSE (diffusion_loss: target per prediction_type, optional Min-SNR weighting).
        `image_emb` is z_i, or z_t when config conditioning == "text"."""
        self._check_images(images)
        if image_emb.shape[0] != images.shape[0]:
            raise ValueError(f"decoder: {images.shape[0]} images but {image_emb.shape[0]} embeddings")
        cond = self._cond(image_emb, text_tokens, text_mask)
        B, dev = images.shape[0], images.device
        cond = self._drop(cond, torch.rand(B, device=dev) < self.config["emb_drop_prob"],
                          torch.rand(B, device=dev) < self.config["text_drop_prob"])
        noise = torch.randn_like(images)
        t = sample_timesteps(B, self.scheduler, dev)
        pred = self._eps(add_noise(self.scheduler, images, noise, t), t, cond)
        return {"loss": diffusion_loss(self.scheduler, pred, images, noise, t, self.config["snr_gamma"])}

    def forward(self, *args, **kwargs):
        return self.forward_loss(*args, **kwargs)

    # ---- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, image_emb: torch.Tensor, text_tokens: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
               steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
               eta: float | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] from embeddings (B, D). Guidance contrasts the full
        condition with the null embedding and no caption. `latents` fixes x_T (interpolations)."""
        cond = self._cond(image_emb, text_tokens, text_mask)
        B, s = image_emb.shape[0], self.config["image_size"]
        every = torch.ones(B, dtype=torch.bool, device=image_emb.device)
        uncond = self._drop(cond, every, every)
        sched = make_scheduler(sampler or self.config["sampler"], self.config)
        x = sample_loop(self._eps, (B, 3, s, s), sched, steps or self.config["sample_steps"],
                        self.config["guidance_scale"] if guidance_scale is None else guidance_scale,
                        cond, uncond, generator=generator, latents=latents, device=image_emb.device,
                        eta=self.config["eta"] if eta is None else eta, clamp=1.0)
        return x.clamp(-1, 1)

    def initial_noise(self, n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        """x_T ~ N(0, I) of shape (n, 3, H, W), for sampling several embeddings from one latent."""
        s = self.config["image_size"]
        return randn((n, 3, s, s), generator, device)


# ---- image manipulations through the CLIP embedding (paper sec. 3) -----------------------------

def interpolation_path(emb_a: torch.Tensor, emb_b: torch.Tensor, n: int) -> torch.Tensor:
    """(D,), (D,) -> (n, D): slerp(z_a, z_b, theta) for theta = 0, 1/(n-1), ..., 1; row 0 is z_a and
    row n-1 is z_b exactly."""
    if n < 2:
        raise ValueError(f"interpolate: n must be >= 2 (got {n})")
    thetas = torch.linspace(0, 1, n, device=emb_a.device, dtype=emb_a.dtype)
    return slerp(emb_a.expand(n, -1), emb_b.expand(n, -1), thetas)


def text_diff_path(image_emb: torch.Tensor, text_emb_old: torch.Tensor, text_emb_new: torch.Tensor,
                   thetas: Sequence[float] = (0.0, 0.25, 0.5)) -> torch.Tensor:
    """Paper's text diffs: z_d = norm(z_t - z_t0), z_theta = slerp(z_i, z_d, theta) (theta in [0.25, 0.5]
    in the paper's figures). (D,) inputs -> (len(thetas), D) embeddings, row theta=0 is z_i."""
    z_d = F.normalize(text_emb_new - text_emb_old, dim=-1)
    th = torch.as_tensor(list(thetas), device=image_emb.device, dtype=image_emb.dtype)
    return slerp(image_emb.expand(len(th), -1), z_d.expand(len(th), -1), th)


def variations(decoder: UnCLIPDecoder, image_emb: torch.Tensor, n: int, text_tokens=None, text_mask=None,
               generator: torch.Generator | None = None, **sample_kw) -> torch.Tensor:
    """n variations of each image: its CLIP embedding (B, D) decoded from n different x_T.
    Returns (B * n, 3, H, W), the n variations of image b at rows b*n ... b*n+n-1."""
    emb = image_emb.repeat_interleave(n, dim=0)
    tok = text_tokens.repeat_interleave(n, dim=0) if text_tokens is not None else None
    msk = text_mask.repeat_interleave(n, dim=0) if text_mask is not None else None
    return decoder.sample(emb, tok, msk, generator=generator, **sample_kw)


def interpolate(decoder: UnCLIPDecoder, emb_a: torch.Tensor, emb_b: torch.Tensor, n: int,
                generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                **sample_kw) -> torch.Tensor:
    """Decode the slerp path between two embeddings (D,) with ONE shared x_T (the paper fixes the
    DDIM latent so only the embedding changes along the row): (n, 3, H, W)."""
    path = interpolation_path(emb_a, emb_b, n)
    if latents is None:
        latents = decoder.initial_noise(1, generator, emb_a.device)
    return decoder.sample(path, latents=latents.expand(n, -1, -1, -1), generator=generator, **sample_kw)


def text_diff(decoder: UnCLIPDecoder, image_emb: torch.Tensor, text_emb_old: torch.Tensor, text_emb_new: torch.Tensor,
              thetas: Sequence[float] = (0.0, 0.25, 0.5), generator: torch.Generator | None = None,
              latents: torch.Tensor | None = None, **sample_kw) -> torch.Tensor:
    """Language-guided edit of an image embedding toward the text difference, decoded with one
    shared x_T: (len(thetas), 3, H, W)."""
    path = text_diff_path(image_emb, text_emb_old, text_emb_new, thetas)
    if latents is None:
        latents = decoder.initial_noise(1, generator, image_emb.device)
    return decoder.sample(path, latents=latents.expand(len(path), -1, -1, -1), generator=generator, **sample_kw)
