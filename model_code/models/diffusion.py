"""Diffusion utilities shared by the unCLIP prior, decoder and upsamplers (on diffusers schedulers).

- `make_scheduler(kind, cfg)`: DDPM (training and ancestral sampling), DDIM and DPM-Solver++ samplers
  built from one model config section, so training and sampling share the same noise schedule.
- `add_noise`, `sample_timesteps`: the forward process q(x_t | x_0).
- `diffusion_loss`: the training MSE for any prediction type, optionally Min-SNR weighted.
- `sample_loop`: the reverse process for any model, with classifier-free guidance computed from ONE
  batched forward pass of [cond; uncond] per step.
- `slerp`: spherical interpolation for CLIP embeddings (interpolations and text diffs).

Schedule keys read from a model's config section:
  timesteps (1000 in the paper), noise_schedule ("cosine" = improved DDPM's squaredcos_cap_v2, or
  "linear"), prediction_type ("epsilon", "sample" = x0, or "v_prediction" = v, Salimans & Ho 2022),
  snr_gamma (Min-SNR-gamma loss weighting, Hang et al. 2023; None = unweighted), clip_sample (clip x0
  to [-1, 1]; images only).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SAMPLERS = ("ddpm", "ddim", "dpm")
NOISE_SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def validate_schedule(cfg: dict, section: str) -> None:
    """A clear error for a bad schedule field (called by each model's config validation)."""
    if cfg.get("noise_schedule") not in NOISE_SCHEDULES:
        raise ValueError(f"{section}.noise_schedule must be one of {sorted(NOISE_SCHEDULES)} (got {cfg.get('noise_schedule')!r})")
    if cfg.get("prediction_type") not in PREDICTION_TYPES:
        raise ValueError(f"{section}.prediction_type must be one of {PREDICTION_TYPES} (got {cfg.get('prediction_type')!r})")
    if cfg.get("sampler") not in SAMPLERS:
        raise ValueError(f"{section}.sampler must be one of {SAMPLERS} (got {cfg.get('sampler')!r})")
    g = cfg.get("snr_gamma")
    if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not g > 0):
        raise ValueError(f"{section}.snr_gamma must be a number > 0 or null (got {g!r})")
    t = cfg.get("timesteps")
    if not isinstance(t, int) or t < 2:
        raise ValueError(f"{section}.timesteps must be an integer >= 2 (got {t!r})")
    s = cfg.get("sample_steps")
    if not isinstance(s, int) or not 1 <= s <= t:
        raise ValueError(f"{section}.sample_steps must be an integer in [1, timesteps={t}] (got {s!r})")


def make_scheduler(kind: str, cfg: dict):
    """A diffusers scheduler for `kind` in ("ddpm", "ddim", "dpm") with the config's noise schedule.

    Strided sampling uses "trailing" timestep spacing so the first step starts at t = T - 1 (pure
    noise), whatever the number of steps (Lin et al. 2023; "leading" never reaches t = T - 1).
    """
    if kind not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} (got {kind!r})")
    common: dict[str, Any] = dict(
        num_train_timesteps=cfg.get("timesteps", 1000),
        beta_schedule=NOISE_SCHEDULES[cfg.get("noise_schedule", "cosine")],
        prediction_type=cfg.get("prediction_type", "epsilon"),
        timestep_spacing="trailing",
    )
    clip = bool(cfg.get("clip_sample", False))
    with torch.device("cpu"):  # schedule tables stay real even when a model is built under torch.device("meta")
        if kind == "ddpm":
            # fixed_small = the posterior variance beta~_t (DDPM); the paper's learned/analytic variances are not modelled
            return DDPMScheduler(**common, clip_sample=clip, variance_type="fixed_small")
        if kind == "ddim":
            return DDIMScheduler(**common, clip_sample=clip, set_alpha_to_one=True)
        # DPM-Solver++(2M); thresholding would rescale images, so x0 is only clipped by the caller
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)


