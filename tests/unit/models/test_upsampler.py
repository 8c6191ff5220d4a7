"""unCLIP upsampler (model_code/models/upsampler.py): conv-only 4x diffusion super-resolution."""
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from model_code.models.upsampler import Upsampler, gaussian_blur
from tests.unit.models.helpers import assert_same_samples, overfit, reload_exact

CFG = {"image_size": 16, "scale": 4, "channels": 16, "channel_mult": [1, 2], "layers_per_block": 1,
       "norm_groups": 8, "sample_steps": 3}


def hi_res(B=4, size=16):
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(B, 3, size // 4, size // 4, generator=g), size=size, mode="nearest") * 2 - 1


def test_overfits_one_batch():
    model = Upsampler.from_config(CFG)
    x = hi_res()
    before, after = overfit(model, x, steps=25, lr=5e-3)
    assert after < 0.6 * before, (before, after)


def test_no_attention_and_4x_sampling_deterministic():
    model = Upsampler.from_config(CFG).eval()
    assert not any(isinstance(m, (Attention, torch.nn.MultiheadAttention)) for m in model.modules())  # paper: convs only
    low = F.interpolate(hi_res(2), scale_factor=0.25, mode="area")
    a = model.sample(low, generator=torch.Generator().manual_seed(4))
    b = model.sample(low, generator=torch.Generator().manual_seed(4))
    c = model.sample(low, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 3, 16, 16)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1
    # fully convolutional: a larger input than the training size works too (paper: crops in training)
    assert model.sample(torch.zeros(1, 3, 8, 8), steps=2).shape == (1, 3, 32, 32)


def test_degradations_and_crops():
    x = hi_res(3)
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([0.5, 2.0]), 5), flat)  # blur keeps flat colour
    blurred = gaussian_blur(x, torch.full((3,), 1.0), 5)
    assert blurred.var() < x.var()
    blur = Upsampler.from_config(CFG)
    low = F.interpolate(x, scale_factor=0.25, mode="area")
    assert not torch.equal(blur.degrade(low), low)
    bsr = Upsampler.from_config({**CFG, "degradation": "bsr"})
    d = bsr.degrade(low)
    assert d.shape == low.shape and d.min() >= -1 and d.max() <= 1
    # crop_fraction 0.5 on 32 px images: the loss is computed on 16 px crops
    cropper = Upsampler.from_config({**CFG, "image_size": 32, "crop_fraction": 0.5})
    seen = []
    hook = cropper.unet.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    cropper.forward_loss(hi_res(2, 32))
    hook.remove()
    assert seen == [(2, 6, 16, 16)]  # [x_t, upsampled low-res] on the channel axis


def test_save_load_exact(tmp_path):
    model = Upsampler.from_config({**CFG, "degradation": "bsr", "noise_schedule": "linear"}).eval()
    loaded = reload_exact(model, tmp_path / "up").eval()
    low = torch.rand(1, 3, 4, 4) * 2 - 1
    assert_same_samples(model, loaded, low, seed=0)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="upsampler.degradation"):
        Upsampler.from_config({**CFG, "degradation": "jpeg"})
    with pytest.raises(ValueError, match="upsampler.crop_fraction"):
        Upsampler.from_config({**CFG, "crop_fraction": 0})
    with pytest.raises(ValueError, match="upsampler.noise_schedule"):
        Upsampler.from_config({**CFG, "noise_schedule": "sigmoid"})
    model = Upsampler.from_config(CFG)
    with pytest.raises(ValueError, match="hi_res must be"):
        model.forward_loss(torch.zeros(1, 3, 18, 18))
    with pytest.raises(ValueError, match="low_res must be"):
        model.sample(torch.zeros(1, 1, 4, 4))
