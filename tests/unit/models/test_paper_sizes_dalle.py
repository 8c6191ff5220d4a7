"""The DALL-E 1 models at the paper's and the base preset's sizes, built on the meta device
(shapes only: no memory is allocated for parameters or activations)."""
import pytest
import torch

from model_code.config import load_preset
from model_code.train.parts import section   # a preset section as model config (no training keys)
from model_code.models.dvae import DVAE
from model_code.models.transformer import DalleTransformer


@pytest.fixture(scope="module")
def paper():
    return load_preset("paper")


def test_paper_transformer_is_12b_with_the_papers_shapes(paper):
    with torch.device("meta"):
        m = DalleTransformer.from_config(section(paper, "transformer"))
    assert all(p.is_meta for p in m.parameters())
    n = m.num_params()
    assert abs(n - 12e9) / 12e9 < 0.05, f"{n / 1e9:.2f}B parameters"
    g = m.gpt.config
    assert (g.n_layer, g.n_head, g.n_embd, g.n_embd // g.n_head) == (64, 62, 3968, 64)
    assert m.seq_len == 1280                                    # 256 text + 32x32 image tokens
    assert g.vocab_size == 16384 + 256 + 8192                   # text + per-position pads + codes
    kinds = m.config["image_attention"]                         # appendix B.1's sparse masks
    assert kinds[1::4] == ["column"] * 16 and kinds[-1] == "conv" and kinds.count("row") == 47


def test_paper_dvae_maps_256px_to_32x32_of_8192_codes(paper):
    with torch.device("meta"):
        m = DVAE.from_config(section(paper, "dvae"))
        logits = m.encoder(torch.empty(2, 3, 256, 256))
        out = m.decoder(torch.empty(2, 8192, 32, 32))
    assert logits.shape == (2, 8192, 32, 32) and logits.is_meta
    assert out.shape == (2, 6, 256, 256)                        # logit-Laplace mu and log b
    n = sum(p.numel() for p in m.parameters())
    assert 90e6 < n < 105e6                                     # OpenAI's release: ~98M


def test_base_preset_fits_a_gpu_pool():
    base = load_preset("base")
    with torch.device("meta"):
        t = DalleTransformer.from_config(section(base, "transformer"))
        d = DVAE.from_config(section(base, "dvae"))
    assert 3e8 <= t.num_params() <= 1e9
    assert t.seq_len == 1280 and t.gpt.config.vocab_size == 16384 + 256 + 8192
    assert (d.grid_size, d.codebook_size) == (32, 8192)
