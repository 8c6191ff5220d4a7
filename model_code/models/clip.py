"""CLIP: contrastive image-text encoders (transformers' CLIPModel built from a preset config).

In the unCLIP recipe (DALL-E 2) CLIP is trained first and then frozen: its image embedding z_i is
the latent the prior generates and the decoder inverts; its text embedding z_t and its text-token
states condition the prior and the decoder. The CoCa captioner reuses `image_features`.

Inputs everywhere:
  images  float (B, 3, H, W) in [-1, 1] (normalised to CLIP's mean/std inside)
  ids     LongTensor (B, L) from model_code.text.tokenizer, mask BoolTensor (B, L) (True = real token)

Config keys (the `clip:` preset section; `vocab_size` is added by the caller from the tokenizer):
  vocab_size, max_text_tokens, image_size, patch_size, width, layers, heads,
  text_width, text_layers, text_heads, embed_dim, mlp_ratio, logit_scale_init, max_logit_scale
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from model_code.models import on_host
from model_code.models.pretrained import PretrainedMixin, positive_ints

# OpenAI CLIP's pixel statistics (images are mapped [-1, 1] -> [0, 1] -> (x - mean) / std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_text(ids: torch.Tensor, mask: torch.Tensor, max_len: int | None = None, name: str = "text") -> None:
    """Validate (ids, mask) pairs from the tokenizer; a clear ValueError instead of a shape crash."""
    if ids.dim() != 2 or mask.shape != ids.shape:
        raise ValueError(f"{name}: ids and mask must both be (B, L); got {tuple(ids.shape)} and {tuple(mask.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: ids must be an integer tensor (got {ids.dtype})")
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"{name}: {ids.shape[1]} tokens exceed max_text_tokens={max_len}")


class _ConvStem(nn.Sequential):
    @property
    def weight(self) -> torch.Tensor:  # transformers' CLIP embeddings read the patchify dtype from here
        return self[-1].weight


def _conv_stem(patch_size: int, width: int) -> nn.Sequential:
    """(B, 3, S, S) -> (B, width, S / patch_size, S / patch_size): log2(patch_size) stride-2 3x3
    conv + BN-free GELU stages (channels widening to `width`), then a 1x1 conv. patch_size must be
    a power of two."""
    if patch_size & (patch_size - 1):
        raise ValueError(f"clip.conv_stem needs a power-of-two patch_size, got {patch_size}")
    layers, ch = [], 3
    stages = max(0, patch_size.bit_length() - 1)
    for i in range(stages):
        out = max(8, width // 2 ** (stages - 1 - i))
        layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.GELU()]
        ch = out
    layers.append(nn.Conv2d(ch, width, 1))
    return _ConvStem(*layers)


class CLIP(PretrainedMixin, nn.Module):
    SECTION = "clip"
    MODEL_TYPE = "easel-clip"
    REQUIRED = ("vocab_size",)
    DEFAULTS = {
        "max_text_tokens": 64,
        "image_size": 32,
        "patch_size": 4,
        "width": 64,         # vision transformer width
        "layers": 2,
        "heads": 4,
        "text_width": 64,
        "text_layers": 2,
        "text_heads": 4,
        "embed_dim": 64,     # joint embedding dimension D (paper: 1024)
        "mlp_ratio": 4,
        "logit_scale_init": math.log(1 / 0.07),  # CLIP paper: temperature initialised to 0.07
        "max_logit_scale": 100.0,                # CLIP paper: logits scale clipped at 100
        "conv_stem": False,  # patchify with a small conv stack instead of one strided conv (below)
    }

    @classmethod
    def _validate(cls, cfg: dict) -> None:
        positive_ints(cfg, "clip", "vocab_size", "max_text_tokens", "image_size", "patch_size", "width", "layers",
                      "heads", "text_width", "text_layers", "text_heads", "embed_dim", "mlp_ratio")
        if cfg["image_size"] % cfg["patch_size"]:
            raise ValueError(f"clip.image_size={cfg['image_size']} must be divisible by clip.patch_size={cfg['patch_size']}")
        if cfg["width"] % cfg["heads"]:
            raise ValueError(f"clip.width={cfg['width']} must be divisible by clip.heads={cfg['heads']}")
        if not isinstance(cfg["conv_stem"], bool):
            raise ValueError(f"clip.conv_stem must be true or false, got {cfg['conv_stem']!r}")
        if cfg["text_width"] % cfg["text_heads"]:
            raise ValueError(f"clip.text_width={cfg['text_width']} must be divisible by clip.text_heads={cfg['text_heads']}")

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = self.resolve_config(cfg)
        self.config = cfg
        hf = CLIPConfig(
            text_config=dict(
                vocab_size=cfg["vocab_size"], hidden_size=cfg["text_width"],
                intermediate_size=cfg["text_width"] * cfg["mlp_ratio"], num_hidden_layers=cfg["text_layers"],
                num_attention_heads=cfg["text_heads"], max_position_embeddings=cfg["max_text_tokens"],
                # special ids are the tokenizer's business; we pool the last real token (encode_text)
                bos_token_id=0, eos_token_id=0, pad_token_id=0,
            ),
            vision_config=dict(
                image_size=cfg["image_size"], patch_size=cfg["patch_size"], hidden_size=cfg["width"],
                intermediate_size=cfg["width"] * cfg["mlp_ratio"], num_hidden_layers=cfg["layers"],
                num_attention_heads=cfg["heads"],
            ),
            projection_dim=cfg["embed_dim"], logit_scale_init_value=cfg["logit_scale_init"],
        )
        self.model = CLIPModel(hf)
        if cfg["conv_stem"]:
            # "Early convolutions help transformers see better" (Xiao et al. 2021): a stack of
            # stride-2 3x3 convs (then a 1x1 to the width) replaces the ViT's patchify conv. At a
            # few thousand 32 px images a ViT with 4 px patches has no locality prior and learns
            # shapes slowly; the stem gives it one. Same output grid (image_size / patch_size).
            emb = self.model.vision_model.embeddings
            emb.patch_embedding = _conv_stem(cfg["patch_size"], cfg["width"])
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.config["embed_dim"]

    @property
    def text_width(self) -> int:
        return self.config["text_width"]

    @property
    def vision_width(self) -> int:
        return self.config["width"]

    # ---- image side -------------------------------------------------------------------------

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        s = self.config["image_size"]
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(f"clip: images must be (B, 3, {s}, {s}) in [-1, 1]; got {tuple(images.shape)}")
        x = (images.float() + 1) / 2  # [-1, 1] -> [0, 1]
        return ((x - self.pixel_mean) / self.pixel_std).to(self.pixel_mean.dtype)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Vision token states after the final LayerNorm: (B, 1 + N_patches, W) (CLS first)."""
        vm = self.model.vision_model
        h = vm(pixel_values=self._pixels(images)).last_hidden_state  # (B, 1+N, W)
        return vm.post_layernorm(h)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D), L2-normalised unless normalize=False."""
        pooled = self.model.vision_model(pixel_values=self._pixels(images)).pooler_output  # (B, W), CLS + LN
        z = self.model.visual_projection(pooled)  # (B, D)
        return F.normalize(z, dim=-1) if normalize else z

    # ---- text side --------------------------------------------------------------------------

    def _text_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_text(ids, mask, self.config["max_text_tokens"], "clip")
        mask = mask.bool()
        if on_host(mask) and not mask.any(dim=1).all():   # no host sync on an accelerator
            raise ValueError("clip: every caption needs at least one real token (a row of mask is all False)")
        return self.model.text_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, W)

    def encode_text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's last hidden states (B, L, W), the prior/decoder's token conditioning."""
        return self._text_states(ids, mask)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, normalize: bool = True,
                    tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) -> (B, D). Pools the state of the LAST real token: with a causal text encoder it
        is the only one that has read the whole caption (CLIP pools its EOS token; this does not
        depend on the tokenizer's EOS id or on its padding side). Pass `tokens` (from
        encode_text_tokens) to avoid a second forward pass."""
        h = tokens if tokens is not None else self._text_states(ids, mask)
        pos = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask.bool(), pos, -1).argmax(dim=1)  # (B,) index of the last True
        pooled = h[torch.arange(h.shape[0], device=h.device), last]  # (B, W)
        z = self.model.text_projection(pooled)  # (B, D)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text_all(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_t (B, D) normalised, token states (B, L, W)) in one text-encoder pass."""
        tokens = self._text_states(ids, mask)
        return self.encode_text(ids, mask, tokens=tokens), tokens

    # ---- training and scoring ---------------------------------------------------------------

    def logit_scale(self) -> torch.Tensor:
        # CLIP paper: the learned temperature is clipped so logits are scaled by at most 100
        return self.model.logit_scale.exp().clamp(max=self.config["max_logit_scale"])

    def forward_loss(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Symmetric InfoNCE over the batch: the i-th image matches the i-th caption."""
        if images.shape[0] != ids.shape[0]:
            raise ValueError(f"clip: {images.shape[0]} images but {ids.shape[0]} captions")
        zi = self.encode_image(images)        # (B, D)
        zt = self.encode_text(ids, mask)      # (B, D)
        logits = self.logit_scale() * zi @ zt.t()  # (B, B): image i vs caption j
        target = torch.arange(zi.shape[0], device=zi.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        with torch.no_grad():
            acc = ((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean()) / 2
        return {"loss": loss, "acc": acc, "logit_scale": self.logit_scale().detach()}

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_loss(images, ids, mask)

    @torch.no_grad()
    def score(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) cosine similarity between image i and caption i."""
        return (self.encode_image(images) * self.encode_text(ids, mask)).sum(-1)

    @torch.no_grad()
    def clip_score(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) CLIPScore as in the literature (Hessel et al. 2021, w = 100): 100 * max(cos, 0)."""
        return 100.0 * self.score(images, ids, mask).clamp(min=0)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
