"""CoCa captioner: targets, loss, overfitting, generation (KV cache, seeds), save/load."""
import random

import pytest
import torch

from model_code.data import shapes
from model_code.models.clip import CLIP
from model_code.models.coca import CoCa, encode_targets, short_from_long, short_target
from model_code.recaption.captioner import images_to_tensor
from model_code.text.tokenizer import TextTokenizer
from tests.unit.models.helpers import reload_exact

CLIP_CFG = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2,
            "text_width": 32, "text_layers": 1, "text_heads": 2, "embed_dim": 32}


@pytest.fixture(scope="module")
def world():
    rng = random.Random(0)
    scenes = [shapes.sample_scene(rng, 32, n_objects=1) for _ in range(3)]
    curated = [shapes.curated_caption(s, rng) for s in scenes]
    corpus = [shapes.curated_caption(shapes.sample_scene(rng, 32), rng) for _ in range(300)]
    tok = TextTokenizer.train(corpus + curated + [shapes.short_caption(s) for s in scenes], 400, 48)
    images = images_to_tensor([shapes.render(s) for s in scenes], 32)  # (3, 3, 32, 32)
    return {"scenes": scenes, "curated": curated, "tok": tok, "images": images}


def _model(tok, **over):
    cfg = CoCa.config_for({"max_text_tokens": 48, "width": 48, "layers": 2, "heads": 2, "clip": CLIP_CFG, **over}, tok)
    return CoCa.from_config(cfg)


def test_short_from_long():
    assert short_from_long("A dog on a beach. It is sunny.") == "A dog on a beach."
    long_first = " ".join(["word"] * 30) + ". Next."
    assert short_from_long(long_first, max_words=5) == "word word word word word"
    assert short_from_long("no full stop here") == "no full stop here"
    with pytest.raises(ValueError, match="non-empty"):
        short_from_long("  ")
    scene = shapes.sample_scene(random.Random(1), 32)
    assert short_target("whatever.", scene) == shapes.short_caption(scene)
    import json
    assert short_target("whatever.", json.dumps(scene)) == shapes.short_caption(scene)  # manifest rows hold JSON
    assert short_target("First. Second.", None) == "First."


def test_encode_targets_puts_the_kind_after_bos(world):
    tok = world["tok"]
    ids, mask = encode_targets(tok, ["a red circle", "a blue square"], ["short", "long"], max_len=16)
    assert ids.shape == mask.shape == (2, 16)
    assert ids[0, 0] == ids[1, 0] == tok.bos_id
    assert ids[0, 1] == tok.token_id("<short>") and ids[1, 1] == tok.token_id("<long>")
    with pytest.raises(ValueError, match="kinds must be in"):
        encode_targets(tok, ["x"], ["medium"])
    with pytest.raises(ValueError, match="1 captions but 2 kinds"):
        encode_targets(tok, ["x"], ["short", "long"])


def test_config_and_input_errors(world):
    tok = world["tok"]
    with pytest.raises(ValueError, match="captioner.vocab_size"):
        CoCa.from_config({})
    with pytest.raises(ValueError, match="captioner.width"):
        CoCa.from_config({**CoCa.config_for({}, tok), "width": 30, "heads": 4})
    m = _model(tok)
    ids, mask = encode_targets(tok, ["a red circle"] * 2, ["short"] * 2)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        m.forward_loss(torch.zeros(3, 3, 32, 32), ids, mask)
    with pytest.raises(ValueError, match="kind must be one of"):
        m.generate_ids(world["images"][:1], kind="medium")
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate_ids(world["images"][:1], max_new_tokens=100)
    with pytest.raises(ValueError, match="top_p"):
        m.generate_ids(world["images"][:1], top_p=0)
    small = TextTokenizer.train(["a red circle", "a blue square"] * 5, 263, 16)
    with pytest.raises(ValueError, match="expects vocab_size"):
        m.set_tokenizer(small)


