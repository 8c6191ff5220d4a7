"""DALL-E 1 discrete VAE: an image <-> a grid of discrete codes (Ramesh et al. 2021, section 2.1
and appendix A), written by hand in the style of OpenAI's released `dall_e` encoder/decoder.

    encoder:  image (B,3,H,W) -> logits (B,K,h,w)     h = H / downsample, K = codebook_size
    relax:    Gumbel-softmax(logits / tau) -> soft one-hot z (B,K,h,w)      (training)
              argmax(logits)              -> codes (B,h,w)                  (encode)
    decoder:  z or one-hot(codes) -> (mu, log b) of a logit-Laplace likelihood per sub-pixel

Training maximises the ELBO with the KL term to a uniform prior over the K codes weighted by beta:
    loss = [ sum_pixels NLL_logit-Laplace(x | z) + beta * sum_positions KL(q(z|x) || U(K)) ] / (3 H W)
i.e. the negative ELBO in nats per sub-pixel (the paper's beta=6.6 is relative to these sums).

Paper details kept here (each marked "paper" at the place it is used):
- pixels are squashed into [eps, 1-eps], eps = 0.1, so the logit-Laplace's logit stays finite;
- 1x1 convolutions at the end of the encoder and the start of the decoder (small receptive field
  around the relaxation helps it transfer to the true categorical at test time);
- residual branches are multiplied by post_gain = 1 / n_layers^2 (stable training at init);
- schedules (`dvae_schedule`): beta 0 -> 6.6 over 5000 updates, tau 1 -> 1/16 over 150000 updates,
  both cosine (the optimiser's, lr 1e-4 -> 1.25e-6 over 1.2M updates with AdamW (0.9, 0.999) and
  weight decay 1e-4, are training settings: the dvae part's defaults in model_code/train/parts.py).
From OpenAI's released code: conv weights N(0, 1/fan_in) with zero bias (see `_init_conv`).

Small-scale note: at 32 px the run is short and the images are mostly background; a KL weight that
reaches 6.6 within a few dozen updates (or lr 3e-3) drives q to uniform, and beta = 0 collapses
every position onto one code. The tiny preset ramps beta over half of its run at lr 1e-3.

Config keys (the `dvae:` preset section; missing keys take the paper's values in DEFAULTS):
    image_size, channels, downsample (a power of 2: number of groups = log2(downsample) + 1),
    codebook_size, n_hid, n_blk_per_group, n_init, logit_laplace_eps,
    beta_max, beta_warmup_steps, tau_start, tau_end, tau_anneal_steps, straight_through, and the
    small-scale settings center_input, logit_norm, b_min (docs/results.md, "The dVAE": why each
    exists and what it measured). Training settings (lr and its anneal, optimiser, steps) are not
    model config: model_code.train reads them, and a saved config.json holds none.
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_code.models import on_host
from model_code.models.pretrained import PretrainedMixin, known_keys, positive_ints

DEFAULTS: dict = {
    # architecture (OpenAI's released dVAE: n_hid 256, 2 blocks per group, 4 groups, 8192 codes)
    "image_size": 256,
    "channels": 3,
    "downsample": 8,
    "codebook_size": 8192,
    "n_hid": 256,
    "n_blk_per_group": 2,
    "n_init": 128,
    "logit_laplace_eps": 0.1,
    "straight_through": False,  # paper: the decoder sees the relaxed sample (see forward_loss)
    # schedules (paper, appendix A.2)
    "beta_max": 6.6,
    "beta_warmup_steps": 5000,
    "tau_start": 1.0,
    "tau_end": 1.0 / 16,
    "tau_anneal_steps": 150_000,
    # small-scale settings (docs/results.md, "The dVAE"); the defaults are the paper's model
    "center_input": False,       # feed the encoder (x - 0.5) * 2.5 instead of x in [eps, 1-eps]
    "logit_norm": 0.0,           # > 0: standardise each code's logit over the batch (BatchNorm,
                                 # no affine) times a learned gain starting here; 0: off (paper)
    "b_min": 1e-3,               # floor on the logit-Laplace scale b
}
# Floor on the logit-Laplace scale b: 8-bit pixels are 1/255 apart, about 0.012 in logit space
# after the eps squash, so a smaller b only rewards memorising quantisation noise (and diverges).
LOG_B_MIN = math.log(1e-3)   # the default floor (config b_min)


def resolve_config(cfg: dict | None) -> dict:
    """Fill defaults and validate a `dvae` config; ValueError naming the bad field."""
    cfg = dict(cfg or {})
    known_keys(cfg, "dvae", set(DEFAULTS))
    out = {**DEFAULTS, **cfg}
    positive_ints(out, "dvae", *("image_size", "channels", "downsample", "codebook_size", "n_hid", "n_blk_per_group",
                  "n_init"))
    ds = out["downsample"]
    if ds & (ds - 1):
        raise ValueError(f"dvae.downsample must be a power of 2, got {ds}")
    if out["image_size"] % ds:
        raise ValueError(f"dvae.image_size ({out['image_size']}) must be divisible by "
                         f"dvae.downsample ({ds})")
    if out["codebook_size"] < 2:
        raise ValueError(f"dvae.codebook_size must be >= 2, got {out['codebook_size']}")
    if out["n_hid"] % 4:
        raise ValueError(f"dvae.n_hid must be divisible by 4 (block bottleneck), got {out['n_hid']}")
    if not 0 < out["logit_laplace_eps"] < 0.5:
        raise ValueError(f"dvae.logit_laplace_eps must be in (0, 0.5), got {out['logit_laplace_eps']}")
    if not 0 < out["tau_end"] <= out["tau_start"]:
        raise ValueError(f"dvae.tau_end must be in (0, tau_start], got {out['tau_end']}")
    if not isinstance(out["center_input"], bool):
        raise ValueError(f"dvae.center_input must be true or false, got {out['center_input']!r}")
    if not isinstance(out["straight_through"], bool):
        raise ValueError(f"dvae.straight_through must be true or false, got {out['straight_through']!r}")
    if isinstance(out["logit_norm"], bool) or not isinstance(out["logit_norm"], (int, float)) or out["logit_norm"] < 0:
        raise ValueError(f"dvae.logit_norm must be a number >= 0, got {out['logit_norm']!r}")
    if isinstance(out["b_min"], bool) or not isinstance(out["b_min"], (int, float)) or not 0 < out["b_min"] < 10:
        raise ValueError(f"dvae.b_min must be a number in (0, 10), got {out['b_min']!r}")
    for k in ("beta_warmup_steps", "tau_anneal_steps"):
        if out[k] < 0:
            raise ValueError(f"dvae.{k} must be >= 0, got {out[k]}")
    return out


# ---------------------------------------------------------------- schedules
def cosine_ramp(step: int, total: int, start: float, end: float) -> float:
    """Cosine from `start` (step 0) to `end` (step >= total)."""
    if total <= 0:
        return end
    t = min(step / total, 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def dvae_schedule(step: int, cfg: dict) -> dict:
    """The paper's loss schedules at update `step`: {"tau", "beta"}.

    beta rises 0 -> beta_max over beta_warmup_steps, tau falls tau_start -> tau_end over
    tau_anneal_steps; cosine ramps, flat after their end. (The paper's learning-rate anneal is a
    training setting: train.module.lr_lambda, schedule "dvae".)"""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    step, c = int(step), resolve_config(cfg)
    beta = cosine_ramp(step, c["beta_warmup_steps"], 0.0, c["beta_max"])
    tau = cosine_ramp(step, c["tau_anneal_steps"], c["tau_start"], c["tau_end"])
    return {"tau": tau, "beta": beta}


# ---------------------------------------------------------------- metrics
def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean over the batch of per-image PSNR in dB; images in [-1, 1] (data_range 2)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10.0 * torch.log10(data_range ** 2 / mse)).mean()


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict:
    """How much of the codebook a batch of codes uses.

    perplexity: exp(entropy of the code histogram) (= codebook_size when uniform, 1 when one code);
    dead_codes: codes never used; used_fraction: used codes / codebook_size.
    """
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size})")
    counts = torch.bincount(codes.flatten().long().cpu(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"perplexity": float(entropy.exp()), "dead_codes": codebook_size - used,
            "used_fraction": used / codebook_size}


# ---------------------------------------------------------------- blocks
class EncoderBlock(nn.Module):
    """x + post_gain * (3x3 -> 3x3 -> 3x3 -> 1x1 bottleneck at n_out/4), as OpenAI's encoder."""

    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1.0 / n_layers ** 2  # paper: small gain on residual branches at init
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", nn.Conv2d(n_in, n_hid, 3, padding=1)),
            ("relu_2", nn.ReLU()), ("conv_2", nn.Conv2d(n_hid, n_hid, 3, padding=1)),
            ("relu_3", nn.ReLU()), ("conv_3", nn.Conv2d(n_hid, n_hid, 3, padding=1)),
            ("relu_4", nn.ReLU()), ("conv_4", nn.Conv2d(n_hid, n_out, 1)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DecoderBlock(nn.Module):
    """x + post_gain * (1x1 -> 3x3 -> 3x3 -> 3x3 at n_out/4), as OpenAI's decoder."""

    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1.0 / n_layers ** 2
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", nn.Conv2d(n_in, n_hid, 1)),
            ("relu_2", nn.ReLU()), ("conv_2", nn.Conv2d(n_hid, n_hid, 3, padding=1)),
            ("relu_3", nn.ReLU()), ("conv_3", nn.Conv2d(n_hid, n_hid, 3, padding=1)),
            ("relu_4", nn.ReLU()), ("conv_4", nn.Conv2d(n_hid, n_out, 3, padding=1)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """OpenAI's dVAE init: weights N(0, 1 / fan_in), zero bias. (PyTorch's default is ~1.7x smaller
    per layer; through the encoder that leaves the initial code logits nearly uniform, so the
    relaxation carries no information and training falls into a constant code.)"""
    nn.init.normal_(conv.weight, std=1.0 / math.sqrt(conv.weight[0].numel()))
    nn.init.zeros_(conv.bias)
    return conv


def _n_groups(downsample: int) -> int:
    return int(math.log2(downsample)) + 1  # one 2x pool between consecutive groups


class Encoder(nn.Module):
    """(B,C,H,W) squashed pixels -> (B,K,H/ds,W/ds) logits. Group g has width n_hid * 2^g."""

    def __init__(self, c: dict):
        super().__init__()
        G, nb, nh = _n_groups(c["downsample"]), c["n_blk_per_group"], c["n_hid"]
        n_layers = G * nb
        layers: list[tuple[str, nn.Module]] = [("input", nn.Conv2d(c["channels"], nh, 7, padding=3))]
        n_in = nh
        for g in range(G):
            n_out = nh * 2 ** g
            blocks = [(f"block_{i + 1}", EncoderBlock(n_in if i == 0 else n_out, n_out, n_layers))
                      for i in range(nb)]
            if g < G - 1:
                blocks.append(("pool", nn.MaxPool2d(2)))
            layers.append((f"group_{g + 1}", nn.Sequential(OrderedDict(blocks))))
            n_in = n_out
        # paper: 1x1 output conv, so each code sees a small neighbourhood of the last features
        layers.append(("output", nn.Sequential(OrderedDict([
            ("relu", nn.ReLU()), ("conv", nn.Conv2d(n_in, c["codebook_size"], 1))]))))
        self.blocks = nn.Sequential(OrderedDict(layers))

        self.center = c["center_input"]
        # Small-scale fix of the collapse (docs/results.md): at init every code's logit carries a
        # constant offset several times larger than its variation across positions (positive
        # inputs through ReLU stacks), so the argmax is one code everywhere and the Gumbel noise
        # (std 1.28) drowns what varies. Standardising each code's logit over the batch removes
        # the offsets and sets their scale against the noise (a learned gain).
        self.logit_norm = nn.BatchNorm2d(c["codebook_size"], affine=False) if c["logit_norm"] else None
        self.logit_gain = nn.Parameter(torch.tensor(float(c["logit_norm"]))) if c["logit_norm"] else None

    def forward(self, x: torch.Tensor, batch_stats: bool | None = None) -> torch.Tensor:
        """batch_stats: normalise the logits with this batch's statistics (training) or the running
        ones (encode); default: the module's training flag."""
        if self.center:   # [eps, 1-eps] -> about [-1, 1]: zero-mean input to the first conv
            x = (x - 0.5) * 2.5
        logits = self.blocks(x)                                              # (B,K,h,w)
        if self.logit_norm is not None:
            bn = self.logit_norm
            use_batch = self.training if batch_stats is None else batch_stats
            logits = self.logit_gain * F.batch_norm(logits, bn.running_mean, bn.running_var, training=use_batch,
                                                    momentum=bn.momentum, eps=bn.eps)
        return logits


class Decoder(nn.Module):
    """(B,K,h,w) (soft) one-hot codes -> (B,2C,h*ds,w*ds): logit-Laplace mu and log b per sub-pixel."""

    def __init__(self, c: dict):
        super().__init__()
        G, nb, nh = _n_groups(c["downsample"]), c["n_blk_per_group"], c["n_hid"]
        n_layers = G * nb
        # paper: 1x1 input conv, the counterpart of the encoder's 1x1 output conv. On hard codes
        # it is an embedding lookup (see DVAE.decode).
        self.input = nn.Conv2d(c["codebook_size"], c["n_init"], 1)
        layers: list[tuple[str, nn.Module]] = []
        n_in = c["n_init"]
        for g in range(G):
            n_out = nh * 2 ** (G - 1 - g)
            blocks = [(f"block_{i + 1}", DecoderBlock(n_in if i == 0 else n_out, n_out, n_layers))
                      for i in range(nb)]
            if g < G - 1:
                blocks.append(("upsample", nn.Upsample(scale_factor=2, mode="nearest")))
            layers.append((f"group_{g + 1}", nn.Sequential(OrderedDict(blocks))))
            n_in = n_out
        layers.append(("output", nn.Sequential(OrderedDict([
            ("relu", nn.ReLU()), ("conv", nn.Conv2d(n_in, 2 * c["channels"], 1))]))))
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.input(z))

    def forward_embedded(self, h: torch.Tensor) -> torch.Tensor:
        """Decode features that already went through `input` (B,n_init,h,w)."""
        return self.blocks(h)


# ---------------------------------------------------------------- the model
class DVAE(PretrainedMixin, nn.Module):
    """DALL-E 1 discrete VAE. Images are float (B,3,H,W) in [-1,1]; codes are long (B,h,w)."""

    SECTION = "dvae"
    MODEL_TYPE = "easel-dvae"
    resolve_config = staticmethod(resolve_config)

    def __init__(self, cfg: dict | None = None):
        super().__init__()
        self._config = resolve_config(cfg)
        self.encoder = Encoder(self._config)
        self.decoder = Decoder(self._config)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _init_conv(m)

    # -------------------------------------------------------------- construction / io
    @property
    def config(self) -> dict:
        return dict(self._config)

    @property
    def codebook_size(self) -> int:
        return self._config["codebook_size"]

    @property
    def downsample(self) -> int:
        return self._config["downsample"]

    @property
    def grid_size(self) -> int:
        """Side of the code grid for the configured image_size (32 for 256 px / 8)."""
        return self._config["image_size"] // self._config["downsample"]

    # -------------------------------------------------------------- pixels
    def _check_images(self, images: torch.Tensor) -> None:
        c = self._config
        if images.dim() != 4 or images.shape[1] != c["channels"]:
            raise ValueError(f"images must be (B,{c['channels']},H,W), got {tuple(images.shape)}")
        if images.shape[2] % c["downsample"] or images.shape[3] % c["downsample"]:
            raise ValueError(f"image side {tuple(images.shape[2:])} must be divisible by "
                             f"downsample={c['downsample']}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [-1, 1], got dtype {images.dtype}")
        if not on_host(images):   # see models.on_host: no host sync in forward_loss/encode
            return
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"images must be in [-1, 1], got values in [{lo:.3f}, {hi:.3f}]")

    def map_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """[-1,1] -> [eps, 1-eps] (paper: eps = 0.1 keeps the logit-Laplace's logit finite)."""
        eps = self._config["logit_laplace_eps"]
        return (1 - 2 * eps) * (images.clamp(-1, 1) + 1) / 2 + eps

    def unmap_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """[eps, 1-eps] -> [-1,1], clamped."""
        eps = self._config["logit_laplace_eps"]
        return (((x - eps) / (1 - 2 * eps)).clamp(0, 1)) * 2 - 1

    def _split_stats(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder output (B,2C,H,W) -> mu (B,C,H,W) in logit space, log b (B,C,H,W) floored
        (smoothly) at log(b_min)."""
        C = out.shape[1] // 2
        mu, raw = out[:, :C].float(), out[:, C:].float()
        floor = math.log(self._config["b_min"])
        log_b = floor + F.softplus(raw - floor)
        return mu, log_b

    @staticmethod
    def logit_laplace_nll(x: torch.Tensor, mu: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
        """-log p(x) per element for x in (0,1) under the logit-Laplace (paper, appendix A):
        p(x | mu, b) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x))."""
        y = torch.logit(x)
        return math.log(2.0) + log_b + torch.log(x) + torch.log1p(-x) + (y - mu).abs() * torch.exp(-log_b)

    # -------------------------------------------------------------- the ELBO
    def forward_loss(self, images: torch.Tensor, step: int) -> dict:
        """Negative ELBO on a batch at update `step` (tau and beta from `dvae_schedule`).

        Returns loss (to minimise, nats per sub-pixel), recon (logit-Laplace NLL per sub-pixel),
        kl (KL to the uniform prior per code position, nats), psnr (dB of the relaxed
        reconstruction's mean), hard_psnr (dB of decode(argmax codes): what the transformer's
        tokens can show), code_match (share of positions whose relaxed sample picks the argmax
        code), perplexity (of the batch's argmax codes), tau, beta (floats).
        """
        self._check_images(images)
        sched = dvae_schedule(step, self._config)
        tau, beta = sched["tau"], sched["beta"]
        x = self.map_pixels(images.float())                          # (B,C,H,W) in [eps, 1-eps]
        logits = self.encoder(x.to(images.dtype)).float()            # (B,K,h,w)
        z = F.gumbel_softmax(logits, tau=tau, hard=self._config["straight_through"], dim=1)  # (B,K,h,w)
        mu, log_b = self._split_stats(self.decoder(z.to(images.dtype)))  # (B,C,H,W) each
        recon = self.logit_laplace_nll(x, mu, log_b).mean()
        # KL(q || uniform) = sum_k q_k log q_k + log K, per code position
        log_q = F.log_softmax(logits, dim=1)
        kl = (log_q.exp() * log_q).sum(1).mean() + math.log(self.codebook_size)
        # ELBO sums: NLL over 3HW sub-pixels, KL over hw positions -> per sub-pixel
        positions_per_subpixel = logits.shape[2] * logits.shape[3] / x[0].numel()
        loss = recon + beta * kl * positions_per_subpixel
        with torch.no_grad():
            recon_img = self.unmap_pixels(torch.sigmoid(mu))
            p = psnr(recon_img, images.float())
            # what the transformer will see: hard codes (argmax), decoded. The relaxed PSNR above
            # can sit dB above it (the decoder reads soft mixtures); this is the honest number.
            codes = logits.argmax(1)                                               # (B,h,w)
            hard = self._decode_hard(codes)
            hard_p = psnr(hard, images.float())
            code_match = (z.argmax(1) == codes).float().mean()   # sample == argmax: the gap's size
            use = F.one_hot(codes, self.codebook_size).flatten(0, 2).float().mean(0)  # (K,)
            ppl = torch.exp(-(use * use.clamp_min(1e-12).log()).sum())   # batch codebook perplexity
        return {"loss": loss, "recon": recon.detach(), "kl": kl.detach(), "psnr": p,
                "hard_psnr": hard_p, "code_match": code_match, "perplexity": ppl,
                "tau": tau, "beta": beta}

    def _decode_hard(self, codes: torch.Tensor) -> torch.Tensor:
        """decode() without its value checks (no host sync inside a training step)."""
        conv = self.decoder.input
        h = F.embedding(codes, conv.weight.flatten(1).t()) + conv.bias       # (B,h,w,n_init)
        mu, _ = self._split_stats(self.decoder.forward_embedded(h.permute(0, 3, 1, 2).contiguous()))
        return self.unmap_pixels(torch.sigmoid(mu))

    def forward(self, images: torch.Tensor, step: int) -> dict:
        return self.forward_loss(images, step)

    # -------------------------------------------------------------- codes
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [-1,1] -> codes LongTensor (B,h,w), the argmax of the encoder."""
        self._check_images(images)
        logits = self.encoder(self.map_pixels(images), batch_stats=False)
        return logits.argmax(dim=1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B,h,w) -> images (B,3,H,W) in [-1,1]: sigmoid(mu), the logit-Laplace's
        location (its median), as OpenAI's released decoder reads it out."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B,h,w), got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        # a 1x1 conv on a one-hot is a column lookup: no (B,K,h,w) one-hot is materialised
        return self._decode_hard(codes.long())

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """decode(encode(images)): what the transformer's tokens can represent."""
        return self.decode(self.encode(images))

    codebook_usage = staticmethod(codebook_usage)
    psnr = staticmethod(psnr)
