"""The pretrained-VLM recaption backend on tiny BLIP and GIT models this test builds itself.

No hub: each model is built from a config with random weights, saved with save_pretrained beside
a processor whose BERT tokenizer is built from a local vocabulary, and loaded back offline.
"""
import json
import os

import pytest
from PIL import Image

from model_code.data import shapes
from model_code.recaption.captioner import load_captioner
from model_code.recaption.pretrained import PretrainedCaptioner

WORDS = sorted(set(("a an the and of on in at is there to left right above below background shapes "
                    "small large big little tiny circle square triangle star cross red orange yellow "
                    "green cyan blue purple black white beige gray light top bottom middle center").split()))
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def _tokenizer():
    from transformers import BertTokenizerFast
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)


def _vision(image_size=32):
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=image_size, patch_size=8)


def _save_blip(path):
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor
    cfg = BlipConfig(text_config=dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                      bos_token_id=2, sep_token_id=3, pad_token_id=0),
                     vision_config=_vision(), projection_dim=32)
    BlipForConditionalGeneration(cfg).save_pretrained(path)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                  tokenizer=_tokenizer()).save_pretrained(path)


def _save_git(path):
    from transformers import CLIPImageProcessorPil, GitConfig, GitForCausalLM, GitProcessor
    cfg = GitConfig(vision_config=_vision(), vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                    bos_token_id=2, eos_token_id=3, pad_token_id=0)
    GitForCausalLM(cfg).save_pretrained(path)
    GitProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                       crop_size={"height": 32, "width": 32}),
                 tokenizer=_tokenizer()).save_pretrained(path)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    _save_blip(str(root / "blip"))
    _save_git(str(root / "git"))
    return {"blip": str(root / "blip"), "git": str(root / "git")}


@pytest.fixture(scope="module")
def images():
    import random
    rng = random.Random(0)
    return [shapes.render(shapes.sample_scene(rng, 32)) for _ in range(3)] + [Image.new("RGB", (48, 40), "red")]


@pytest.mark.parametrize("kind_of_model", ["blip", "git"])
def test_pretrained_captions_offline(model_dirs, images, kind_of_model):
    cap = PretrainedCaptioner(model_dirs[kind_of_model], max_new_tokens={"short": 4, "long": 12})
    assert cap.model_type == kind_of_model
    long = cap.caption(images, kind="long", seed=1)
    assert len(long) == len(images) and all(isinstance(t, str) for t in long)
    assert any(t for t in long), "a random tiny model still samples some words"
    # every word comes from the vocabulary the test built: the processor really decodes the ids
    assert {w for t in long for w in t.split()} <= set(WORDS)
    # the seed alone decides the sample (not the global RNG)
    assert cap.caption(images, kind="long", seed=1) == long
    assert cap.caption(images, kind="long", seed=2) != long
    # the kind sets the token budget
    short = cap.caption(images, kind="short", seed=1)
    assert max(cap.count_tokens(t) for t in short) <= 4
    assert max(cap.count_tokens(t) for t in long) <= 12
    # greedy decoding is deterministic without a seed's help
    assert cap.caption(images, temperature=0, seed=3) == cap.caption(images, temperature=0, seed=4)


def test_load_captioner_spec_and_uri(model_dirs, images):
    cap = load_captioner("pretrained:file://" + model_dirs["git"])
    assert isinstance(cap, PretrainedCaptioner) and cap.name.startswith("pretrained:")
    assert len(cap.caption(images[:2], kind="short", seed=0)) == 2


def test_pretrained_bad_inputs(model_dirs, tmp_path, images):
    cap = PretrainedCaptioner(model_dirs["blip"])
    with pytest.raises(ValueError, match="kind"):
        cap.caption(images, kind="medium")
    with pytest.raises(ValueError, match=r"images\[0\]"):
        cap.caption(["not an image"])
    with pytest.raises(ValueError, match="config.json"):
        PretrainedCaptioner(str(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        PretrainedCaptioner(str(tmp_path / "missing"))
    other = tmp_path / "gpt2"
    os.makedirs(other)
    with open(other / "config.json", "w") as f:
        json.dump({"model_type": "gpt2"}, f)
    with pytest.raises(ValueError, match="not supported"):
        PretrainedCaptioner(str(other))
