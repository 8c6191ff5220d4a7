"""unCLIP decoder (model_code/models/decoder.py): overfitting, save/load, seeded sampling with every
sampler, one-pass CFG, padding ignored, the text-conditioned variant, variations/interpolation/text diffs."""
import pytest
import torch
import torch.nn.functional as F

from model_code.models.decoder import (UnCLIPDecoder, interpolate, interpolation_path, text_diff, text_diff_path,
                                       variations)
from model_code.models.prior import clip_dims
from tests.numerics import assert_close_computed
from tests.unit.models.helpers import assert_same_samples, overfit, reload_exact

CFG = {**clip_dims({"embed_dim": 32, "text_width": 24, "max_text_tokens": 12}),
       "image_size": 8, "channels": 32, "channel_mult": [1, 2], "layers_per_block": 1,
       "attention_levels": [False, True], "head_dim": 32, "text_width": 32, "text_layers": 1, "text_heads": 4}


def data(B=4, L=6):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(B, 3, 8, 8, generator=g) > 0.5).float() * 2 - 1
    emb = F.normalize(torch.randn(B, 32, generator=g), dim=-1)
    tokens = torch.randn(B, L, 24, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1:, 3:] = False
    return images, emb, tokens, mask


def test_overfits_one_batch():
    model = UnCLIPDecoder.from_config(CFG)
    args = data()
    before, after = overfit(model, *args, steps=20, lr=5e-3)
    assert after < 0.6 * before, (before, after)  # ~1.1 -> ~0.47 in 20 steps


