"""unCLIP diffusion upsampler: P(x_hi | x_lo), 4x super-resolution (64->256 and 256->1024 in the paper).

Paper (Ramesh et al. 2022, sec. 2.1 and appendix): two diffusion upsamplers conditioned on the
low-resolution image only (no caption), with no attention: only spatial convolutions, so a model
trained on random crops one quarter of the target size runs at the full size at inference. The
conditioning image is corrupted in training: Gaussian blur for the first stage, a BSR degradation
for the second. 700M (64->256) and 300M (256->1024) parameters; sampled with DDIM, 27 and 15 steps.

Built here as a diffusers UNet2DModel in ADM form (scale-shift timestep conditioning, ResNet
up/downsampling, no attention anywhere) whose input is [x_t, upsample(x_lo)] on the channel axis.

Config keys (`upsampler:` / `upsampler2:` preset sections):
  scale (4), image_size (the high-res size it trains on; crops of crop_fraction of it), channels, channel_mult, layers_per_block, norm_groups,
  dropout, degradation ("blur" | "bsr"), blur_sigma [lo, hi], blur_kernel, noise_std [lo, hi] (bsr),
  crop_fraction, timesteps, noise_schedule, prediction_type, snr_gamma, sampler, sample_steps, eta
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DModel

from model_code.models.pretrained import PretrainedMixin, positive_ints
from model_code.models.diffusion import add_noise, diffusion_loss, make_scheduler, sample_loop, sample_timesteps, validate_schedule

DEGRADATIONS = ("blur", "bsr", "none")


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-sample Gaussian blur: x (B, C, H, W), sigma (B,) > 0, odd kernel size; reflect padding."""
    r = kernel // 2
    grid = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)                   # (K,)
    k = torch.exp(-(grid[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))          # (B, K)
    k = k / k.sum(1, keepdim=True)
    B, C, H, W = x.shape
    # separable: a depthwise conv per (sample, channel), horizontal then vertical
    w = k.repeat_interleave(C, dim=0)                                                 # (B*C, K)
    y = F.pad(x.reshape(1, B * C, H, W), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, w[:, None, None, :], groups=B * C)
    y = F.conv2d(y, w[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


class Upsampler(PretrainedMixin, nn.Module):
    SECTION = "upsampler"
    MODEL_TYPE = "easel-unclip-upsampler"
    DEFAULTS = {
        "scale": 4,
        "image_size": 32,
        "channels": 32,
        "channel_mult": [1, 2],
        "layers_per_block": 1,
        "norm_groups": 32,
        "dropout": 0.0,
        "degradation": "blur",       # paper: blur for 64->256, BSR for 256->1024
        "blur_sigma": [0.4, 0.6],    # blur strength drawn per sample (cascaded-diffusion practice)
        "blur_kernel": 3,
        "noise_std": [0.0, 0.1],     # bsr only: additive Gaussian noise on [-1, 1] pixels
        "crop_fraction": 1.0,        # paper: 0.25 (train on crops a quarter of the target size)
        "timesteps": 1000,
        "noise_schedule": "cosine",  # paper: cosine for 64->256, linear for 256->1024
        "prediction_type": "epsilon",
        "snr_gamma": None,                  # Min-SNR-gamma loss weighting (models/diffusion.py); None = off
        "clip_sample": True,
        "sampler": "ddim",
        "sample_steps": 27,          # paper: DDIM 27 (64->256), 15 (256->1024)
        "eta": 0.0,
    }

    @classmethod
    def _validate(cls, cfg: dict) -> None:
        positive_ints(cfg, "upsampler", "scale", "image_size", "channels", "layers_per_block", "norm_groups", "blur_kernel")
        if cfg["degradation"] not in DEGRADATIONS:
            raise ValueError(f"upsampler.degradation must be one of {DEGRADATIONS} (got {cfg['degradation']!r})")
        if cfg["blur_kernel"] % 2 == 0:
            raise ValueError(f"upsampler.blur_kernel must be odd (got {cfg['blur_kernel']})")
        lo, hi = cfg["blur_sigma"]
        if not 0 < lo <= hi:
            raise ValueError(f"upsampler.blur_sigma must be [lo, hi] with 0 < lo <= hi (got {cfg['blur_sigma']!r})")
        if not 0 < cfg["crop_fraction"] <= 1:
            raise ValueError(f"upsampler.crop_fraction must be in (0, 1] (got {cfg['crop_fraction']!r})")
        for m in cfg["channel_mult"]:
            if (cfg["channels"] * m) % cfg["norm_groups"]:
                raise ValueError(f"upsampler: level width {cfg['channels'] * m} must be divisible by norm_groups={cfg['norm_groups']}")
        crop = round(cfg["image_size"] * cfg["crop_fraction"])
        if crop % (cfg["scale"] * 2 ** (len(cfg["channel_mult"]) - 1)):
            raise ValueError(f"upsampler: the training crop ({crop} px = image_size*crop_fraction) must be divisible by "
                             f"scale*2**(levels-1) = {cfg['scale'] * 2 ** (len(cfg['channel_mult']) - 1)}")
        validate_schedule(cfg, "upsampler")

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = self.resolve_config(cfg)
        self.config = cfg
        widths = tuple(cfg["channels"] * m for m in cfg["channel_mult"])
        self.unet = UNet2DModel(
            sample_size=cfg["image_size"], in_channels=6, out_channels=3, block_out_channels=widths,
            layers_per_block=cfg["layers_per_block"],
            down_block_types=("ResnetDownsampleBlock2D",) * len(widths),
            up_block_types=("ResnetUpsampleBlock2D",) * len(widths),
            add_attention=False,  # paper: no attention, only spatial convolutions
            resnet_time_scale_shift="scale_shift", norm_num_groups=cfg["norm_groups"], dropout=cfg["dropout"],
        )
        self.scheduler = make_scheduler("ddpm", cfg)

    @property
    def min_multiple(self) -> int:
        return 2 ** (len(self.config["channel_mult"]) - 1)

    # ---- conditioning ---------------------------------------------------------------------------

    def degrade(self, low: torch.Tensor) -> torch.Tensor:
        """Training-time corruption of the low-res conditioning image (B, 3, h, w).
        blur: Gaussian blur, sigma ~ U(blur_sigma) per sample (paper's first upsampler).
        bsr: a simplified BSR degradation (Zhang et al. 2021) for the second: a wider random blur
             (sigma up to 3x blur_sigma's top) then additive Gaussian noise; no JPEG or camera noise."""
        cfg, B = self.config, low.shape[0]
        if cfg["degradation"] == "none":
            return low
        lo, hi = cfg["blur_sigma"]
        if cfg["degradation"] == "bsr":
            hi = 3 * hi
        sigma = lo + (hi - lo) * torch.rand(B, device=low.device)
        kernel = cfg["blur_kernel"] if cfg["degradation"] == "blur" else 2 * cfg["blur_kernel"] + 1
        kernel = min(kernel, 2 * (min(low.shape[-2:]) - 1) + 1)  # reflect padding needs pad < size
        out = gaussian_blur(low, sigma, kernel)
        if cfg["degradation"] == "bsr":
            nlo, nhi = cfg["noise_std"]
            std = nlo + (nhi - nlo) * torch.rand(B, 1, 1, 1, device=low.device)
            out = out + std * torch.randn_like(out)
        return out.clamp(-1, 1)

    def condition(self, low: torch.Tensor) -> torch.Tensor:
        """Low-res (B, 3, h, w) -> (B, 3, scale*h, scale*w), bicubic, the channels concatenated to x_t."""
        return F.interpolate(low, scale_factor=self.config["scale"], mode="bicubic", align_corners=False).clamp(-1, 1)

    def _eps(self, x_t: torch.Tensor, t: torch.Tensor, cond_up: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        return self.unet(torch.cat([x_t, cond_up], dim=1), t).sample

    def _random_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Paper: train on random crops crop_fraction of the side (the model is fully convolutional)."""
        frac = self.config["crop_fraction"]
        if frac >= 1:
            return x
        H, W = x.shape[-2:]
        c = round(H * frac)
        c -= c % (self.config["scale"] * self.min_multiple)
        i = torch.randint(0, H - c + 1, (x.shape[0],)).tolist()
        j = torch.randint(0, W - c + 1, (x.shape[0],)).tolist()
        return torch.stack([x[b, :, i[b]:i[b] + c, j[b]:j[b] + c] for b in range(x.shape[0])])

    # ---- training ---------------------------------------------------------------------------

    def forward_loss(self, hi_res: torch.Tensor) -> dict[str, torch.Tensor]:
        """The diffusion MSE (diffusion_loss) on high-res images (B, 3, H, W) in [-1, 1]; builds the
        low-res input itself (area downsampling by `scale`, then the degradation)."""
        s, m = self.config["scale"], self.min_multiple
        if hi_res.dim() != 4 or hi_res.shape[1] != 3 or hi_res.shape[-1] % (s * m) or hi_res.shape[-2] % (s * m):
            raise ValueError(f"upsampler: hi_res must be (B, 3, H, W) with H, W divisible by {s * m}; got {tuple(hi_res.shape)}")
        x0 = self._random_crop(hi_res)
        low = self.degrade(F.interpolate(x0, scale_factor=1 / s, mode="area"))
        cond_up = self.condition(low)
        noise = torch.randn_like(x0)
        t = sample_timesteps(x0.shape[0], self.scheduler, x0.device)
        pred = self._eps(add_noise(self.scheduler, x0, noise, t), t, cond_up)
        return {"loss": diffusion_loss(self.scheduler, pred, x0, noise, t, self.config["snr_gamma"])}

    def forward(self, hi_res: torch.Tensor):
        return self.forward_loss(hi_res)

    # ---- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, low_res: torch.Tensor, steps: int | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
               eta: float | None = None) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] -> (B, 3, scale*h, scale*w) in [-1, 1] (any h, w whose upsampled
        size is divisible by 2**(levels-1): the network is convolutional)."""
        s, m = self.config["scale"], self.min_multiple
        if low_res.dim() != 4 or low_res.shape[1] != 3 or (low_res.shape[-1] * s) % m or (low_res.shape[-2] * s) % m:
            raise ValueError(f"upsampler: low_res must be (B, 3, h, w) with {s}*h, {s}*w divisible by {m}; got {tuple(low_res.shape)}")
        cond_up = self.condition(low_res)
        sched = make_scheduler(sampler or self.config["sampler"], self.config)
        x = sample_loop(self._eps, tuple(cond_up.shape), sched, steps or self.config["sample_steps"],
                        cond=cond_up, generator=generator, latents=latents, device=low_res.device,
                        eta=self.config["eta"] if eta is None else eta, clamp=1.0)
        return x.clamp(-1, 1)
