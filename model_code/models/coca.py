"""CoCa captioner (DALL-E 3's recaptioner): CLIP's contrastive towers + a captioning decoder.

DALL-E 3 builds its captioner on CoCa (Yu et al. 2022): an image encoder trained with two
objectives at once, CLIP-style contrastive matching and autoregressive captioning. Here

    images (B, 3, H, W) --CLIP vision tower--> tokens (B, 1+N, W) --Linear+LN--> (B, 1+N, C)
                                                   |  CLS                               | cross-attention
                                                   v                                    v
                                     contrastive loss vs CLIP text tower     GPT-2 decoder -> caption

The image encoder IS a `model_code.models.clip.CLIP` (the same class the unCLIP recipe trains), so
a trained CLIP warm-starts the captioner (`CoCa.from_clip`): the seed's "CLIP encoder + random
decoder" starting point, which CoCa training then improves with both losses. Unlike the CoCa
paper there are no attentional poolers: the contrastive embedding is CLIP's own (CLS) and the
decoder cross-attends to every image token, so the towers stay an unmodified CLIP.

Loss (CoCa paper, eq. 3): L = contrastive_weight * L_con + caption_weight * L_cap, with the paper's
lambda_Con = 1, lambda_Cap = 2 as defaults.

Caption kind: DALL-E 3 trains its captioner for two kinds of caption, short (~20 tokens) and long
descriptive (~100-200 tokens). The decoder sees a kind token right after <bos>:

    ids   [<bos>, <short>|<long>, t_1 ... t_n, <eos>, <pad> ...]     (the tokenizer's layout)

and generation starts from [<bos>, kind]. The kind token itself is never a prediction target.

Batch fields for training (`forward_loss`): `images` float (B, 3, S, S) in [-1, 1] and `ids`, `mask`
(B, L) from `encode_targets(tokenizer, captions, kinds)`. The captioner is trained on the curated
subset only: long targets are the curated captions, short targets `short_target(curated, scene)`.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from model_code.models.clip import CLIP, check_text
from model_code.models.pretrained import PretrainedMixin, positive_ints
from model_code.text import tokenizer as tok_mod

KINDS = ("short", "long")
KIND_TOKENS = {"short": tok_mod.SHORT, "long": tok_mod.LONG}


# ---------------------------------------------------------------- caption targets
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def short_from_long(text: str, max_words: int = 20) -> str:
    """A short caption from a long descriptive one: its first sentence, cut to `max_words` words.

    Works for any data (not only Shapes): the first sentence of a human description is usually
    the summary ("A golden retriever on a beach at sunset."); DALL-E 3's short captions are
    ~5-10 words / ~20 tokens, so a long first sentence is truncated at a word boundary.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"short_from_long: text must be a non-empty str, got {text!r}")
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()
    words = first.split()
    if len(words) > max_words:
        first = " ".join(words[:max_words]).rstrip(",;:")
    return first


def short_target(curated: str, scene: dict | str | None = None) -> str:
    """The short training caption for a curated example.

    On the Shapes world the scene graph is known, so the short target is the truthful summary
    `shapes.short_caption` ("a red circle and a blue square", like the seed's "a golden retriever
    on a beach"); elsewhere it is `short_from_long(curated)`. `scene` may be the manifest's JSON text.
    """
    from model_code.data import shapes
    scene = shapes.parse_scene(scene)
    if scene:
        return shapes.short_caption(scene)
    return short_from_long(curated)