def sample_timesteps(batch: int, scheduler, device: torch.device | str) -> torch.Tensor:
    """Uniform t ~ U{0, ..., T-1}, (B,) long, from the global RNG (training)."""
    return torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, per-sample t (B,)."""
    return scheduler.add_noise(x0, noise, t)


def diffusion_loss(scheduler, pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """MSE between the model output `pred` and its target under the scheduler's prediction type
    (noise, x0, or v = sqrt(abar) noise - sqrt(1 - abar) x0), averaged over the batch.

    snr_gamma: Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy"): each sample's loss is reweighted so that its x0-space weight is
    min(SNR_t, gamma) instead of what the prediction type implies (x0: 1, eps: SNR_t, v: SNR_t + 1).
    It caps the easy low-noise steps and tempers the hopeless high-noise ones; diffusers' training
    scripts do the same in their examples, there is no library function for it."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "sample":
        target = x0
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES} (got {kind!r})")
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)   # (B,)
    if snr_gamma is not None:
        abar = scheduler.alphas_cumprod.to(t.device)[t].float()
        snr = abar / (1 - abar)                                                                    # (B,)
        implied = {"epsilon": snr, "sample": torch.ones_like(snr), "v_prediction": snr + 1}[kind]
        per_sample = per_sample * snr.clamp(max=float(snr_gamma)) / implied
    return per_sample.mean()


def _cat(a: Any, b: Any) -> Any:
    """Concatenate two conditioning structures (tensor / dict / None) along the batch."""
    if a is None:
        return None
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    return torch.cat([a, b], dim=0)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device, then moved: the same seed gives the same
    numbers whatever device the model runs on."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


@torch.no_grad()
def sample_loop(
    model_fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    shape: tuple[int, ...],
    scheduler,
    steps: int,
    guidance_scale: float = 1.0,
    cond: Any = None,
    uncond: Any = None,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    eta: float = 0.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Run the reverse process from x_T ~ N(0, I) (or `latents`) for `steps` strided steps.

    model_fn(x (N, ...), t (scalar tensor), cond) -> model output (N, ...), where cond is a tensor,
    a dict of tensors or None. With guidance_scale != 1 and an `uncond`, each step runs ONE forward
    pass on the batch [x; x] with [cond; uncond] and combines the halves as in classifier-free
    guidance (Ho & Salimans 2021): out = out_u + s * (out_c - out_u). The combination is linear, so
    it is the same for eps- and x0-predicting models (x0 and eps are affine in each other at fixed x_t).
    `clamp` bounds the predicted x0 (images: 1.0) for samplers without built-in clipping.
    """
    if steps < 1 or steps > scheduler.config.num_train_timesteps:
        raise ValueError(f"steps must be in [1, {scheduler.config.num_train_timesteps}] (got {steps})")
    scheduler.set_timesteps(steps, device=device)
    x = latents.to(device) if latents is not None else randn(shape, generator, device)
    x = x * scheduler.init_noise_sigma
    guided = uncond is not None and guidance_scale != 1.0
    both = _cat(cond, uncond) if guided else cond
    extra = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(x, t)
        if guided:
            out_c, out_u = model_fn(torch.cat([xin, xin], dim=0), t, both).chunk(2)
            out = out_u + guidance_scale * (out_c - out_u)
        else:
            out = model_fn(xin, t, cond)
        if clamp is not None and isinstance(scheduler, DPMSolverMultistepScheduler):
            out = _clamp_x0(scheduler, out, x, t, clamp)
        x = scheduler.step(out, t, x, generator=generator, **extra).prev_sample
    return x


def _clamp_x0(scheduler, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, bound: float) -> torch.Tensor:
    """Clip the x0 implied by a model output to [-bound, bound] and return the matching output.
    (DDPM/DDIM do this themselves with clip_sample; DPM-Solver does not, and guided eps drifts.)"""
    abar = scheduler.alphas_cumprod.to(x.device)[int(t)]
    a, s = abar.sqrt(), (1 - abar).sqrt()
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return out.clamp(-bound, bound)
    if kind == "v_prediction":
        x0 = (a * x - s * out).clamp(-bound, bound)
        eps = (x - a * x0) / s
        return a * eps - s * x0
    x0 = ((x - s * out) / a).clamp(-bound, bound)
    return (x - a * x0) / s


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between vectors a and b (..., D) at t in [0, 1] (scalar or (...,) tensor).

    slerp(a, b, 0) == a and slerp(a, b, 1) == b exactly; nearly parallel vectors fall back to lerp.
    The unCLIP paper interpolates CLIP image embeddings with slerp (and applies text diffs with it).
    """
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim() > 0:
        t = t.unsqueeze(-1)  # (..., 1) broadcasts over D
    an, bn = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    theta = (an * bn).sum(-1, keepdim=True).clamp(-1, 1).acos()  # (..., 1) angle between a and b
    sin = theta.sin()
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1 - t, ((1 - t) * theta).sin() / safe)
    wb = torch.where(parallel, t, (t * theta).sin() / safe)
    return wa * a + wb * b


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