@pytest.mark.parametrize("sampler", ["ddim", "dpm", "ddpm"])
def test_sample_deterministic_and_shaped(sampler):
    model = UnCLIPDecoder.from_config(CFG).eval()
    _, emb, tokens, mask = data(2)
    kw = dict(steps=3, guidance_scale=3.0, sampler=sampler)
    a = model.sample(emb, tokens, mask, generator=torch.Generator().manual_seed(5), **kw)
    b = model.sample(emb, tokens, mask, generator=torch.Generator().manual_seed(5), **kw)
    c = model.sample(emb, tokens, mask, generator=torch.Generator().manual_seed(6), **kw)
    assert a.shape == (2, 3, 8, 8)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_cfg_is_one_batched_forward_per_step():
    model = UnCLIPDecoder.from_config(CFG).eval()
    _, emb, tokens, mask = data(3)
    batches = []
    hook = model.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    model.sample(emb, tokens, mask, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert batches == [6] * 4
    batches.clear()
    model.sample(emb, tokens, mask, steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert batches == [3] * 4
    hook.remove()


def test_padding_is_ignored_and_caption_matters():
    model = UnCLIPDecoder.from_config(CFG).eval()
    images, emb, tokens, mask = data(4)
    x, t = torch.randn(4, 3, 8, 8), torch.tensor(500)
    eps = model._eps(x, t, model._cond(emb, tokens, mask))
    padded = tokens.clone()
    padded[~mask] = 50.0
    assert_close_computed(model._eps(x, t, model._cond(emb, padded, mask)), eps, steps=16)  # one UNet pass, ~16 layers
    changed = tokens.clone()
    changed[1, 0] += 1.0
    assert not torch.allclose(model._eps(x, t, model._cond(emb, changed, mask))[1], eps[1])
    other = model._eps(x, t, model._cond(emb.flip(0), tokens, mask))
    assert not torch.allclose(other, eps)  # the CLIP embedding conditions the output


def test_save_load_exact(tmp_path):
    model = UnCLIPDecoder.from_config(CFG).eval()
    _, emb, tokens, mask = data(2)
    loaded = reload_exact(model, tmp_path / "dec").eval()
    assert_same_samples(model, loaded, emb, tokens, mask, steps=2, guidance_scale=2.0)


def test_text_conditioned_variant():
    model = UnCLIPDecoder.from_config({**CFG, "conditioning": "text"})
    assert model.conditioning == "text"
    images, text_emb, tokens, mask = data(2)
    loss = model.forward_loss(images, text_emb, tokens, mask)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    out = model.eval().sample(text_emb, tokens, mask, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="decoder.conditioning"):
        UnCLIPDecoder.from_config({**CFG, "conditioning": "pixels"})


def test_interpolation_text_diff_and_variations():
    model = UnCLIPDecoder.from_config(CFG).eval()
    _, emb, _, _ = data(2)
    path = interpolation_path(emb[0], emb[1], 5)
    assert path.shape == (5, 32)
    assert torch.equal(path[0], emb[0]) and torch.equal(path[-1], emb[1])
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(5))
    # decoded with one shared x_T: the endpoints are exactly the samples of the two embeddings
    latents = model.initial_noise(1, torch.Generator().manual_seed(3))
    imgs = interpolate(model, emb[0], emb[1], 3, latents=latents, steps=2, guidance_scale=1.0)
    end = model.sample(emb[1:2], latents=latents, steps=2, guidance_scale=1.0)
    assert imgs.shape == (3, 3, 8, 8)
    assert_close_computed(imgs[2:], end, steps=2 * 16)  # batch of 3 vs 1: other kernels; 2 UNet passes
    # text diff: theta = 0 is the image embedding itself, further thetas move toward the text direction
    t_old, t_new = F.normalize(torch.randn(2, 32), dim=-1)
    diffs = text_diff_path(emb[0], t_old, t_new, thetas=(0.0, 0.25, 0.5))
    z_d = F.normalize(t_new - t_old, dim=-1)
    assert torch.equal(diffs[0], emb[0])
    sims = diffs @ z_d
    assert sims[0] < sims[1] < sims[2]
    assert text_diff(model, emb[0], t_old, t_new, steps=2, generator=torch.Generator().manual_seed(0)).shape == (3, 3, 8, 8)
    var = variations(model, emb, 2, steps=2, generator=torch.Generator().manual_seed(0))
    assert var.shape == (4, 3, 8, 8)
    assert not torch.allclose(var[0], var[1])  # two variations of the same image differ


def test_bad_input_errors():
    with pytest.raises(ValueError, match="decoder.clip_text_width"):
        UnCLIPDecoder.from_config({"clip_embed_dim": 32, "max_text_tokens": 4})
    with pytest.raises(ValueError, match="decoder.attention_levels"):
        UnCLIPDecoder.from_config({**CFG, "attention_levels": [True]})
    with pytest.raises(ValueError, match="decoder.emb_drop_prob"):
        UnCLIPDecoder.from_config({**CFG, "emb_drop_prob": -0.1})
    model = UnCLIPDecoder.from_config(CFG)
    images, emb, tokens, mask = data(2)
    with pytest.raises(ValueError, match="images must be"):
        model.forward_loss(images[:, :, :4, :4], emb, tokens, mask)
    with pytest.raises(ValueError, match="clip_text_width"):
        model.forward_loss(images, emb, tokens[..., :8], mask)


def test_every_trainable_parameter_gets_a_gradient():
    model = UnCLIPDecoder.from_config({**CFG, "emb_drop_prob": 0.0, "text_drop_prob": 0.0})
    model.forward_loss(*data(2))["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("L", [1, 11, 12])
def test_any_caption_length_works(L):
    """4 extra tokens + a 12-token caption = 16 context tokens = the 4x4 level's H*W, the length at
    which diffusers' added-KV attention leaves the context mask unpadded (the main job once
    crashed on it when the recaptioned captions reached 60 tokens at 32 px)."""
    images, emb, tokens, mask = data(L=L)
    mask[:] = True
    loss = UnCLIPDecoder.from_config(CFG).forward_loss(images, emb, tokens, mask)["loss"]
    assert torch.isfinite(loss)