def encode_targets(tokenizer, captions: Sequence[str], kinds: Sequence[str],
                   max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions with a per-example kind -> (ids (B, L), mask (B, L)) with the kind token after <bos>."""
    if len(captions) != len(kinds):
        raise ValueError(f"encode_targets: {len(captions)} captions but {len(kinds)} kinds")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"encode_targets: kinds must be in {KINDS}, got {bad[0]!r}")
    L = max_len or tokenizer.max_len
    ids = torch.full((len(captions), L), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(captions), L), dtype=torch.bool)
    for kind in KINDS:  # the tokenizer takes one prefix per call: encode each kind's rows together
        rows = [i for i, k in enumerate(kinds) if k == kind]
        if rows:
            i_k, m_k = tokenizer.encode_batch([captions[i] for i in rows], max_len=L, prefix=KIND_TOKENS[kind])
            ids[rows], mask[rows] = i_k, m_k
    return ids, mask


# ---------------------------------------------------------------- the model
class CoCa(PretrainedMixin, nn.Module):
    """Contrastive captioner. Config keys (the `captioner:` preset section):

    vocab_size        the tokenizer's vocabulary (required; filled in by the caller)
    max_text_tokens   caption positions incl. <bos>, kind, <eos> (decoder context)
    clip              the CLIP config (the `clip:` preset section); vocab_size / max_text_tokens
                      default to the captioner's
    width, layers, heads   the captioning decoder (GPT-2 blocks with cross-attention)
    dropout           decoder dropout
    contrastive_weight, caption_weight   CoCa loss weights (paper: 1 and 2)
    memory_pos        add fixed 2D sin-cos positions to the image tokens the decoder cross-attends
                      to, as DETR (Carion et al. 2020) adds spatial encodings to the memory its
                      decoder reads: a caption says where each object is, and at small scale the
                      towers' learned position embeddings carry almost none (docs/results.md,
                      "The captioner": without it, a lone object's cell is right 21% of the time)
    freeze_towers     keep the CLIP towers fixed and train only the image projection and decoder
                      (a warm-started CLIP that saw the whole dataset generalises; fine-tuned on
                      a few hundred curated images it memorises them: docs/results.md, "The captioner")
    pad_id, bos_id, eos_id, short_id, long_id   the tokenizer's special ids
    """

    SECTION = "captioner"
    MODEL_TYPE = "easel-captioner"
    REQUIRED = ("vocab_size",)
    DEFAULTS = {
        "max_text_tokens": 96,
        "clip": {},
        "width": 64,
        "layers": 2,
        "heads": 4,
        "dropout": 0.0,
        "contrastive_weight": 1.0,  # CoCa: lambda_Con = 1
        "caption_weight": 2.0,      # CoCa: lambda_Cap = 2
        "freeze_towers": False,     # CoCa trains everything; small curated sets need this
        "memory_pos": False,        # CoCa's decoder reads the towers' tokens as they are
        "pad_id": tok_mod.SPECIAL_TOKENS.index(tok_mod.PAD),
        "bos_id": tok_mod.SPECIAL_TOKENS.index(tok_mod.BOS),
        "eos_id": tok_mod.SPECIAL_TOKENS.index(tok_mod.EOS),
        "short_id": tok_mod.SPECIAL_TOKENS.index(tok_mod.SHORT),
        "long_id": tok_mod.SPECIAL_TOKENS.index(tok_mod.LONG),
    }

    @classmethod
    def resolve_config(cls, cfg: dict | None) -> dict:
        out = super().resolve_config(cfg)
        # the inner CLIP shares the vocabulary; its text length defaults to the captioner's
        clip_cfg = {"vocab_size": out["vocab_size"], "max_text_tokens": out["max_text_tokens"],
                    **(out.get("clip") or {})}
        out["clip"] = CLIP.resolve_config(clip_cfg)
        return out

    @classmethod
    def _validate(cls, cfg: dict) -> None:
        positive_ints(cfg, "captioner", "vocab_size", "max_text_tokens", "width", "layers", "heads")
        if cfg["width"] % cfg["heads"]:
            raise ValueError(f"captioner.width={cfg['width']} must be divisible by captioner.heads={cfg['heads']}")
        if cfg["max_text_tokens"] < 4:
            raise ValueError(f"captioner.max_text_tokens must be >= 4 (<bos>, kind, a token, <eos>), "
                             f"got {cfg['max_text_tokens']}")
        for key in ("contrastive_weight", "caption_weight", "dropout"):
            if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
                raise ValueError(f"captioner.{key} must be a number >= 0 (got {cfg[key]!r})")
        for key in ("pad_id", "bos_id", "eos_id", "short_id", "long_id"):
            if not isinstance(cfg[key], int) or not 0 <= cfg[key] < cfg["vocab_size"]:
                raise ValueError(f"captioner.{key}={cfg[key]!r} must be a token id in [0, vocab_size)")
        for key in ("freeze_towers", "memory_pos"):
            if not isinstance(cfg[key], bool):
                raise ValueError(f"captioner.{key} must be true or false, got {cfg[key]!r}")
        if not isinstance(cfg.get("clip"), dict):
            raise ValueError(f"captioner.clip must be a dict (the CLIP config), got {type(cfg.get('clip')).__name__}")

    @classmethod
    def config_for(cls, cfg: dict | None, tokenizer) -> dict:
        """A preset section + the tokenizer's vocabulary and special ids."""
        return {**(cfg or {}), "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id,
                "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
                "short_id": tokenizer.token_id(tok_mod.SHORT), "long_id": tokenizer.token_id(tok_mod.LONG)}

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = self.resolve_config(cfg)
        self.config = cfg
        self.clip = CLIP(cfg["clip"])
        if cfg["freeze_towers"]:
            self.clip.requires_grad_(False)  # the trainer's optimiser takes trainable parameters only
        # CLIP's vision width -> decoder width; LN so the cross-attention sees unit-scale tokens
        self.image_proj = nn.Sequential(nn.Linear(self.clip.vision_width, cfg["width"]), nn.LayerNorm(cfg["width"]))
        if cfg["memory_pos"]:
            from diffusers.models.embeddings import get_2d_sincos_pos_embed
            grid = cfg["clip"]["image_size"] // cfg["clip"]["patch_size"]
            pos = get_2d_sincos_pos_embed(cfg["width"], grid, base_size=grid, output_type="pt").float()  # (N, C)
            # (1+N, C): the CLS token (first) has no place
            self.register_buffer("memory_pos", torch.cat([torch.zeros(1, cfg["width"]), pos]), persistent=False)
        else:
            self.memory_pos = None
        p = cfg["dropout"]
        self.decoder = GPT2LMHeadModel(GPT2Config(
            vocab_size=cfg["vocab_size"], n_positions=cfg["max_text_tokens"], n_embd=cfg["width"],
            n_layer=cfg["layers"], n_head=cfg["heads"], add_cross_attention=True,
            resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
            bos_token_id=cfg["bos_id"], eos_token_id=cfg["eos_id"], pad_token_id=cfg["pad_id"],
        ))
        self._tokenizer = None  # see set_tokenizer

    @classmethod
    def from_clip(cls, clip: CLIP, cfg: dict) -> "CoCa":
        """Warm start: the captioner's towers are a copy of a trained CLIP's (same config)."""
        cfg = {**cfg, "clip": dict(clip.config)}
        model = cls(cfg)
        model.clip.load_state_dict(clip.state_dict(), strict=True)
        return model

    def set_tokenizer(self, tokenizer) -> "CoCa":
        """Attach the TextTokenizer `generate` decodes with, checked against what the model's config
        records of its training tokenizer: the vocabulary size and the special ids (config_for)."""
        if tokenizer.vocab_size != self.config["vocab_size"]:
            raise ValueError(f"captioner: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                             f"expects vocab_size={self.config['vocab_size']}")
        found = self.config_for({}, tokenizer)
        off = [f"{k} {found[k]} (model: {self.config[k]})"
               for k in ("pad_id", "bos_id", "eos_id", "short_id", "long_id")
               if k in self.config and self.config[k] != found[k]]
        if off:
            raise ValueError(f"captioner: the tokenizer's special ids differ from the model's: {', '.join(off)}")
        self._tokenizer = tokenizer
        return self

    # ---------------------------------------------------------------- pieces
    def kind_id(self, kind: str) -> int:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.config[f"{kind}_id"]

    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> (cross-attention memory (B, 1+N, C), CLIP image embedding (B, D) normalised)."""
        feats = self.clip.image_features(images)  # (B, 1+N, W), post-LN; feats[:, 0] is CLIP's pooled CLS
        z_img = F.normalize(self.clip.model.visual_projection(feats[:, 0]), dim=-1)  # == clip.encode_image
        memory = self.image_proj(feats)  # (B, 1+N, C)
        if self.memory_pos is not None:
            memory = memory + self.memory_pos.to(memory.dtype)
        return memory, z_img

    def _clip_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder ids [<bos>, kind, ...] -> CLIP ids [<bos>, ...] (kind dropped, fitted to CLIP's length)."""
        kind_col = (ids[:, 1] == self.config["short_id"]) | (ids[:, 1] == self.config["long_id"])
        if kind_col.any():
            if not kind_col.all():
                raise ValueError("captioner: either every caption or none carries a kind token")
            pad = torch.full_like(ids[:, :1], self.config["pad_id"])
            ids = torch.cat([ids[:, :1], ids[:, 2:], pad], dim=1)
            mask = torch.cat([mask[:, :1], mask[:, 2:], torch.zeros_like(mask[:, :1])], dim=1)
        L = self.clip.config["max_text_tokens"]
        if ids.shape[1] > L:
            # keep <eos> last on captions that are cut, as the tokenizer does when it truncates
            cut = mask[:, L:].any(dim=1)
            ids, mask = ids[:, :L].clone(), mask[:, :L].clone()
            ids[cut, -1] = self.config["eos_id"]
        return ids, mask

    # ---------------------------------------------------------------- training
    def forward_loss(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """CoCa loss on a batch: image i matches caption i (ids/mask from `encode_targets`).

        Returns {"loss", "contrastive_loss", "caption_loss", "clip_acc", "token_acc"}.
        """
        check_text(ids, mask, self.config["max_text_tokens"], "captioner")
        if images.shape[0] != ids.shape[0]:
            raise ValueError(f"captioner: {images.shape[0]} images but {ids.shape[0]} captions")
        mask = mask.bool()
        memory, z_img = self.encode_image_tokens(images)  # (B, 1+N, C), (B, D)

        # contrastive: symmetric InfoNCE, exactly CLIP.forward_loss but reusing the image pass
        clip_ids, clip_mask = self._clip_text(ids, mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config["freeze_towers"]):
            z_txt = self.clip.encode_text(clip_ids, clip_mask)  # (B, D); frozen: reported, not trained
            logits = self.clip.logit_scale() * z_img @ z_txt.t()  # (B, B)
            target = torch.arange(ids.shape[0], device=ids.device)
            l_con = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

        cap_logits, targets = self._teacher_forced(memory, ids, mask)  # (B, L-1, V), (B, L-1)
        l_cap = F.cross_entropy(cap_logits.reshape(-1, cap_logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

        loss = self.config["caption_weight"] * l_cap
        if not self.config["freeze_towers"]:
            loss = loss + self.config["contrastive_weight"] * l_con
        with torch.no_grad():
            valid = targets != -100
            tok_acc = (cap_logits.argmax(-1) == targets)[valid].float().mean()
            clip_acc = ((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean()) / 2
        return {"loss": loss, "contrastive_loss": l_con.detach(), "caption_loss": l_cap.detach(),
                "clip_acc": clip_acc, "token_acc": tok_acc}

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_loss(images, ids, mask)

    def _teacher_forced(self, memory: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """Captioning by teacher forcing: position t predicts token t+1. Returns the logits
        (B, L-1, V) and the targets (B, L-1), -100 where nothing is predicted (padding, and the
        kind token, which generation is given)."""
        out = self.decoder(input_ids=ids[:, :-1], attention_mask=mask[:, :-1].long(), encoder_hidden_states=memory)
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)  # (B, L-1)
        is_kind = (targets[:, 0] == self.config["short_id"]) | (targets[:, 0] == self.config["long_id"])
        targets[is_kind, 0] = -100
        return out.logits, targets

    # ---------------------------------------------------------------- scoring
    @torch.no_grad()
    def caption_logprob(self, images: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor,
                        memory: torch.Tensor | None = None) -> torch.Tensor:
        """log p(caption | image) for each pair, summed over the caption's tokens: (B,).

        The captioner as a judge of image-text agreement (the "generative score" of
        VisualGPTScore, Lin et al. 2023): a caption that names the wrong shape is unlikely under
        an image that shows another, where a CLIP embedding may not tell them apart. Ranking
        images against one fixed caption needs no normalisation (the caption's prior cancels).
        `ids`, `mask` as for `forward_loss` (`encode_targets`: the kind token picks which kind
        of caption the image is asked to explain). `memory`: the images' `encode_image_tokens`,
        when the caller scores several captions per image (then `images` is not read)."""
        check_text(ids, mask, self.config["max_text_tokens"], "captioner")
        if memory is None:
            memory, _ = self.encode_image_tokens(images)
        if memory.shape[0] != ids.shape[0]:
            raise ValueError(f"captioner: {memory.shape[0]} images but {ids.shape[0]} captions")
        logits, targets = self._teacher_forced(memory, ids, mask.bool())
        logp = torch.log_softmax(logits.float(), dim=-1)                       # (B, L-1, V)
        picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, L-1)
        return picked.masked_fill(targets == -100, 0.0).sum(-1)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_ids(self, images: torch.Tensor, kind: str = "long", top_p: float = 0.9,
                     temperature: float = 0.7, max_new_tokens: int | None = None,
                     num_return_sequences: int = 1, seed: int | None = None,
                     generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Sample captions as ids: (B * num_return_sequences, <= max_text_tokens), rows of one image
        adjacent, each row [<bos>, kind, t_1 ..., <eos>, <pad> ...].

        DALL-E 3 samples with nucleus sampling (top_p 0.9, temperature 0.7), not beam search;
        temperature 0 is greedy decoding. The batch runs through transformers' generate with the
        image tokens as `encoder_hidden_states`, so self- and cross-attention keys/values are cached
        (use_cache=False recomputes the whole prefix at every step: the benchmark baseline).
        The result depends only on `seed` (or `generator`), not on the global RNG.
        """
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
        room = self.config["max_text_tokens"] - 2  # positions left after <bos>, kind
        max_new_tokens = room if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= max_new_tokens <= room:
            raise ValueError(f"max_new_tokens must be in [1, {room}] (max_text_tokens - 2), got {max_new_tokens}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item()) if generator is not None else 0
        was_training = self.training
        self.eval()
        B = images.shape[0]
        memory, _ = self.encode_image_tokens(images)  # (B, 1+N, C)
        prompt = torch.tensor([[self.config["bos_id"], self.kind_id(kind)]], device=memory.device).expand(B, 2)
        sample = temperature > 0
        devices = [memory.device] if memory.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = self.decoder.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), encoder_hidden_states=memory,
                do_sample=sample, top_p=top_p if sample else None, temperature=temperature if sample else None,
                top_k=None, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                pad_token_id=self.config["pad_id"], eos_token_id=self.config["eos_id"], use_cache=use_cache,
            )  # (B * n, 2 + T); finished rows are padded
        self.train(was_training)
        return out

    @torch.no_grad()
    def generate(self, images: torch.Tensor, kind: str = "long", top_p: float = 0.9,
                 temperature: float = 0.7, max_new_tokens: int | None = None, num_return_sequences: int = 1,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True, tokenizer=None) -> list[str]:
        """Sample captions as text: B * num_return_sequences strings (see generate_ids).

        The ids are decoded with `tokenizer`, or the one given to `set_tokenizer` (the weights
        do not carry it: it is its own trained part)."""
        tokenizer = tokenizer or self._tokenizer
        if tokenizer is None:
            raise ValueError("captioner.generate needs the tokenizer: pass tokenizer= or call set_tokenizer")
        ids = self.generate_ids(images, kind=kind, top_p=top_p, temperature=temperature,
                                max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                                seed=seed, generator=generator, use_cache=use_cache)
        return tokenizer.decode_batch(ids[:, 2:])  # drop <bos>, kind; decode stops at <eos>

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
