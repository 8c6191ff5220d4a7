"""The sample cache that lets a killed evaluation or table resume: what it keys on, what it gives
back, and what it does with a file cut short."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from model_code.evaluate.sample_cache import SampleCache, bundle_fingerprint
from model_code.generate import Generated


def _bundle(root) -> str:
    b = root / "bundle"
    (b / "clip").mkdir(parents=True)
    (b / "bundle.json").write_text('{"recipe": "dalle"}')
    (b / "clip" / "model.safetensors").write_bytes(b"weights")
    return str(b)


def _generated(seed: int) -> list[Generated]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in ("a red circle", "two blue stars"):
        ims = [Image.fromarray(torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")
               for _ in range(2)]
        out.append(Generated(p, ims, [0.5, 0.25], candidates=4, embeddings=torch.randn(2, 6, generator=g)))
    return out


def test_a_batch_is_drawn_once_and_given_back_whole(tmp_path):
    bundle = _bundle(tmp_path)
    calls = []

    def draw():
        calls.append(1)
        return _generated(0)

    key = {"texts": ["a red circle", "two blue stars"], "seed": 3}
    first = SampleCache(str(tmp_path / "samples"), bundle).generated(key, draw)
    again = SampleCache(str(tmp_path / "samples"), bundle)       # a new process: the resumed run
    back = again.generated(key, draw)
    assert len(calls) == 1 and again.hits == 1
    for a, b in zip(first, back):
        assert a.prompt == b.prompt and a.scores == b.scores and a.candidates == b.candidates == 4
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
        assert torch.equal(a.embeddings, b.embeddings)
    # another seed, other sampling settings: other batches, never the stored one
    again.generated({**key, "seed": 4}, draw)
    again.generated({**key, "sampling": {"temperature": 0.9}}, draw)
    assert len(calls) == 3
    assert not [f for f in os.listdir(tmp_path / "samples") if f.endswith(".part")]


def test_a_bundle_changed_in_place_is_a_new_key(tmp_path):
    bundle = _bundle(tmp_path)
    before = bundle_fingerprint(bundle)
    assert bundle_fingerprint(bundle) == before
    (tmp_path / "bundle" / "clip" / "model.safetensors").write_bytes(b"retrained weights")
    assert bundle_fingerprint(bundle) != before
    calls = []
    SampleCache(str(tmp_path / "s"), bundle).arrays({"k": 1}, lambda: calls.append(1) or {"x": np.zeros(2)})
    (tmp_path / "bundle" / "bundle.json").write_text('{"recipe": "dalle", "sampling": {}}')
    SampleCache(str(tmp_path / "s"), bundle).arrays({"k": 1}, lambda: calls.append(1) or {"x": np.zeros(2)})
    assert len(calls) == 2


def test_a_file_cut_short_is_drawn_again(tmp_path):
    bundle = _bundle(tmp_path)
    cache = SampleCache(str(tmp_path / "s"), bundle)
    cache.arrays({"k": 1}, lambda: {"x": np.arange(1000)})
    (path,) = [tmp_path / "s" / f for f in os.listdir(tmp_path / "s")]
    path.write_bytes(path.read_bytes()[:100])                      # the kill hit mid-write
    got = SampleCache(str(tmp_path / "s"), bundle).arrays({"k": 1}, lambda: {"x": np.arange(5)})
    assert got["x"].tolist() == [0, 1, 2, 3, 4]
    assert SampleCache(str(tmp_path / "s"), bundle).arrays({"k": 1}, lambda: {"x": np.arange(7)})["x"].size == 5
    cache.clear()
    assert not os.path.exists(tmp_path / "s")


def test_no_root_keeps_nothing(tmp_path):
    calls = []
    cache = SampleCache()
    for _ in range(2):
        cache.generated({"k": 1}, lambda: calls.append(1) or _generated(0))
    assert len(calls) == 2 and cache.hits == 0
    with pytest.raises(ValueError, match="bundle"):
        SampleCache(str(tmp_path / "s"))
