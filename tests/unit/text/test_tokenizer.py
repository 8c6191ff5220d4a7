"""The byte-level BPE caption tokenizer: train, encode, decode, save/load."""
import random

import pytest
import torch

from model_code.data import shapes
from model_code.text.tokenizer import SPECIAL_TOKENS, TextTokenizer


@pytest.fixture(scope="module")
def captions():
    rng = random.Random(0)
    out = []
    for _ in range(400):
        scene = shapes.sample_scene(rng, 32)
        out += [shapes.curated_caption(scene, rng), shapes.alt_text(scene, rng)]
    return out


@pytest.fixture(scope="module")
def tok(captions):
    return TextTokenizer.train(captions, vocab_size=400, max_len=32)


def test_train_is_deterministic_and_has_the_special_tokens(captions, tok):
    again = TextTokenizer.train(captions, vocab_size=400, max_len=32)
    assert again._tok.to_str() == tok._tok.to_str()
    assert 256 + len(SPECIAL_TOKENS) < tok.vocab_size <= 400
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.token_id("<nope>")


def test_encode_batch_pads_masks_lowercases_and_truncates(tok):
    texts = ["A RED Circle in the top left", "a red circle in the top left", "x " * 100, ""]
    ids, mask = tok.encode_batch(texts)
    assert ids.shape == mask.shape == (4, 32) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert torch.equal(ids[0], ids[1])                       # lowercased like DALL-E
    assert (ids[:, 0] == tok.bos_id).all()
    n = mask.sum(1)
    assert n[2] == 32 and ids[2, -1] == tok.eos_id            # truncated, <eos> kept
    assert n[3] == 2 and ids[3, 1] == tok.eos_id              # empty caption: <bos> <eos>
    assert (ids[~mask] == tok.pad_id).all()
    assert all(bool(m[:k].all()) and not bool(m[k:].any()) for m, k in zip(mask, n.tolist()))
    short, _ = tok.encode_batch(["a cross"], max_len=8, prefix="<short>")
    assert short.shape == (1, 8) and short[0, 1] == tok.token_id("<short>")
    with pytest.raises(ValueError, match="prefix"):
        tok.encode_batch(["a"], prefix="<medium>")
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        tok.encode_batch(["a", None])


def test_decode_round_trips_captions(tok, captions):
    for cap in captions[:20]:
        if tok.count_tokens(cap) <= 30:
            assert tok.decode(tok.encode(cap)) == cap.lower().strip()
    ids, _ = tok.encode_batch(["two blue stars"])
    assert tok.decode(ids[0]) == "two blue stars"              # padding and specials dropped
    assert tok.decode([tok.bos_id] + tok.encode("a star")[1:-1] + [tok.eos_id, 300, 301]) == "a star"
    assert tok.count_tokens("a red circle") == len(tok.encode("a red circle")) - 2


def test_save_load_round_trip(tok, tmp_path):
    tok.save(str(tmp_path / "tok"))
    back = TextTokenizer.load(f"file://{tmp_path / 'tok'}")
    assert back.max_len == 32 and back.vocab_size == tok.vocab_size
    texts = ["a tiny purple star at the bottom", "IMG_2847.jpg"]
    for a, b in zip(tok.encode_batch(texts), back.encode_batch(texts)):
        assert torch.equal(a, b)


def test_bad_training_input_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        TextTokenizer.train(["a b c"], vocab_size=100, max_len=16)
    with pytest.raises(ValueError, match="empty"):
        TextTokenizer.train([], vocab_size=300, max_len=16)
    with pytest.raises(ValueError, match=r"texts\[0\]"):
        TextTokenizer.train([3], vocab_size=300, max_len=16)
