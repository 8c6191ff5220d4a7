"""The DALL-E 1 transformer: loss, overfitting, save/load, constrained and cached sampling."""
import pytest
import torch

from model_code.config import load_preset
from model_code.models.transformer import DalleTransformer, attention_mask
from tests.unit.models.helpers import fit, reload_exact

CFG = dict(text_vocab_size=40, text_len=8, image_grid=4, codebook_size=16, n_layer=2, n_head=2,
           d_model=32)


def batch(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (B, 8), generator=g)
    lengths = torch.tensor([8, 5, 2, 3])[:B]                     # mixed prompt lengths
    mask = torch.arange(8)[None] < lengths[:, None]
    ids[~mask] = 0                                                # tokenizer pad id
    codes = torch.randint(0, 16, (B, 4, 4), generator=g)
    return ids, mask, codes


def test_loss_is_the_paper_weighting_and_ignores_padding():
    m = DalleTransformer.from_config(CFG).eval()
    ids, mask, codes = batch()
    out = m.forward_loss(ids, mask, codes)
    assert torch.allclose(out["loss"], out["text_loss"] / 8 + out["image_loss"] * 7 / 8)
    # at init both cross-entropies are near uniform over their own vocabularies
    assert abs(float(out["image_loss"]) - torch.log(torch.tensor(16.0))) < 0.5
    garbage = ids.clone()
    garbage[~mask] = 17                                           # whatever sits under the mask
    assert torch.equal(m.forward_loss(garbage, mask, codes)["loss"], out["loss"])
    # a shorter tokenizer output is padded to text_len
    short = m.forward_loss(ids[:, :5] * mask[:, :5], mask[:, :5], codes)
    assert torch.allclose(short["image_loss"], m.forward_loss(
        ids * mask, mask & (torch.arange(8) < 5), codes)["image_loss"])


def test_overfits_one_batch():
    m = DalleTransformer.from_config(CFG)
    ids, mask, codes = batch()
    losses = []
    out = fit(m, ids, mask, codes, steps=60, lr=3e-3, losses=losses)
    assert out["loss"].item() < 0.25 * losses[0]
    assert float(out["image_loss"]) < 0.5 and float(out["text_loss"]) < 1.5
    # greedy sampling now reproduces the memorised codes of each (mixed-length) prompt
    assert torch.equal(m.generate(ids, mask, temperature=0), codes)


def test_save_load_is_exact(tmp_path):
    m = DalleTransformer.from_config(CFG)
    back = reload_exact(m, tmp_path / "t")
    ids, mask, codes = batch()
    assert torch.equal(m.eval().forward_loss(ids, mask, codes)["loss"],
                       back.eval().forward_loss(ids, mask, codes)["loss"])


