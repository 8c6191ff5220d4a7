"""The one save/load format of every Easel model (model_code/models/pretrained.py)."""
import json

import pytest
import torch

from model_code.models.dvae import DVAE
from model_code.models.prior import DiffusionPrior
from model_code.models.transformer import DalleTransformer

TR_CFG = {"text_vocab_size": 40, "text_len": 4, "image_grid": 2, "codebook_size": 16, "n_layer": 1, "n_head": 2,
          "d_model": 32}
DVAE_CFG = dict(image_size=32, downsample=4, codebook_size=16, n_hid=8, n_blk_per_group=1, n_init=8)


def test_round_trip_is_exact_and_tied_weights_stay_tied(tmp_path):
    torch.manual_seed(0)
    tr = DalleTransformer(TR_CFG)
    tr.save_pretrained(str(tmp_path / "tr"))
    back = DalleTransformer.from_pretrained(str(tmp_path / "tr"))
    for (k, a), (_, b) in zip(tr.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    assert back.gpt.lm_head.weight.data_ptr() == back.gpt.transformer.wte.weight.data_ptr()


def test_a_model_of_another_kind_is_refused(tmp_path):
    DVAE(DVAE_CFG).save_pretrained(str(tmp_path / "dvae"))
    assert json.load(open(tmp_path / "dvae" / "config.json"))["model_type"] == "easel-dvae"
    with pytest.raises(ValueError, match="holds a 'easel-dvae' model, not 'easel-unclip-prior'"):
        DiffusionPrior.from_pretrained(str(tmp_path / "dvae"))
    with pytest.raises(ValueError, match="config.json missing"):
        DVAE.from_pretrained(str(tmp_path / "nothing"))


def test_an_untagged_config_is_refused_with_the_reason(tmp_path):
    m = DalleTransformer(TR_CFG)
    m.save_pretrained(str(tmp_path / "old"))
    cfg = json.load(open(tmp_path / "old" / "config.json"))
    del cfg["model_type"]
    json.dump(cfg, open(tmp_path / "old" / "config.json", "w"))
    with pytest.raises(ValueError, match="no model_type: not written by save_pretrained"):
        DalleTransformer.from_pretrained(str(tmp_path / "old"))


def test_tied_weights_round_trip_stored_once(tmp_path):
    from safetensors import safe_open
    m = DalleTransformer(TR_CFG)
    m.save_pretrained(str(tmp_path / "tr"))
    with safe_open(str(tmp_path / "tr" / "model.safetensors"), "pt") as f:
        assert len(set(f.keys())) < len(m.state_dict())              # the shared embedding once
    back = DalleTransformer.from_pretrained(str(tmp_path / "tr"), map_location="cpu").state_dict()
    assert all(torch.equal(back[k], v) for k, v in m.state_dict().items())


def test_from_config_takes_the_section_or_a_whole_preset():
    assert DVAE.from_config({"dvae": DVAE_CFG}).config == DVAE.from_config(DVAE_CFG).config
