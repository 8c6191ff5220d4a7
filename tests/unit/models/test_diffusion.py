"""Diffusion training losses (model_code/models/diffusion.py): every prediction type's target, the
Min-SNR-gamma weighting, v-prediction's x0 clamp, and the schedule's validation."""
import pytest
import torch

from model_code.models.diffusion import (PREDICTION_TYPES, _clamp_x0, add_noise, diffusion_loss, make_scheduler,
                                         validate_schedule)

SCHED = {"timesteps": 100, "noise_schedule": "cosine", "sampler": "ddim", "sample_steps": 10}


def batch(B=6):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(B, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(B, 3, 4, 4, generator=g)
    t = torch.linspace(0, 99, B).long()
    return x0, noise, t


def coeffs(sched, t):
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    return abar.sqrt(), (1 - abar).sqrt()


def output_for(kind, sched, x0_hat, x_t, t):
    """What a model of `kind` outputs when its estimate of the clean image is x0_hat."""
    a, s = coeffs(sched, t)
    eps_hat = (x_t - a * x0_hat) / s
    return {"epsilon": eps_hat, "sample": x0_hat, "v_prediction": a * eps_hat - s * x0_hat}[kind]


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_the_true_target_costs_nothing_and_v_is_salimans_and_hos(kind):
    sched = make_scheduler("ddpm", {**SCHED, "prediction_type": kind})
    x0, noise, t = batch()
    x_t = add_noise(sched, x0, noise, t)
    perfect = output_for(kind, sched, x0, x_t, t)
    assert diffusion_loss(sched, perfect, x0, noise, t).item() < 1e-8
    assert diffusion_loss(sched, perfect + 0.1, x0, noise, t).item() == pytest.approx(0.01, rel=1e-4)
    if kind == "v_prediction":   # v = sqrt(abar) eps - sqrt(1 - abar) x0
        a, s = coeffs(sched, t)
        torch.testing.assert_close(perfect, a * noise - s * x0, rtol=1e-4, atol=1e-5)


def test_min_snr_weights_every_prediction_type_alike_in_x0_space():
    # Hang et al. 2023: whatever the model predicts, a sample's loss is min(SNR_t, gamma) x its x0 error
    x0, noise, t = batch()
    x0_hat = x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    losses = {}
    for kind in PREDICTION_TYPES:
        sched = make_scheduler("ddpm", {**SCHED, "prediction_type": kind})
        x_t = add_noise(sched, x0, noise, t)
        losses[kind] = diffusion_loss(sched, output_for(kind, sched, x0_hat, x_t, t), x0, noise, t, snr_gamma=5.0)
    abar = sched.alphas_cumprod[t]
    expected = ((x0_hat - x0) ** 2).flatten(1).mean(1) * (abar / (1 - abar)).clamp(max=5.0)
    for kind, loss in losses.items():
        assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-3), kind
    # without it, the types weigh the same x0 error differently (x0: 1, v: SNR + 1, eps: SNR)
    sched = make_scheduler("ddpm", {**SCHED, "prediction_type": "sample"})
    plain = diffusion_loss(sched, x0_hat, x0, noise, t)
    assert plain.item() == pytest.approx(((x0_hat - x0) ** 2).mean().item(), rel=1e-5)


def test_v_prediction_clamp_bounds_the_implied_x0():
    sched = make_scheduler("dpm", {**SCHED, "prediction_type": "v_prediction"})
    x0, noise, t = batch(1)
    t = torch.tensor([60])
    x_t = add_noise(sched, x0, noise, t)
    wild = output_for("v_prediction", sched, 3 * x0.sign(), x_t, t)      # implies x0 = +-3
    clamped = _clamp_x0(sched, wild, x_t, t[0], 1.0)
    a, s = coeffs(sched, t)
    torch.testing.assert_close(a * x_t - s * clamped, x0.sign(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [0, -1.0, "5", True])
def test_a_bad_snr_gamma_names_the_key(bad):
    with pytest.raises(ValueError, match=r"decoder\.snr_gamma"):
        validate_schedule({**SCHED, "prediction_type": "sample", "snr_gamma": bad}, "decoder")
    validate_schedule({**SCHED, "prediction_type": "v_prediction", "snr_gamma": 5}, "decoder")