def test_generation_is_deterministic_by_seed_and_leaves_global_rng_alone():
    m = DalleTransformer.from_config(CFG)
    ids, mask, _ = batch()
    state = torch.get_rng_state()
    a = m.generate(ids, mask, num_samples=2, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (8, 4, 4) and a.dtype == torch.long
    assert torch.equal(a, m.generate(ids, mask, num_samples=2, seed=7))
    assert not torch.equal(a, m.generate(ids, mask, num_samples=2, seed=8))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(m.generate(ids, mask, top_k=5, top_p=0.9, generator=g1),
                       m.generate(ids, mask, top_k=5, top_p=0.9, generator=g2))


def test_only_image_codes_are_sampled():
    m = DalleTransformer.from_config(CFG).eval()
    with torch.no_grad():  # make text and padding tokens far likelier than any image code
        m.gpt.transformer.wte.weight[:m.image_offset] *= 50
    ids, mask, _ = batch()
    logits = m.gpt(input_ids=m.text_tokens(ids, mask)).logits[:, -1]
    assert (logits.argmax(-1) < m.image_offset).all()             # unconstrained: a text token
    for kw in (dict(temperature=0), dict(temperature=2.0, seed=0), dict(top_p=0.5, seed=1)):
        codes = m.generate(ids, mask, **kw)
        assert codes.min() >= 0 and codes.max() < m.codebook_size


def test_kv_cache_and_recomputation_agree_and_prompts_do_not_interact():
    m = DalleTransformer.from_config(CFG)
    ids, mask, _ = batch()
    cached = m.generate(ids, mask, temperature=0, use_cache=True)
    assert torch.equal(cached, m.generate(ids, mask, temperature=0, use_cache=False))
    assert torch.equal(m.generate(ids, mask, top_k=1, seed=0, use_cache=True),
                       m.generate(ids, mask, top_k=1, seed=5, use_cache=False))
    for b in range(len(ids)):                                     # one prompt alone = in the batch
        n = int(mask[b].sum())
        alone = m.generate(ids[b:b + 1, :n], mask[b:b + 1, :n], temperature=0)
        assert torch.equal(alone[0], cached[b])


def test_bad_inputs_are_rejected():
    m = DalleTransformer.from_config(CFG)
    ids, mask, codes = batch()
    with pytest.raises(ValueError, match="text_len"):
        m.forward_loss(torch.zeros(4, 9, dtype=torch.long), torch.ones(4, 9, dtype=torch.bool), codes)
    with pytest.raises(ValueError, match="codebook_size"):
        m.forward_loss(ids, mask, codes + 16)
    with pytest.raises(ValueError, match="text_vocab_size"):
        m.forward_loss(ids + 40, mask, codes)
    with pytest.raises(ValueError, match="image_codes"):
        m.forward_loss(ids, mask, codes[:, :2])
    with pytest.raises(ValueError, match="n_head"):
        DalleTransformer.from_config({**CFG, "n_head": 3})
    with pytest.raises(ValueError, match="n_layers"):
        DalleTransformer.from_config({**CFG, "n_layers": 3})


def test_row_and_column_image_positions(tmp_path):
    """image_pos: rowcol (the paper's row/column embeddings): image positions get the row and
    column of the code they predict; saving, loading, cached sampling and overfitting still hold."""
    torch.manual_seed(0)
    m = DalleTransformer.from_config({**CFG, "image_pos": "rowcol"})
    wpe = m.gpt.transformer.wpe
    T, G = m.text_len, m.image_grid
    pos = torch.arange(m.seq_len)
    extra = wpe(pos) - wpe.weight[pos]                            # what the row/column tables add
    assert torch.equal(extra[:T - 1], torch.zeros(T - 1, 32))     # text positions: GPT-2's table only
    for k in range(G * G):                                        # position T-1+k predicts code k
        assert torch.allclose(extra[T - 1 + k], wpe.row[k // G] + wpe.col[k % G])
    ids, mask, codes = batch()
    back = reload_exact(m, tmp_path / "t")
    assert back.config["image_pos"] == "rowcol"
    assert torch.equal(m.eval().forward_loss(ids, mask, codes)["loss"], back.eval().forward_loss(ids, mask, codes)["loss"])
    assert torch.equal(m.generate(ids, mask, temperature=0, use_cache=True),
                       m.generate(ids, mask, temperature=0, use_cache=False))
    fit(m.train(), ids, mask, codes, steps=60, lr=3e-3)
    assert torch.equal(m.generate(ids, mask, temperature=0), codes)
    # a transformer saved without the option loads as before (no row/column tables)
    assert not hasattr(DalleTransformer.from_config(CFG).gpt.transformer.wpe, "row")
    with pytest.raises(ValueError, match="image_pos"):
        DalleTransformer.from_config({**CFG, "image_pos": "2d"})


def test_the_papers_sparse_masks_by_their_definitions():
    """Row, column and convolutional masks (DALL-E appendix B.1, figure 11) on a 4 x 4 grid after
    3 text tokens, checked against their definitions one (query, key) pair at a time."""
    T, G = 3, 4
    for kind in ("dense", "row", "column", "conv"):
        mask = attention_mask(kind, T, G, conv_kernel=3)
        assert mask.shape == (T + G * G, T + G * G)
        for q in range(T + G * G):
            for k in range(T + G * G):
                if k > q:                                         # causal, always
                    want = False
                elif q < T or k < T:                              # text: causal; image sees all text
                    want = True
                else:
                    (rq, cq), (rk, ck) = divmod(q - T, G), divmod(k - T, G)
                    want = {"dense": True, "row": q - k <= G, "column": cq == ck,
                            "conv": abs(rq - rk) <= 1 and abs(cq - ck) <= 1}[kind]
                assert bool(mask[q, k]) == want, (kind, q, k)


def test_sparse_attention_layers_see_only_their_mask():
    """image_attention: a layer's output at an image position changes when a token it may attend
    to changes, and never when one it may not does; the paper's schedule is row / column / row /
    conv for 4 layers; cached sampling, saving and overfitting still hold."""
    torch.manual_seed(0)
    assert DalleTransformer.from_config({**CFG, "n_layer": 4, "image_attention": "sparse"}).config[
        "image_attention"] == ["row", "column", "row", "conv"]
    ids, mask, codes = batch()
    T = 8
    for kind in ("row", "column", "conv"):
        m = DalleTransformer.from_config({**CFG, "n_layer": 1, "image_attention": [kind], "conv_kernel": 3}).eval()
        allowed = attention_mask(kind, T, 4, conv_kernel=3)
        seq = torch.cat([m.text_tokens(ids, mask), codes.reshape(4, -1) + m.image_offset], 1)[:, :-1]
        base = m.gpt(input_ids=seq).logits
        for k in range(T, seq.shape[1]):                          # change image token k ...
            other = seq.clone()
            other[:, k] = m.image_offset + (other[:, k] - m.image_offset + 1) % 16
            changed = (m.gpt(input_ids=other).logits - base).abs().amax(dim=(0, 2)) > 0   # (S-1,)
            assert torch.equal(changed, allowed[:seq.shape[1], k]), (kind, k)  # ... moves what may see it
    m = DalleTransformer.from_config({**CFG, "image_attention": ["conv", "column"]})
    assert torch.equal(m.generate(ids, mask, temperature=0, use_cache=True),
                       m.generate(ids, mask, temperature=0, use_cache=False))
    fit(m.train(), ids, mask, codes, steps=80, lr=3e-3)
    assert torch.equal(m.generate(ids, mask, temperature=0), codes)
    for bad in ("local", ["row"], ["row", "diagonal"]):
        with pytest.raises(ValueError, match="image_attention"):
            DalleTransformer.from_config({**CFG, "image_attention": bad})
    with pytest.raises(ValueError, match="conv_kernel"):
        DalleTransformer.from_config({**CFG, "image_attention": "sparse", "conv_kernel": 4})


def test_sparse_attention_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    m = DalleTransformer.from_config({**CFG, "image_attention": "sparse"}).eval()
    back = reload_exact(m, tmp_path / "t")
    assert back.config["image_attention"] == ["row", "conv"]
    ids, mask, codes = batch()
    assert torch.equal(m.forward_loss(ids, mask, codes)["loss"], back.forward_loss(ids, mask, codes)["loss"])
    assert not any("dalle_mask" in k for k in m.state_dict())     # rebuilt from config, not saved


def test_classifier_free_guidance():
    """text_drop_prob trains some rows on the empty caption; guidance_scale s samples from
    log p(x|empty) + s (log p(x|text) - log p(x|empty)), computed here by hand without a cache."""
    torch.manual_seed(0)
    m = DalleTransformer.from_config({**CFG, "text_drop_prob": 0.5})
    ids, mask, codes = batch()
    m.eval()   # no caption is dropped outside training
    assert torch.equal(m.forward_loss(ids, mask, codes)["loss"], m.forward_loss(ids, mask, codes)["loss"])
    m.train()
    torch.manual_seed(1)
    dropped = m.forward_loss(ids, mask, codes)
    torch.manual_seed(1)
    keep = torch.rand(4, 1) >= 0.5                                # the rows forward_loss kept
    assert 0 < int(keep.sum()) < 4
    m.eval()                                                      # = those rows' captions emptied
    assert torch.allclose(dropped["loss"], m.forward_loss(ids, mask & keep, codes)["loss"])
    for s in (1.0, 0.0, 3.0):
        got = m.generate(ids, mask, temperature=0, guidance_scale=s)
        assert torch.equal(got, m.generate(ids, mask, temperature=0, guidance_scale=s, use_cache=False))
        seq = m.text_tokens(ids, mask)
        empty = m.pad_offset + torch.arange(m.text_len).expand(4, -1)
        for _ in range(m.image_tokens):
            cond = m.gpt(input_ids=seq).logits[:, -1].log_softmax(-1)
            uncond = m.gpt(input_ids=empty).logits[:, -1].log_softmax(-1)
            guided = (uncond + s * (cond - uncond))[:, m.image_offset:]
            nxt = guided.argmax(-1, keepdim=True) + m.image_offset
            seq, empty = torch.cat([seq, nxt], 1), torch.cat([empty, nxt], 1)
        assert torch.equal(got.flatten(1), seq[:, m.text_len:] - m.image_offset), s
    with pytest.raises(ValueError, match="text_drop_prob"):
        DalleTransformer.from_config({**CFG, "text_drop_prob": 1.0})
    with pytest.raises(ValueError, match="guidance_scale"):
        m.generate(ids, mask, guidance_scale=-1)


@pytest.mark.parametrize("preset", ["tiny", "small", "base", "paper"])
def test_presets_agree_with_the_tokenizer_and_dvae(preset):
    cfg = load_preset(preset)
    t, d, tok = cfg["transformer"], cfg["dvae"], cfg["tokenizer"]
    # text_vocab_size may be left out: the trained tokenizer's real vocabulary fills it in
    # (train/parts.py), since BPE on a small corpus can stop short of vocab_size
    assert t.get("text_vocab_size", tok["vocab_size"]) == tok["vocab_size"]
    assert t["text_len"] == tok["max_text_tokens"]
    assert t["codebook_size"] == d["codebook_size"]
    assert t["image_grid"] * d["downsample"] == d["image_size"] == cfg["data"]["size"]
    # derived, not written twice: the YAML leaves them to config.derive
    from model_code.config import load_yaml, preset_path
    with open(preset_path(preset)) as f:
        written = set((load_yaml(f) or {}).get("transformer") or {})
    assert not written & {"text_len", "image_grid", "codebook_size"}
    # and they follow an override of what they derive from
    moved = load_preset(preset, {"dvae": {"codebook_size": 64}, "tokenizer": {"max_text_tokens": 32}})["transformer"]
    assert (moved["codebook_size"], moved["text_len"]) == (64, 32)


def test_a_preset_may_give_the_transformer_fewer_text_tokens():
    """laptop: the tokenizer (and CLIP, the captioner, prior and decoder) read 96 caption tokens,
    the transformer 64 (its hour has no room for 1.2x steps): derive keeps the shorter length."""
    cfg = load_preset("laptop")
    assert cfg["tokenizer"]["max_text_tokens"] == 96 and cfg["transformer"]["text_len"] == 64
    assert load_preset("tiny")["transformer"]["text_len"] == 96
