"""unCLIP diffusion prior (model_code/models/prior.py) and the shared diffusion utilities
(model_code/models/diffusion.py): overfitting, save/load, seeded sampling, one-pass CFG, slerp."""
import pytest
import torch
import torch.nn.functional as F

from model_code.models.diffusion import make_scheduler, sample_loop, slerp
from model_code.models.prior import DiffusionPrior, clip_dims
from tests.numerics import assert_close_computed
from tests.unit.models.helpers import assert_same_samples, overfit, reload_exact

CLIP_CFG = {"embed_dim": 32, "text_width": 24, "max_text_tokens": 12}
CFG = {**clip_dims(CLIP_CFG), "width": 64, "layers": 2, "heads": 4}


def data(B=8, L=7):
    g = torch.Generator().manual_seed(0)
    text_emb = F.normalize(torch.randn(B, 32, generator=g), dim=-1)
    image_emb = F.normalize(text_emb + 0.5 * torch.randn(B, 32, generator=g), dim=-1)
    tokens = torch.randn(B, L, 24, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[::2, 4:] = False
    return text_emb, tokens, mask, image_emb


def test_overfits_one_batch_and_samples_the_targets():
    model = DiffusionPrior.from_config(CFG)
    args = data()
    before, after = overfit(model, *args, steps=80, lr=2e-3)
    assert after < 0.2 * before, (before, after)
    # the prior predicts x0 directly: sampling from the captions gives back their image embeddings
    model.eval()
    text_emb, tokens, mask, image_emb = args
    z = model.sample(text_emb, tokens, mask, steps=16, generator=torch.Generator().manual_seed(0))
    cos = (z * image_emb).sum(-1)
    assert cos.mean() > 0.8, cos


def test_sample_deterministic_normalised_and_shaped():
    model = DiffusionPrior.from_config(CFG).eval()
    text_emb, tokens, mask, _ = data(3)
    a = model.sample(text_emb, tokens, mask, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(7))
    b = model.sample(text_emb, tokens, mask, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(7))
    c = model.sample(text_emb, tokens, mask, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 32)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    for sampler in ("ddim", "dpm"):
        s = model.sample(text_emb, tokens, mask, steps=4, sampler=sampler, generator=torch.Generator().manual_seed(7))
        assert s.shape == (3, 32) and torch.isfinite(s).all()
    # no caption tokens at all is a valid (text-embedding-only) condition
    assert model.sample(text_emb, steps=2, generator=torch.Generator().manual_seed(0)).shape == (3, 32)


def test_cfg_is_one_batched_forward_per_step():
    model = DiffusionPrior.from_config(CFG).eval()
    text_emb, tokens, mask, _ = data(3)
    batches = []
    hook = model.net.register_forward_pre_hook(lambda m, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]),
                                               with_kwargs=True)
    model.sample(text_emb, tokens, mask, steps=5, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert batches == [6] * 5  # cond and uncond stacked: 2B rows, one call per step
    batches.clear()
    model.sample(text_emb, tokens, mask, steps=5, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert batches == [3] * 5  # no guidance: the conditional pass only
    hook.remove()


def test_save_load_exact(tmp_path):
    model = DiffusionPrior.from_config({**CFG, "cond_drop_prob": 0.2}).eval()
    text_emb, tokens, mask, image_emb = data(3)
    loaded = reload_exact(model, tmp_path / "prior").eval()
    assert_same_samples(model, loaded, text_emb, tokens, mask, steps=3, guidance_scale=2.0)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="prior.clip_embed_dim"):
        DiffusionPrior.from_config({"width": 64})
    with pytest.raises(ValueError, match="prior.width"):
        DiffusionPrior.from_config({**CFG, "width": 66})
    with pytest.raises(ValueError, match="prior.sampler"):
        DiffusionPrior.from_config({**CFG, "sampler": "euler"})
    with pytest.raises(ValueError, match="prior.cond_drop_prob"):
        DiffusionPrior.from_config({**CFG, "cond_drop_prob": 1.5})
    model = DiffusionPrior.from_config(CFG)
    text_emb, tokens, mask, image_emb = data(2)
    with pytest.raises(ValueError, match="text_emb must be"):
        model.forward_loss(text_emb[:, :16], tokens, mask, image_emb)
    with pytest.raises(ValueError, match="exceed max_text_tokens"):
        model.forward_loss(text_emb, torch.zeros(2, 13, 24), torch.ones(2, 13, dtype=torch.bool), image_emb)
    with pytest.raises(ValueError, match="text_mask"):
        model.forward_loss(text_emb, tokens, None, image_emb)


# ---- diffusion.py ---------------------------------------------------------------------------

def test_sample_loop_guidance_matches_two_pass_formula():
    """The one-pass batched CFG equals eps_u + s * (eps_c - eps_u) computed from separate passes."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4 + 2, 4)

    def model_fn(x, t, cond):  # cond: (N, 2)
        return net(torch.cat([x, cond], dim=-1)) * (1 + t.float() / 1000)

    cond, uncond = torch.randn(3, 2), torch.zeros(3, 2)

    def two_pass(x, t, _):
        e_c, e_u = model_fn(x, t, cond), model_fn(x, t, uncond)
        return e_u + 2.5 * (e_c - e_u)

    cfg = {"timesteps": 1000, "noise_schedule": "cosine", "prediction_type": "epsilon"}
    for kind in ("ddim", "ddpm", "dpm"):
        a = sample_loop(model_fn, (3, 4), make_scheduler(kind, cfg), 6, 2.5, cond, uncond,
                        generator=torch.Generator().manual_seed(3))
        b = sample_loop(two_pass, (3, 4), make_scheduler(kind, cfg), 6, 1.0, None, None,
                        generator=torch.Generator().manual_seed(3))
        # 6 sampler steps, each a network pass whose additions run in another order
        assert_close_computed(a, b, steps=6 * 2)


def test_slerp():
    a, b = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.equal(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid.norm(dim=-1), torch.ones(5))  # stays on the sphere
    torch.testing.assert_close((mid * a).sum(-1), (mid * b).sum(-1))  # equidistant from both ends
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel inputs fall back to lerp


def test_every_trainable_parameter_gets_a_gradient():
    # DDP without find_unused_parameters needs this; the null embedding takes part even with no drop
    model = DiffusionPrior.from_config({**CFG, "cond_drop_prob": 0.0})
    model.forward_loss(*data(2))["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
