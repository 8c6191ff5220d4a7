"""unCLIP diffusion prior: P(z_i | y), a Gaussian diffusion over CLIP image embeddings.

Paper (Ramesh et al. 2022, sec. 2.2): a decoder-only transformer with a causal attention mask over
the sequence [encoded text tokens, CLIP text embedding z_t, timestep embedding, noised image
embedding z_i^(t), final embedding]; the output at the final embedding predicts the UNNOISED z_i
directly (MSE on x0, not eps). Text conditioning is dropped 10% of the time for classifier-free
guidance. 1B parameters, 1000 training steps (cosine schedule), 64 strided sampling steps.

The transformer is diffusers' PriorTransformer (the same sequence layout). The text tokens are the
frozen CLIP text encoder's last hidden states (CLIP.encode_text_tokens), padded to max_text_tokens.

Config keys (`prior:` preset section) plus the CLIP dims (`clip_dims(clip.config)`):
  clip_embed_dim, clip_text_width, max_text_tokens    from CLIP
  width, layers, heads, dropout                        transformer (width = heads * head dim)
  cond_drop_prob                                       0.1 (paper)
  timesteps, noise_schedule, prediction_type, snr_gamma, sampler, sample_steps, guidance_scale
  lr, weight_decay, ema_decay, ...                     read by the trainer, ignored here
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import PriorTransformer

from model_code.models.pretrained import PretrainedMixin, positive_ints
from model_code.models.diffusion import add_noise, diffusion_loss, make_scheduler, sample_loop, sample_timesteps, validate_schedule


def clip_dims(clip_cfg: dict) -> dict:
    """The conditioning shapes a prior/decoder needs from a CLIP config (merge into its section)."""
    return {"clip_embed_dim": clip_cfg["embed_dim"], "clip_text_width": clip_cfg["text_width"],
            "max_text_tokens": clip_cfg["max_text_tokens"]}


def pad_tokens(tokens: torch.Tensor | None, mask: torch.Tensor | None, length: int, width: int, batch: int,
               device, dtype, section: str, pad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated text-token conditioning (B, L, width), (B, L) bool, padded to L = `length` (the
    prior's fixed sequence) or, with pad=False, kept at the caption's length (at most `length`).
    A missing caption is an all-False mask (the same thing as a dropped caption)."""
    if tokens is None:
        L = length if pad else 1
        return torch.zeros(batch, L, width, device=device, dtype=dtype), torch.zeros(batch, L, dtype=torch.bool, device=device)
    if tokens.dim() != 3 or tokens.shape[0] != batch or tokens.shape[2] != width:
        raise ValueError(f"{section}: text_tokens must be (B={batch}, L, clip_text_width={width}); got {tuple(tokens.shape)}")
    if mask is None or mask.shape != tokens.shape[:2]:
        raise ValueError(f"{section}: text_mask must be (B, L) = {tuple(tokens.shape[:2])}; got {None if mask is None else tuple(mask.shape)}")
    if tokens.shape[1] > length:
        raise ValueError(f"{section}: {tokens.shape[1]} text tokens exceed max_text_tokens={length}")
    mask = mask.bool()
    if not pad:  # drop trailing columns that are padding in every row: fewer keys, same result
        used = torch.nonzero(mask.any(0))
        keep = int(used.max()) + 1 if len(used) else 1
        tokens, mask = tokens[:, :keep], mask[:, :keep]
    n = length - tokens.shape[1] if pad else 0
    tokens = F.pad(tokens.to(dtype), (0, 0, 0, n))
    mask = F.pad(mask, (0, n), value=False)
    return tokens * mask[..., None], mask  # zero the padded / dropped positions


