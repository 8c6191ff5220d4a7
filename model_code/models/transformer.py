"""DALL-E 1 transformer: a decoder-only transformer over [text tokens, image tokens]
(Ramesh et al. 2021, section 2.2), built from `transformers`' GPT2LMHeadModel.

One shared vocabulary and one embedding table, laid out as

    [0, V)               text BPE tokens                    V = text_vocab_size
    [V, V + T)           text padding, one token per text position (paper: "a special padding
                         token unique to each of the T text positions")   T = text_len
    [V + T, V + T + K)   image codes                        K = codebook_size

and one sequence of fixed length T + N (N = image_grid^2 image tokens, raster order):

    [t_0 ... t_{T-1}, c_0 ... c_{N-1}]      padded text positions hold their own padding token

Because every sequence has the same length and the padding tokens are real tokens, no attention
mask is needed: mixed-length prompts batch without left-padding, KV-cache generation and full
recomputation see exactly the same inputs, and an image token always sits at the same position.
GPT-2's learned absolute position embeddings cover both streams; `image_pos: rowcol` adds the
paper's separate row and column embeddings for image positions (section 2.2 / appendix B.1), so
that what the model learns about one place is shared by the row and the column it lies in. Each
input position gets the row and column of the image token it predicts (the last text position
predicts code 0).

Attention is dense and causal unless `image_attention` asks for the paper's sparse masks
(appendix B.1, figure 11), which change only what an image token sees of the other image tokens;
text attends causally and every image token sees the whole caption:
    row     the token itself and the G before it in raster order (back to the same column of the
            previous row)
    column  the tokens in its own column
    conv    a causal 2D window of conv_kernel x conv_kernel codes centred on it (paper: 11)
"sparse" is the paper's schedule: column in layers i with (i - 2) mod 4 = 0 (1-based), conv in the
last layer, row elsewhere; a list names one of dense/row/column/conv per layer. The paper used the
masks to fit its 1280-token context on 2021 GPUs; at Easel's sizes they are an inductive bias
(locality), and the masked layers still pay for dense attention (SDPA with a boolean mask).

Loss (paper): cross-entropies of text and image normalised separately, weighted 1/8 and 7/8.
Text positions are scored over the text+padding part of the vocabulary and only where the target
is real text (mask True); image positions are scored over the K image codes, as at sampling time
where a LogitsProcessor confines every image position to image codes.

Config keys (the `transformer:` preset section; missing keys take the defaults in DEFAULTS):
    text_vocab_size, text_len, image_grid, codebook_size, n_layer, n_head, d_model, n_inner,
    dropout, attn_dropout, activation, layer_norm_eps, initializer_range, text_loss_weight,
    image_loss_weight, attn_implementation, image_pos, image_attention, conv_kernel, text_drop_prob.
    Training settings are not model config (model_code.train).
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (AttentionInterface, GenerationConfig, GPT2Config, GPT2LMHeadModel, LogitsProcessor,
                          LogitsProcessorList)

from model_code.models import on_host
from model_code.models.pretrained import PretrainedMixin, known_keys, positive_ints

DEFAULTS: dict = {
    # the paper's 12B shapes (section 2.2 / appendix B): 64 layers, 62 heads of 64, d_model 3968,
    # 16384 BPE tokens, 256 text + 32x32 image tokens from 8192 codes
    "text_vocab_size": 16384,
    "text_len": 256,
    "image_grid": 32,
    "codebook_size": 8192,
    "n_layer": 64,
    "n_head": 62,
    "d_model": 3968,
    "n_inner": None,            # MLP width; None = 4 * d_model
    "dropout": 0.0,             # embedding and residual dropout
    "attn_dropout": 0.0,
    "activation": "gelu_pytorch_tanh",   # = GPT-2's gelu_new (tanh approximation), one fused kernel
    "layer_norm_eps": 1e-5,
    "initializer_range": 0.02,
    # paper: text 1/8, image 7/8 (the main objective is image modelling)
    "text_loss_weight": 1.0 / 8,
    "image_loss_weight": 7.0 / 8,
    "attn_implementation": "sdpa",
    # "rowcol": the paper's row and column embeddings for image positions; "none" (GPT-2's 1D
    # table only) is what transformers saved before the option load as
    "image_pos": "none",
    # "dense" (every layer causal over all earlier tokens), "sparse" (the paper's row / column /
    # convolutional schedule, appendix B.1) or a list of dense|row|column|conv, one per layer
    "image_attention": "dense",
    "conv_kernel": 11,          # the conv mask's window (paper: 11 x 11 codes); odd
    # Share of training captions replaced by the empty caption (every text position its padding
    # token), so that the model also learns p(image) and can be sampled with classifier-free
    # guidance (generate's guidance_scale). Not in DALL-E 1 (which reranks instead); the standard
    # for autoregressive text-to-image since Make-A-Scene (Gafni et al. 2022) and Parti (Yu et
    # al. 2022), both dropping 10-20% of captions. 0 = the paper.
    "text_drop_prob": 0.0,
}


def resolve_config(cfg: dict | None) -> dict:
    """Fill defaults and validate a `transformer` config; ValueError naming the bad field."""
    cfg = dict(cfg or {})
    known_keys(cfg, "transformer", set(DEFAULTS))
    out = {**DEFAULTS, **cfg}
    positive_ints(out, "transformer", *("text_vocab_size", "text_len", "image_grid", "codebook_size", "n_layer", "n_head",
                  "d_model"))
    if out["d_model"] % out["n_head"]:
        raise ValueError(f"transformer.d_model ({out['d_model']}) must be divisible by "
                         f"transformer.n_head ({out['n_head']})")
    if out["text_len"] < 2:
        raise ValueError(f"transformer.text_len must be >= 2, got {out['text_len']}")
    for k in ("dropout", "attn_dropout", "text_drop_prob"):
        if not 0 <= out[k] < 1:
            raise ValueError(f"transformer.{k} must be in [0, 1), got {out[k]}")
    for k in ("text_loss_weight", "image_loss_weight"):
        if out[k] < 0:
            raise ValueError(f"transformer.{k} must be >= 0, got {out[k]}")
    if out["image_pos"] not in ("none", "rowcol"):
        raise ValueError(f"transformer.image_pos must be 'none' or 'rowcol', got {out['image_pos']!r}")
    out["image_attention"] = attention_layout(out["image_attention"], out["n_layer"])
    if not (isinstance(out["conv_kernel"], int) and out["conv_kernel"] >= 1 and out["conv_kernel"] % 2):
        raise ValueError(f"transformer.conv_kernel must be an odd positive int, got {out['conv_kernel']!r}")
    if out["attn_implementation"] not in ("sdpa", "eager"):
        raise ValueError(f"transformer.attn_implementation must be 'sdpa' or 'eager', "
                         f"got {out['attn_implementation']!r}")
    return out


MASK_KINDS = ("dense", "row", "column", "conv")


def attention_layout(spec, n_layer: int):
    """`image_attention` -> "dense" or a list of one mask kind per layer (ValueError naming the key)."""
    if spec == "dense":
        return "dense"
    if spec == "sparse":   # paper B.1, 1-based layer i: column if (i - 2) % 4 == 0, the last conv
        return ["conv" if i == n_layer - 1 else "column" if i % 4 == 1 else "row" for i in range(n_layer)]
    if isinstance(spec, (list, tuple)) and len(spec) == n_layer and all(k in MASK_KINDS for k in spec):
        return list(spec)
    raise ValueError(f"transformer.image_attention must be 'dense', 'sparse' or a list of {n_layer} of "
                     f"{'/'.join(MASK_KINDS)}, got {spec!r}")


def attention_mask(kind: str, text_len: int, grid: int, conv_kernel: int = 11) -> torch.Tensor:
    """(S, S) bool, True where query position q may attend to key position k; S = T + G*G.

    Position T + j holds image code j (row j // G, column j % G). Every mask is causal; text
    queries see all earlier text, image queries all text and, among image keys, what `kind` allows.
    """
    S = text_len + grid * grid
    mask = torch.ones(S, S, dtype=torch.bool).tril()                       # (S, S) causal
    if kind == "dense":
        return mask
    j = torch.arange(grid * grid)
    r, c = j // grid, j % grid
    dq = j[:, None] - j[None, :]                                           # (N, N) raster distance
    if kind == "row":
        allowed = dq <= grid
    elif kind == "column":
        allowed = c[:, None] == c[None, :]
    elif kind == "conv":
        h = conv_kernel // 2
        allowed = ((r[:, None] - r[None, :]).abs() <= h) & ((c[:, None] - c[None, :]).abs() <= h)
    else:
        raise ValueError(f"unknown attention mask kind {kind!r}; one of {MASK_KINDS}")
    mask[text_len:, text_len:] &= allowed
    return mask


def _masked_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **_):
    """GPT-2 attention under the layer's own mask (module.dalle_mask, (S, S)): the queries are the
    last q of the kv positions, as in training (q = kv) and in KV-cache generation (q = 1).
    query/key/value: (B, H, q|kv, D) -> (B, q, H, D), what transformers' attention functions return."""
    q, kv = query.shape[2], key.shape[2]
    mask = module.dalle_mask[kv - q:kv, :kv]                               # (q, kv)
    if attention_mask is not None:                                         # a caller's padding, if any
        mask = mask & attention_mask.bool()
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


# transformers' attention-function registry: GPT-2 calls this for every layer when its config names
# it; its mask builder knows no such name and passes no mask, so the layer's own mask is the only one
AttentionInterface.register("easel_dalle_masks", _masked_sdpa)


class ImageCodesOnly(LogitsProcessor):
    """Confines sampling to the image-code range [offset, offset + K) of the shared vocabulary."""

    def __init__(self, offset: int, codebook_size: int):
        self.offset, self.codebook_size = offset, codebook_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()                                      # (B, vocab)
        scores[:, :self.offset] = -float("inf")
        scores[:, self.offset + self.codebook_size:] = -float("inf")
        return scores


class RowColPositions(nn.Embedding):
    """GPT-2's position table (`wpe`) plus row and column embeddings at image positions.

    An nn.Embedding subclass in wpe's place, so that GPT-2 (and its KV-cache generation, which
    passes position ids) uses it unchanged and the 1D table keeps its name in saved weights.
    Position p >= T-1 predicts image token k = p - T + 1, at row k // G and column k % G.
    """

    def __init__(self, n_positions: int, d_model: int, text_len: int, grid: int, std: float):
        super().__init__(n_positions, d_model)
        self.text_len, self.grid = text_len, grid
        self.row = nn.Parameter(torch.randn(grid, d_model) * std)   # (G, d)
        self.col = nn.Parameter(torch.randn(grid, d_model) * std)   # (G, d)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        emb = super().forward(position_ids)                          # (..., d)
        k = position_ids - (self.text_len - 1)                       # image token predicted here
        on_image = (k >= 0).unsqueeze(-1)
        k = k.clamp(0, self.grid * self.grid - 1)
        return emb + torch.where(on_image, self.row[k // self.grid] + self.col[k % self.grid], 0.0)


class DalleTransformer(PretrainedMixin, nn.Module):
    """Decoder-only transformer over [text, image] tokens (see the module docstring)."""

    SECTION = "transformer"
    MODEL_TYPE = "easel-dalle-transformer"
    resolve_config = staticmethod(resolve_config)

    def __init__(self, cfg: dict | None = None):
        super().__init__()
        self._config = c = resolve_config(cfg)
        self.text_vocab_size = c["text_vocab_size"]
        self.text_len = c["text_len"]
        self.codebook_size = c["codebook_size"]
        self.image_grid = c["image_grid"]
        self.image_tokens = c["image_grid"] ** 2
        self.pad_offset = self.text_vocab_size                       # first per-position pad token
        self.image_offset = self.text_vocab_size + self.text_len     # first image code
        gpt_cfg = GPT2Config(
            vocab_size=self.image_offset + self.codebook_size,
            n_positions=self.text_len + self.image_tokens,
            n_embd=c["d_model"], n_layer=c["n_layer"], n_head=c["n_head"], n_inner=c["n_inner"],
            activation_function=c["activation"], resid_pdrop=c["dropout"], embd_pdrop=c["dropout"],
            attn_pdrop=c["attn_dropout"], layer_norm_epsilon=c["layer_norm_eps"],
            initializer_range=c["initializer_range"],
            bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=True)
        sparse = c["image_attention"] != "dense"
        gpt_cfg._attn_implementation = "easel_dalle_masks" if sparse else c["attn_implementation"]
        self.gpt = GPT2LMHeadModel(gpt_cfg)   # (train.gradient_checkpointing: train/module.py)
        if sparse:   # one (S, S) bool per layer, rebuilt from config (not saved): S^2 bytes each
            for block, kind in zip(self.gpt.transformer.h, c["image_attention"]):
                block.attn.register_buffer("dalle_mask", attention_mask(
                    kind, self.text_len, self.image_grid, c["conv_kernel"]), persistent=False)
        if c["image_pos"] == "rowcol":
            old = self.gpt.transformer.wpe
            wpe = RowColPositions(old.num_embeddings, old.embedding_dim, self.text_len, self.image_grid,
                                  c["initializer_range"])
            wpe.weight.data.copy_(old.weight.data)
            self.gpt.transformer.wpe = wpe

    # -------------------------------------------------------------- construction / io
    @property
    def config(self) -> dict:
        return dict(self._config)

    @property
    def seq_len(self) -> int:
        return self.text_len + self.image_tokens

    def num_params(self) -> int:
        """Unique parameters (the tied input/output embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    # -------------------------------------------------------------- sequences
    def text_tokens(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """(B, L<=T) tokenizer output -> (B, T) text stream: padded positions (mask False, and
        positions L..T-1) get their position's unique padding token V + t."""
        if text_ids.dim() != 2 or text_mask.shape != text_ids.shape:
            raise ValueError(f"text_ids and text_mask must both be (B, L), got "
                             f"{tuple(text_ids.shape)} and {tuple(text_mask.shape)}")
        B, L = text_ids.shape
        if L > self.text_len:
            raise ValueError(f"text length {L} exceeds transformer.text_len={self.text_len}; "
                             f"encode with max_len={self.text_len}")
        mask = text_mask.bool()
        ids = text_ids.long()
        if on_host(ids):   # value checks read no accelerator tensor (models.on_host)
            real = ids[mask]
            if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.text_vocab_size):
                raise ValueError(f"text_ids must lie in [0, text_vocab_size={self.text_vocab_size}) "
                                 f"where text_mask is True, got [{int(real.min())}, {int(real.max())}]")
        pads = self.pad_offset + torch.arange(self.text_len, device=ids.device).expand(B, -1)
        out = pads.clone()                                           # (B, T)
        out[:, :L] = torch.where(mask, ids, pads[:, :L])
        return out

    def _image_tokens(self, image_codes: torch.Tensor, batch: int) -> torch.Tensor:
        """(B,h,w) or (B,N) codes -> (B,N) ids in the shared vocabulary."""
        codes = image_codes.reshape(image_codes.shape[0], -1) if image_codes.dim() == 3 else image_codes
        if codes.dim() != 2 or codes.shape != (batch, self.image_tokens):
            raise ValueError(f"image_codes must be (B,{self.image_grid},{self.image_grid}) or "
                             f"(B,{self.image_tokens}) with B={batch}, got {tuple(image_codes.shape)}")
        if codes.is_floating_point():
            raise ValueError(f"image_codes must be integer, got {codes.dtype}")
        if on_host(codes) and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"image_codes must lie in [0, codebook_size={self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long() + self.image_offset

    # -------------------------------------------------------------- training
    def forward_loss(self, text_ids: torch.Tensor, text_mask: torch.Tensor,
                     image_codes: torch.Tensor) -> dict:
        """Weighted next-token cross-entropy: {"loss", "text_loss", "image_loss"} (nats/token)."""
        p = self._config["text_drop_prob"]
        if self.training and p > 0:   # classifier-free guidance: some rows see the empty caption
            keep = torch.rand(text_mask.shape[0], 1, device=text_mask.device) >= p   # (B, 1)
            text_mask = text_mask.bool() & keep
        text = self.text_tokens(text_ids, text_mask)                 # (B, T)
        B, T = text.shape
        image = self._image_tokens(image_codes, B)                   # (B, N)
        seq = torch.cat([text, image], dim=1)                        # (B, T+N)
        # (transformers' GPT-2 masking reads one value per call, its packed-sequence check, unless
        # traced: train.compile removes that host sync; Easel's own checks above read none off a GPU)
        logits = self.gpt(input_ids=seq[:, :-1], use_cache=False).logits  # (B, T+N-1, vocab)

        # position i predicts seq[i+1]: text targets are seq[1:T], image targets seq[T:]
        text_logits = logits[:, :T - 1, :self.image_offset].float()  # (B, T-1, V+T)
        text_target = seq[:, 1:T]
        text_real = torch.zeros_like(text_target, dtype=torch.bool)
        Lm = min(text_mask.shape[1], T) - 1
        text_real[:, :Lm] = text_mask[:, 1:Lm + 1].bool()            # only real text is scored
        text_ce = F.cross_entropy(text_logits.transpose(1, 2), text_target, reduction="none")
        text_loss = (text_ce * text_real).sum() / text_real.sum().clamp_min(1)

        image_logits = logits[:, T - 1:, self.image_offset:].float()  # (B, N, K)
        image_loss = F.cross_entropy(image_logits.transpose(1, 2), image - self.image_offset)

        c = self._config
        loss = c["text_loss_weight"] * text_loss + c["image_loss_weight"] * image_loss
        return {"loss": loss, "text_loss": text_loss.detach(), "image_loss": image_loss.detach()}

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor, image_codes: torch.Tensor) -> dict:
        return self.forward_loss(text_ids, text_mask, image_codes)

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, text_ids: torch.Tensor, text_mask: torch.Tensor, num_samples: int = 1,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True, guidance_scale: float = 1.0) -> torch.Tensor:
        """Sample image codes for each prompt: LongTensor (B * num_samples, h, w), the samples of
        prompt b at rows b*num_samples ... (b+1)*num_samples-1.

        temperature 0 means greedy decoding. guidance_scale s != 1 samples with classifier-free
        guidance: log p_uncond + s * (log p_cond - log p_uncond) at every image position, the
        unconditional branch being the empty caption (train with text_drop_prob > 0; transformers'
        UnbatchedClassifierFreeGuidanceLogitsProcessor runs it with its own KV cache, twice the
        compute). The same seed (or a generator in the same state) gives
        the same codes; the global RNG is left untouched. use_cache=False recomputes the whole
        prefix at every step (the baseline of the KV-cache benchmark).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        if not guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        device = self.gpt.device
        prompt = self.text_tokens(text_ids, text_mask).to(device)   # (B, T); checked where the ids are (the CPU)
        prompt = prompt.repeat_interleave(num_samples, dim=0)                   # (B*n, T)
        greedy = temperature == 0
        gen_cfg = GenerationConfig(
            max_new_tokens=self.image_tokens, min_new_tokens=0, do_sample=not greedy,
            temperature=None if greedy else float(temperature),
            top_k=None if greedy else top_k, top_p=None if greedy else top_p,
            use_cache=use_cache, num_beams=1, bos_token_id=None, eos_token_id=None,
            pad_token_id=self.pad_offset,  # no eos: exactly N image tokens are generated
            guidance_scale=None if guidance_scale == 1 else float(guidance_scale))
        cfg_kwargs = {}
        if guidance_scale != 1:   # the unconditional prompt: every text position its padding token
            empty = self.pad_offset + torch.arange(self.text_len, device=device).expand(prompt.shape[0], -1)
            cfg_kwargs = {"negative_prompt_ids": empty, "negative_prompt_attention_mask": torch.ones_like(empty)}
        if generator is not None:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        was_training = self.training
        self.eval()  # no dropout while sampling
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.gpt.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt),
                    generation_config=gen_cfg, **cfg_kwargs,
                    logits_processor=LogitsProcessorList([ImageCodesOnly(self.image_offset,
                                                                         self.codebook_size)]))
        finally:
            self.train(was_training)
        codes = out[:, self.text_len:] - self.image_offset                      # (B*n, N)
        return codes.reshape(-1, self.image_grid, self.image_grid)