def test_overfit_and_greedy_reproduces_training_captions(world, tmp_path):
    """CoCa on 3 images x {short, long}: both losses fall and greedy decoding writes the captions
    it was trained on, the kind token choosing which."""
    tok, images = world["tok"], world["images"]
    longs = world["curated"]
    shorts = [short_target(c, s) for c, s in zip(longs, world["scenes"])]
    n = len(longs)

    def norm(texts):  # the tokenizer lowercases; compare what it can round-trip
        return [tok.decode(tok.encode(t)) for t in texts]

    model = _model(tok, width=64, layers=1).set_tokenizer(tok)
    # the contrastive towers collapse at the decoder's high overfitting lr: give them their own
    decoder_params = [p for name, p in model.named_parameters() if not name.startswith("clip.")]
    opt = torch.optim.AdamW([{"params": model.clip.parameters(), "lr": 1e-3}, {"params": decoder_params}], lr=5e-3)
    first, reproduced = None, False
    for step in range(300):
        kind = "long" if step % 2 == 0 else "short"  # one kind per batch: each image once per contrastive batch
        ids, mask = encode_targets(tok, longs if kind == "long" else shorts, [kind] * n)
        out = model.forward_loss(images, ids, mask)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or {k: float(v.detach()) for k, v in out.items()}
        if step >= 100 and step % 20 == 19:
            reproduced = (model.generate(images, kind="long", temperature=0) == norm(longs)
                          and model.generate(images, kind="short", temperature=0) == norm(shorts))
            if reproduced:
                break
    last = {k: float(v.detach()) for k, v in out.items()}
    assert reproduced, f"greedy decoding did not reproduce the training captions in {step + 1} steps: {last}"
    assert last["caption_loss"] < 0.1 * first["caption_loss"]
    assert last["contrastive_loss"] < 0.5 * first["contrastive_loss"]
    # the kind token, not the image alone, chooses the caption
    assert model.generate(images, kind="short", temperature=0) != model.generate(images, kind="long", temperature=0)
    # nucleus sampling at 0.7 stays on the training captions of a confident model
    assert model.generate(images, kind="short", seed=3) == norm(shorts)

    # as a judge: each image explains its own caption best (log p(caption | image), the
    # `rerank: captioner` score), and the score is the captioning loss summed instead of averaged
    model.eval()
    ids, mask = encode_targets(tok, longs, ["long"] * n)
    lp = torch.stack([model.caption_logprob(images, ids[j:j + 1].expand(n, -1), mask[j:j + 1].expand(n, -1))
                      for j in range(n)], dim=1)  # (image, caption)
    assert lp.shape == (n, n) and torch.equal(lp.argmax(0), torch.arange(n)), lp
    with torch.no_grad():
        mean_nll = model.forward_loss(images, ids, mask)["caption_loss"]
    n_targets = int(mask[:, 2:].sum())  # <bos> and the kind are never predicted
    assert torch.allclose(-lp.diagonal().sum() / n_targets, mean_nll, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="3 images but 1 captions"):
        model.caption_logprob(images, ids[:1], mask[:1])

    # save / load: identical weights and identical samples
    again = reload_exact(model, tmp_path / "coca")
    with pytest.raises(ValueError, match="needs the tokenizer"):
        again.generate(images)  # the tokenizer is its own part: not in the weights
    assert again.generate(images, kind="long", seed=5, tokenizer=tok) == model.generate(images, kind="long", seed=5)


def test_sampling_is_seeded_and_cache_matches_no_cache(world):
    tok, images = world["tok"], world["images"]
    model = _model(tok)
    a = model.generate_ids(images, kind="long", seed=1, max_new_tokens=12)
    state = torch.get_rng_state()
    b = model.generate_ids(images, kind="long", seed=1, max_new_tokens=12)
    assert torch.equal(torch.get_rng_state(), state), "generation must not consume the global RNG"
    assert torch.equal(a, b)
    assert not torch.equal(a, model.generate_ids(images, kind="long", seed=2, max_new_tokens=12))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(model.generate_ids(images, generator=g1, max_new_tokens=8),
                       model.generate_ids(images, generator=g2, max_new_tokens=8))
    # every row starts with [<bos>, kind]
    assert (a[:, 0] == tok.bos_id).all() and (a[:, 1] == tok.token_id("<long>")).all()
    # several samples per image, rows of one image adjacent
    many = model.generate_ids(images, seed=1, max_new_tokens=6, num_return_sequences=3)
    assert many.shape[0] == 3 * images.shape[0]
    # KV cache is an optimisation only: greedy decoding is identical without it
    greedy = model.generate_ids(images, temperature=0, max_new_tokens=10)
    assert torch.equal(greedy, model.generate_ids(images, temperature=0, max_new_tokens=10, use_cache=False))


