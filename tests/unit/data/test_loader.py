"""The training data loader (model_code.data.loader) and caption policies (model_code.text.blend)
on a real Shapes dataset written by synth + ingest."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from model_code.data import dataset as ds_mod
from model_code.data.loader import StepBatchSampler, epoch_permutation, make_dataset, make_loader
from model_code.text.blend import CaptionPolicy, tokenizer_texts, uniform


def shapes_data(base, n: int = 96, size: int = 32) -> str:
    """Synth + ingest a small Shapes dataset once per test session (shared by the train tests)."""
    from model_code.data.ingest import ingest
    from model_code.data.synth import synthesize
    root = os.path.join(str(base), f"easel-shapes-{n}-{size}")
    data = os.path.join(root, "data")
    if not os.path.exists(os.path.join(data, "dataset.json")):
        synthesize(os.path.join(root, "src"), n=n, size=size, seed=0, curated_fraction=0.25, workers=1)
        ingest(os.path.join(root, "src"), data, size=size, shard_size=40, heldout_fraction=0.1,
               progress=False, workers=1)
    return data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_data(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def stream(data):
    return make_dataset(data, caption_policy="blend", seed=0)


def _keys(loader):
    return [k for b in loader for k in b["key"]]


def test_batches_are_images_in_range_with_captions(data, stream):
    b = next(iter(make_loader(stream, 8, 2)))
    assert b["image"].shape == (8, 3, 32, 32) and b["image"].dtype == torch.float32
    assert -1.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0
    assert len(b["caption"]) == 8 and all(isinstance(c, str) and c for c in b["caption"])
    assert b["position"].tolist() == list(range(8))
    # the pixels are the stored PNG of that key, mapped to [-1, 1]
    key = b["key"][3]
    for k, img, _ in ds_mod.iter_records(data):
        if k == key:
            want = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1
            assert torch.equal(b["image"][3], want)
            break
    else:
        pytest.fail(f"key {key} not found in the shards")


def test_heldout_split_is_never_trained_on(data, stream):
    man = pd.read_parquet(os.path.join(data, "manifest.parquet"))
    heldout = set(man.loc[man["split"] == "heldout", "key"])
    assert heldout, "the fixture should hold out some records"
    seen = set(stream.index.keys.tolist())
    assert not seen & heldout and len(seen) == (man["split"] == "train").sum()


def test_each_epoch_is_a_fresh_full_permutation(stream):
    n = len(stream)
    epoch0 = [stream.record_at(p) for p in range(n)]
    epoch1 = [stream.record_at(p) for p in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1
    assert np.array_equal(epoch_permutation(n, 0, 1), epoch_permutation(n, 0, 1))
    assert not np.array_equal(epoch_permutation(n, 0, 1), epoch_permutation(n, 1, 1))


def test_same_seed_same_stream_other_seed_differs(data, stream):
    again = make_dataset(data, caption_policy="blend", seed=0)
    other = make_dataset(data, caption_policy="blend", seed=1)
    a, b, c = (_keys(make_loader(s, 8, 3)) for s in (stream, again, other))
    assert a == b and a != c


def test_resuming_at_a_step_continues_the_same_stream(stream):
    """The data a step reads depends only on the step: a loader started at batch k (a resumed
    run) yields exactly the tail of the uninterrupted loader, across an epoch boundary."""
    total = 30  # 30 batches of 8 = 240 samples, more than two epochs of 86
    full = list(make_loader(stream, 8, total))
    tail = list(make_loader(stream, 8, total, start_batch=17, start_sample=17 * 8))
    assert len(full) == total and len(tail) == total - 17
    for a, b in zip(full[17:], tail):
        assert a["key"] == b["key"] and a["caption"] == b["caption"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["position"], b["position"])


def test_ranks_read_disjoint_slices_of_one_stream():
    one = list(StepBatchSampler(4, 3, world_size=1))
    r0 = list(StepBatchSampler(2, 3, rank=0, world_size=2))
    r1 = list(StepBatchSampler(2, 3, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == one  # the global batch is the same
    # a resumed run with another world size continues at the samples already seen
    resumed = list(StepBatchSampler(4, 3, start_batch=1, start_sample=4))
    assert resumed == one[1:]
    assert len(StepBatchSampler(4, 10, start_batch=6)) == 10  # Lightning's view: the whole run
    with pytest.raises(ValueError, match="rank"):
        StepBatchSampler(4, 3, rank=2, world_size=2)


def test_decoded_cache_and_direct_reads_agree(data, stream):
    direct = make_dataset(data, caption_policy="blend", seed=0, cache="none")
    assert stream.pixels is not None and direct.pixels is None
    for p in (0, 5, 91, 200):
        a, b = stream[p], direct[p]
        assert a["key"] == b["key"] and a["caption"] == b["caption"]
        assert torch.equal(a["pixels"], b["pixels"])


def test_workers_give_the_same_batches(stream):
    single = _keys(make_loader(stream, 8, 4))
    multi = _keys(make_loader(stream, 8, 4, num_workers=2))
    assert single == multi


def test_blend_is_95_percent_synthetic_and_deterministic(stream):
    pol = CaptionPolicy("blend", seed=0)
    rec = {"key": "k", "caption": "IMG_0001.jpg", "curated_caption": "A red circle in the center."}
    caps = [pol.choose(rec, p) for p in range(4000)]
    frac = sum(c == rec["curated_caption"] for c in caps) / len(caps)
    assert 0.93 < frac < 0.97
    assert caps == [pol.choose(rec, p) for p in range(4000)]
    u = [uniform(0, p) for p in range(2000)]
    assert 0.45 < float(np.mean(u)) < 0.55 and min(u) >= 0 and max(u) < 1


def test_policies_and_their_fallbacks(data, stream):
    man = pd.read_parquet(os.path.join(data, "manifest.parquet"))
    curated = man[man["curated_caption"].notna()].iloc[0].to_dict()
    plain = man[man["curated_caption"].isna()].iloc[0].to_dict()
    from model_code.data import shapes
    assert CaptionPolicy("original").choose(plain, 0) == plain["caption"]
    # no sidecars: curated stands in for "long", else the scene graph's caption
    assert CaptionPolicy("long").choose(curated, 0) == curated["curated_caption"]
    assert CaptionPolicy("long").choose(plain, 0) == shapes.long_caption(json.loads(plain["scene"]))
    assert CaptionPolicy("short").choose(plain, 0) == shapes.short_caption(json.loads(plain["scene"]))
    # a real-world record with nothing to stand in is an error, not a silent original caption
    with pytest.raises(ValueError, match="'web-1'.*no long caption"):
        CaptionPolicy("long").choose({"key": "web-1", "caption": "a photo"}, 0)
    with pytest.raises(ValueError, match="caption_policy"):
        CaptionPolicy("longest")
    with pytest.raises(ValueError, match="synthetic_fraction"):
        CaptionPolicy("blend", synthetic_fraction=1.5)
    texts = tokenizer_texts([curated, plain])
    assert curated["caption"] in texts and curated["curated_caption"] in texts
    assert shapes.long_caption(json.loads(plain["scene"])) in texts


def test_curated_policy_keeps_only_curated_records(data):
    cur = make_dataset(data, caption_policy="curated", seed=0, with_scene=True)
    man = pd.read_parquet(os.path.join(data, "manifest.parquet"))
    want = man[(man["split"] == "train") & man["curated_caption"].notna()]
    assert sorted(cur.index.keys.tolist()) == sorted(want["key"])
    b = next(iter(make_loader(cur, 4, 1)))
    assert all(isinstance(s, dict) and s["objects"] for s in b["scene"])
    assert set(b["caption"]) <= set(want["curated_caption"])


def test_recaption_sidecars_drive_short_and_long(data, tmp_path):
    """A recaptioned dataset: its own dataset.json names the parent (whose shards hold the
    images) and captions/shard-*.parquet hold the synthetic captions; a missing one falls back
    to the original caption (the recaptioner's rule)."""
    man = pd.read_parquet(os.path.join(data, "manifest.parquet"))
    train = man[man["split"] == "train"]
    side = pd.DataFrame({"key": train["key"], "original": train["caption"],
                         "short": [f"short {k}" for k in train["key"]],
                         "long": [None if i == 0 else f"long {k}" for i, k in enumerate(train["key"])]})
    rec = tmp_path / "recap"
    (rec / "captions").mkdir(parents=True)
    side.to_parquet(rec / "captions" / "shard-00000.parquet")
    (rec / "dataset.json").write_text(json.dumps({"parent": data}))
    long = make_dataset(str(rec), caption_policy="long", seed=0)
    assert long.index.has_sidecars
    by_key = {}
    for p in range(len(long)):
        s = long[p]
        by_key[s["key"]] = s["caption"]
    first = train["key"].iloc[0]
    assert by_key[first] == train["caption"].iloc[0]        # null long -> the original
    assert all(by_key[k] == f"long {k}" for k in train["key"].iloc[1:])
    short = make_dataset(str(rec), caption_policy="short", seed=0)
    assert short[0]["caption"] == f"short {short[0]['key']}"
    bad = tmp_path / "bad"
    (bad / "captions").mkdir(parents=True)
    side.drop(columns=["short"]).to_parquet(bad / "captions" / "shard-00000.parquet")
    (bad / "dataset.json").write_text(json.dumps({"parent": data}))
    with pytest.raises(ValueError, match="lacks columns \\['short'\\]"):
        make_dataset(str(bad), caption_policy="long")


def test_a_recaptions_relative_parent_is_not_read_from_the_working_directory(data, tmp_path, monkeypatch):
    """A recaption written before parents were recorded absolute names its parent as the user typed
    it ("data", relative to a working directory nobody wrote down). Read from another directory that
    holds another "data", the records are still the parent's (its absolute shard_files say where),
    not the other directory's; a relative name with nothing better is read against the dataset's
    own directory, and a parent that is not there is a clear error."""
    name = os.path.basename(data)
    rec = tmp_path / "recap"
    rec.mkdir()
    (rec / "dataset.json").write_text(json.dumps({"parent": name, "shards_from": name,
                                                  "shard_files": ds_mod.shard_list(data)}))
    decoy = tmp_path / "elsewhere" / name                      # another dataset under the same name
    shutil.copytree(data, decoy)
    man = pd.read_parquet(decoy / "manifest.parquet")
    man.iloc[:5].to_parquet(decoy / "manifest.parquet")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert ds_mod.shards_root(str(rec)) == data
    assert len(make_dataset(str(rec), split=None).index.keys) == len(ds_mod.manifest(data))
    (rec / "dataset.json").write_text(json.dumps({"parent": os.path.relpath(data, rec)}))
    assert ds_mod.shards_root(str(rec)) == data                # relative to the dataset itself
    (rec / "dataset.json").write_text(json.dumps({"parent": name}))
    with pytest.raises(FileNotFoundError, match=f"parent dataset {rec / name} has no shards/"):
        ds_mod.shard_list(str(rec))


def test_bad_datasets_fail_with_a_clear_message(data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    man = pd.read_parquet(copy / "manifest.parquet")
    ghost = man.iloc[:1].copy()
    ghost["key"] = "not-in-any-shard"
    pd.concat([man, ghost]).to_parquet(copy / "manifest.parquet")
    with pytest.raises(ValueError, match="1 manifest keys have no image.*not-in-any-shard"):
        make_dataset(str(copy))
    with pytest.raises(ValueError, match="data.size is 64"):
        make_dataset(data, image_size=64)
    with pytest.raises(ValueError, match="cache"):
        make_dataset(data, cache="gpu")


def test_captions_are_tokenized_in_the_loader_workers(data):
    """make_loader(text=(tokenizer, L)) tokenizes each batch's captions in its worker processes,
    exactly as the training step would (same ids, mask and length), and a part's `_text` uses
    them only when they were made for its length."""
    from model_code.data.dataset import manifest
    from model_code.text.blend import tokenizer_texts
    from model_code.text.tokenizer import TextTokenizer
    from model_code.train.parts import Context, _text
    tok = TextTokenizer.train(tokenizer_texts(manifest(data).to_dict("records")), vocab_size=300, max_len=24)
    batches = list(make_loader(data, 8, 3, num_workers=2, text=(tok, 24), caption_policy="original", seed=0))
    assert len(batches) == 3
    for b in batches:
        ids, mask = tok.encode_batch(b["caption"], max_len=24)
        assert torch.equal(b["text_ids"], ids) and torch.equal(b["text_mask"], mask) and b["text_max_len"] == 24
    ctx = Context(deps={"tokenizer": tok}, model_config={}, train={})
    ids, mask = _text(ctx, batches[0], 24, "cpu")
    assert ids is batches[0]["text_ids"]                              # used as the loader made them
    ids16, _ = _text(ctx, batches[0], 16, "cpu")                      # another length: tokenized anew
    assert torch.equal(ids16, tok.encode_batch(batches[0]["caption"], max_len=16)[0])


def test_a_datasets_identity_is_read_in_one_place(data, tmp_path):
    """dataset.json's version and content ids, as training, tracking, recaption and the reuse
    checks read them: ingest's content hash first, a version id in any of its spellings, and
    nothing (not an error) for a bare manifest directory."""
    meta = ds_mod.read_meta(data)
    assert meta["content_hash"] and ds_mod.content_id(meta) == meta["content_hash"]
    stream = make_dataset(data)
    assert stream.index.version == ds_mod.version_id(meta) and stream.index.content_hash == meta["content_hash"]
    assert ds_mod.read_meta(str(tmp_path)) == {}
    assert ds_mod.version_id({}) is None and ds_mod.content_id({}) is None
    assert ds_mod.version_id({"version_id": "v1"}) == "v1" == ds_mod.content_id({"dataset_version": "v1"})
    assert ds_mod.content_id({"content_hash": "c", "version": "v"}) == "c"