class DiffusionPrior(PretrainedMixin, nn.Module):
    SECTION = "prior"
    MODEL_TYPE = "easel-unclip-prior"
    REQUIRED = ("clip_embed_dim", "clip_text_width", "max_text_tokens")
    DEFAULTS = {
        "width": 128,
        "layers": 2,
        "heads": 4,
        "dropout": 0.0,
        "cond_drop_prob": 0.1,      # paper: text conditioning dropped 10% of the time
        "timesteps": 1000,          # paper: 1000 diffusion steps
        "noise_schedule": "cosine",  # paper: cosine schedule
        "prediction_type": "sample",  # paper: predict the unnoised z_i directly
        "snr_gamma": None,          # Min-SNR-gamma loss weighting (models/diffusion.py); None = off
        "sampler": "ddpm",
        "sample_steps": 64,         # paper: 64 strided sampling steps
        "guidance_scale": 1.0,
    }

    @classmethod
    def _validate(cls, cfg: dict) -> None:
        positive_ints(cfg, "prior", "clip_embed_dim", "clip_text_width", "max_text_tokens", "width", "layers", "heads")
        if cfg["width"] % cfg["heads"]:
            raise ValueError(f"prior.width={cfg['width']} must be divisible by prior.heads={cfg['heads']}")
        if not 0 <= cfg["cond_drop_prob"] < 1:
            raise ValueError(f"prior.cond_drop_prob must be in [0, 1) (got {cfg['cond_drop_prob']!r})")
        validate_schedule(cfg, "prior")

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = self.resolve_config(cfg)
        self.config = cfg
        D, W = cfg["clip_embed_dim"], cfg["width"]
        # CLIP embeddings are unit vectors (entries ~ 1/sqrt(D)); diffusing sqrt(D) * z gives unit
        # per-dimension variance, matched to the N(0, I) noise (as DALLE2-pytorch's image_embed_scale).
        self.embed_scale = math.sqrt(D)
        self.text_proj = nn.Linear(cfg["clip_text_width"], W)  # CLIP token states -> transformer width
        self.net = PriorTransformer(
            num_attention_heads=cfg["heads"], attention_head_dim=W // cfg["heads"], num_layers=cfg["layers"],
            embedding_dim=D, num_embeddings=cfg["max_text_tokens"], additional_embeddings=4,
            dropout=cfg["dropout"], norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type="prd",
        )
        # PriorTransformer's clip_mean/clip_std only un-normalise Karlo's latents; unused here, so frozen
        # (a trainable parameter without a gradient would break DDP without find_unused_parameters)
        self.net.clip_mean.requires_grad_(False)
        self.net.clip_std.requires_grad_(False)
        # learned "no caption" text embedding, used when the condition is dropped (CFG)
        self.null_text_emb = nn.Parameter(torch.randn(D) / math.sqrt(D))
        self.scheduler = make_scheduler("ddpm", cfg)  # training: q(x_t | x_0)

    # ---- the network --------------------------------------------------------------------------

    def _predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """x_t (B, D) scaled noised embedding, t scalar or (B,) -> predicted scaled x0 (B, D)."""
        return self.net(
            hidden_states=x_t, timestep=t, proj_embedding=cond["text_emb"] * self.embed_scale,
            encoder_hidden_states=self.text_proj(cond["tokens"]), attention_mask=cond["mask"],
        ).predicted_image_embedding

    def _cond(self, text_emb, text_tokens, text_mask) -> dict:
        D = self.config["clip_embed_dim"]
        if text_emb.dim() != 2 or text_emb.shape[1] != D:
            raise ValueError(f"prior: text_emb must be (B, clip_embed_dim={D}); got {tuple(text_emb.shape)}")
        tokens, mask = pad_tokens(text_tokens, text_mask, self.config["max_text_tokens"], self.config["clip_text_width"],
                                  text_emb.shape[0], text_emb.device, text_emb.dtype, "prior")
        return {"text_emb": text_emb, "tokens": tokens, "mask": mask}

    def _null(self, cond: dict, drop: torch.Tensor) -> dict:
        """Replace the text condition of rows where drop (B,) is True by the null condition."""
        return {
            "text_emb": torch.where(drop[:, None], self.null_text_emb.to(cond["text_emb"].dtype), cond["text_emb"]),
            "tokens": cond["tokens"] * (~drop)[:, None, None],
            "mask": cond["mask"] & ~drop[:, None],
        }

    # ---- training ---------------------------------------------------------------------------

    def forward_loss(self, text_emb: torch.Tensor, text_tokens: torch.Tensor | None, text_mask: torch.Tensor | None,
                     image_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """The diffusion MSE (diffusion_loss) on the scaled image embedding; the paper predicts the
        clean embedding itself (prediction_type "sample")."""
        cond = self._cond(text_emb, text_tokens, text_mask)
        if image_emb.shape != text_emb.shape:
            raise ValueError(f"prior: image_emb {tuple(image_emb.shape)} must match text_emb {tuple(text_emb.shape)}")
        B = image_emb.shape[0]
        drop = torch.rand(B, device=image_emb.device) < self.config["cond_drop_prob"]
        cond = self._null(cond, drop)
        x0 = image_emb * self.embed_scale
        noise = torch.randn_like(x0)
        t = sample_timesteps(B, self.scheduler, x0.device)
        pred = self._predict(add_noise(self.scheduler, x0, noise, t), t, cond)
        return {"loss": diffusion_loss(self.scheduler, pred, x0, noise, t, self.config["snr_gamma"])}

    def forward(self, *args, **kwargs):
        return self.forward_loss(*args, **kwargs)

    # ---- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, text_emb: torch.Tensor, text_tokens: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
               steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, latents: torch.Tensor | None = None) -> torch.Tensor:
        """A CLIP image embedding for each caption: (B, D), L2-normalised."""
        cond = self._cond(text_emb, text_tokens, text_mask)
        B, D = text_emb.shape
        uncond = self._null(cond, torch.ones(B, dtype=torch.bool, device=text_emb.device))
        sched = make_scheduler(sampler or self.config["sampler"], self.config)
        x = sample_loop(self._predict, (B, D), sched, steps or self.config["sample_steps"],
                        self.config["guidance_scale"] if guidance_scale is None else guidance_scale,
                        cond, uncond, generator=generator, latents=latents, device=text_emb.device)
        return F.normalize(x, dim=-1)