def test_warm_start_from_clip_and_clip_text_fit(world):
    tok = world["tok"]
    clip = CLIP({**CLIP_CFG, "vocab_size": tok.vocab_size, "max_text_tokens": 24})
    model = CoCa.from_clip(clip, CoCa.config_for({"max_text_tokens": 48, "width": 32, "layers": 1, "heads": 2}, tok))
    for k, v in clip.state_dict().items():
        assert torch.equal(v, model.clip.state_dict()[k]), k
    # decoder captions (48 positions, with a kind token) are fitted to the CLIP's 24 positions
    n = len(world["curated"])
    ids, mask = encode_targets(tok, world["curated"], ["long"] * n)
    cids, cmask = model._clip_text(ids, mask)
    assert cids.shape == (n, 24) and (cids[:, 0] == tok.bos_id).all()
    assert not (cids == tok.token_id("<long>")).any()
    last = cmask.long().cumsum(1).argmax(1)
    assert (cids[torch.arange(n), last] == tok.eos_id).all(), "a cut caption still ends with <eos>"
    out = model.forward_loss(world["images"], ids, mask)
    assert torch.isfinite(out["loss"])


def test_frozen_towers_train_only_the_decoder(world, tmp_path):
    torch.manual_seed(0)
    tok = world["tok"]
    model = _model(tok, freeze_towers=True)
    n = len(world["curated"])
    ids, mask = encode_targets(tok, world["curated"], ["long"] * n)
    out = model.forward_loss(world["images"], ids, mask)
    out["loss"].backward()
    assert all(p.grad is None for p in model.clip.parameters()), "a frozen tower got a gradient"
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)
    assert torch.isfinite(out["contrastive_loss"])  # still reported, not trained
    # the loss is the captioning term alone
    assert torch.allclose(out["loss"], model.config["caption_weight"] * out["caption_loss"])
    model.save_pretrained(str(tmp_path / "m"))
    again = CoCa.from_pretrained(str(tmp_path / "m"))
    assert again.config["freeze_towers"] is True
    assert not any(p.requires_grad for p in again.clip.parameters())
    with pytest.raises(ValueError, match="freeze_towers"):
        _model(tok, freeze_towers="yes")


def test_memory_positions_tell_the_decoder_where_each_token_is(world, tmp_path):
    """memory_pos adds fixed 2D sin-cos positions to the cross-attention memory (DETR's spatial
    encodings): the same weights without it give the memory minus exactly those positions, the CLS
    token has none, every grid cell gets its own, and the setting survives save/load."""
    torch.manual_seed(0)
    tok = world["tok"]
    with_pos = _model(tok, memory_pos=True)
    plain = _model(tok)
    plain.load_state_dict(with_pos.state_dict())  # the positions are a fixed buffer, not weights
    mem, _ = with_pos.encode_image_tokens(world["images"])
    ref, _ = plain.encode_image_tokens(world["images"])
    grid = CLIP_CFG["image_size"] // CLIP_CFG["patch_size"]
    assert mem.shape == ref.shape == (3, 1 + grid * grid, 48)
    diff = (mem - ref)[0]
    assert torch.allclose(diff[0], torch.zeros(48)) and torch.allclose(mem - ref, diff.expand_as(mem), atol=1e-6)
    assert len({tuple(row.round(decimals=4).tolist()) for row in diff[1:]}) == grid * grid
    back = reload_exact(with_pos, tmp_path / "m")
    assert torch.equal(back.encode_image_tokens(world["images"])[0], mem)
    with pytest.raises(ValueError, match="memory_pos must be true or false"):
        _model(tok, memory_pos="yes")
