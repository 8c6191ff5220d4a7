"""The paper preset builds the unCLIP models at the DALL-E 2 paper's sizes (on the meta device:
shapes only, no memory): prior 1B, decoder 3.5B, upsamplers 700M (64->256) and 300M (256->1024)."""
import pytest
import torch

from model_code.config import load_preset
from model_code.train.parts import section   # a preset section as model config (no training keys)
from model_code.models.clip import CLIP
from model_code.models.decoder import UnCLIPDecoder
from model_code.models.diffusion import count_params
from model_code.models.prior import DiffusionPrior, clip_dims
from model_code.models.upsampler import Upsampler


@pytest.fixture(scope="module")
def paper():
    cfg = load_preset("paper")
    clip_sec = {**section(cfg, "clip"), "vocab_size": cfg["tokenizer"]["vocab_size"]}
    clip_sec.setdefault("max_text_tokens", cfg["tokenizer"]["max_text_tokens"])
    with torch.device("meta"):
        clip = CLIP.from_config(clip_sec)
        dims = clip_dims(clip.config)
        models = {
            "clip": clip,
            "prior": DiffusionPrior.from_config({**section(cfg, "prior"), **dims}),
            "decoder": UnCLIPDecoder.from_config({**section(cfg, "decoder"), **dims}),
            "upsampler": Upsampler.from_config(section(cfg, "upsampler")),
            "upsampler2": Upsampler.from_config(section(cfg, "upsampler2")),
        }
    return cfg, models


@pytest.mark.parametrize("part,target", [("prior", 1.0e9), ("decoder", 3.5e9),
                                         ("upsampler", 700e6), ("upsampler2", 300e6)])
def test_paper_sizes_within_5_percent(paper, part, target):
    _, models = paper
    n = count_params(models[part])
    assert abs(n - target) / target < 0.05, f"{part}: {n / 1e6:.1f}M vs {target / 1e6:.0f}M"
    assert all(p.is_meta for p in models[part].parameters())  # nothing was allocated


def test_paper_shapes(paper):
    cfg, models = paper
    clip = models["clip"].config
    # seed: ViT-H/16 over 256x256 images, width 1280, 32 blocks; text encoder width 1024, 24 blocks
    assert (clip["image_size"], clip["patch_size"], clip["width"], clip["layers"]) == (256, 16, 1280, 32)
    assert (clip["text_width"], clip["text_layers"]) == (1024, 24)
    assert section(cfg, "prior")["sample_steps"] == 64 and section(cfg, "decoder")["sample_steps"] == 250
    assert section(cfg, "upsampler")["sample_steps"] == 27 and section(cfg, "upsampler2")["sample_steps"] == 15
    assert section(cfg, "decoder")["image_size"] == 64
    assert (section(cfg, "upsampler")["image_size"], section(cfg, "upsampler2")["image_size"]) == (256, 1024)
    assert models["prior"].config["cond_drop_prob"] == 0.1
    assert (models["decoder"].config["emb_drop_prob"], models["decoder"].config["text_drop_prob"]) == (0.1, 0.5)
    assert (section(cfg, "upsampler")["degradation"], section(cfg, "upsampler2")["degradation"]) == ("blur", "bsr")


def test_schedules_stay_real_under_meta(paper):
    _, models = paper
    assert not models["prior"].scheduler.alphas_cumprod.is_meta


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_every_preset_builds(preset):
    cfg = load_preset(preset)
    with torch.device("meta"):
        clip = CLIP.from_config({**section(cfg, "clip"), "vocab_size": cfg["tokenizer"]["vocab_size"],
                                 "max_text_tokens": cfg["tokenizer"]["max_text_tokens"]})
        dims = clip_dims(clip.config)
        prior = DiffusionPrior.from_config({**section(cfg, "prior"), **dims})
        decoder = UnCLIPDecoder.from_config({**section(cfg, "decoder"), **dims})
        upsampler = Upsampler.from_config(section(cfg, "upsampler"))
    assert clip.config["image_size"] == cfg["data"]["size"]
    # the upsampler multiplies the decoder's resolution by its scale (paper: 64 -> 256)
    assert upsampler.config["scale"] == 4 and decoder.config["image_size"] <= cfg["data"]["size"]
    assert prior.config["cond_drop_prob"] == 0.1
