"""CLIP (model_code/models/clip.py): contrastive training, normalised embeddings, exact save/load."""
import pytest
import torch

from model_code.models.clip import CLIP
from model_code.text.tokenizer import TextTokenizer
from tests.numerics import assert_close_computed
from tests.unit.models.helpers import fit, reload_exact

CAPTIONS = ["a red circle at the top left", "two blue squares on a white background",
            "a small green star below a yellow triangle", "a black cross in the center",
            "a large purple circle", "an orange triangle right of a cyan square",
            "three red stars", "a gray background with a blue cross"]
CFG = {"vocab_size": 300, "max_text_tokens": 16, "image_size": 16, "patch_size": 4, "width": 32, "layers": 2,
       "heads": 4, "text_width": 32, "text_layers": 2, "text_heads": 4, "embed_dim": 32}


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(CAPTIONS * 4, vocab_size=300, max_len=16)


def batch(tok, n=8):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    ids, mask = tok.encode_batch(CAPTIONS[:n])
    return images, ids, mask


def test_overfits_one_batch(tok):
    model = CLIP.from_config({**CFG, "vocab_size": tok.vocab_size})
    images, ids, mask = batch(tok)
    first = model.forward_loss(images, ids, mask)
    fit(model, images, ids, mask, steps=40, lr=2e-3)
    out = model.forward_loss(images, ids, mask)
    assert first["loss"].item() > 1.5  # ~log(8) at init
    assert out["loss"].item() < 0.3 * first["loss"].item()
    assert out["acc"].item() == 1.0
    # the matched pairs now score higher than every mismatched pair
    model.eval()
    zi, zt = model.encode_image(images), model.encode_text(ids, mask)
    sims = zi @ zt.t()
    assert torch.equal(sims.argmax(1), torch.arange(8))


def test_embeddings_normalised_and_shapes(tok):
    model = CLIP.from_config({**CFG, "vocab_size": tok.vocab_size}).eval()
    images, ids, mask = batch(tok, 4)
    zi, zt = model.encode_image(images), model.encode_text(ids, mask)
    assert zi.shape == zt.shape == (4, 32)
    torch.testing.assert_close(zi.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(zt.norm(dim=-1), torch.ones(4))
    assert model.encode_text_tokens(ids, mask).shape == (4, 16, 32)
    assert model.image_features(images).shape == (4, 1 + (16 // 4) ** 2, 32)
    z2, tokens = model.encode_text_all(ids, mask)
    assert_close_computed(z2, zt, steps=8)  # 2 text layers, ~4 roundings each
    score = model.score(images, ids, mask)
    torch.testing.assert_close(score, (zi * zt).sum(-1))
    torch.testing.assert_close(model.clip_score(images, ids, mask), 100 * score.clamp(min=0))


def test_text_embedding_ignores_padding(tok):
    model = CLIP.from_config({**CFG, "vocab_size": tok.vocab_size}).eval()
    _, ids, mask = batch(tok, 8)
    z = model.encode_text(ids, mask)
    r = int(mask.sum(1).argmin())  # the shortest caption has padding
    assert not mask[r].all()
    ids2 = ids.clone()
    ids2[~mask] = 7  # different ids at padded positions
    assert_close_computed(model.encode_text(ids2, mask), z, steps=8)
    ids3 = ids.clone()
    ids3[r, 1] = (ids3[r, 1] + 1) % tok.vocab_size  # a real token changed
    assert not torch.allclose(model.encode_text(ids3, mask)[r], z[r])


def test_save_load_exact(tmp_path, tok):
    model = CLIP.from_config({**CFG, "vocab_size": tok.vocab_size}).eval()
    images, ids, mask = batch(tok, 4)
    loaded = reload_exact(model, tmp_path / "clip").eval()
    assert (tmp_path / "clip" / "config.json").exists() and (tmp_path / "clip" / "model.safetensors").exists()
    assert torch.equal(model.encode_image(images), loaded.encode_image(images))
    assert torch.equal(model.encode_text(ids, mask), loaded.encode_text(ids, mask))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="clip.vocab_size"):
        CLIP.from_config({})
    with pytest.raises(ValueError, match="clip.image_size"):
        CLIP.from_config({**CFG, "image_size": 18})
    model = CLIP.from_config(CFG)
    with pytest.raises(ValueError, match="images must be"):
        model.encode_image(torch.zeros(2, 3, 32, 32))
    ids, mask = torch.zeros(2, 20, dtype=torch.long), torch.ones(2, 20, dtype=torch.bool)
    with pytest.raises(ValueError, match="max_text_tokens"):
        model.encode_text(ids, mask)
    with pytest.raises(ValueError, match="at least one real token"):
        model.encode_text(ids[:, :4], torch.zeros(2, 4, dtype=torch.bool))


def test_conv_stem_keeps_the_token_grid_and_round_trips(tmp_path):
    torch.manual_seed(0)
    m = CLIP({**CFG, "conv_stem": True}).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    feats = m.image_features(x)
    assert feats.shape == (2, 1 + (16 // 4) ** 2, CFG["width"])  # the same grid as the patchify conv
    convs = [l for l in m.model.vision_model.embeddings.patch_embedding if isinstance(l, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 1] and convs[0].kernel_size == (3, 3)
    m.save_pretrained(str(tmp_path / "c"))
    again = CLIP.from_pretrained(str(tmp_path / "c")).eval()
    assert torch.equal(again.image_features(x), feats)
    for bad, msg in (({"conv_stem": "yes"}, "conv_stem must be true or false"),
                     ({"conv_stem": True, "patch_size": 3, "image_size": 15}, "power-of-two")):
        with pytest.raises(ValueError, match=msg):
            CLIP({**CFG, **bad})
