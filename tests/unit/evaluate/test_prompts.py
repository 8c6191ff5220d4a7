"""Prompt sets: well-formed per category, deterministic, and held out from a dataset's training scenes."""
import json
import random

import pandas as pd
import pytest

from model_code.data import shapes
from model_code.evaluate import prompts as P
from model_code.text.caption_parser import parse_caption, score_image


def test_every_category_is_well_formed():
    ps = P.prompt_set(6, seed=0, size=32, categories=P.CATEGORIES)
    cats = P.by_category(ps)
    assert list(cats) == list(P.CATEGORIES)
    for cat, group in cats.items():
        n = len(shapes.SHAPES) if cat == "single_object" else 6   # GenEval: every class once
        assert len(group) == n and len({p["text"] for p in group}) == n, cat
        for p in group:
            c = parse_caption(p["text"])
            assert p["constraints"] == c.to_dict()
            assert len(c) > 0, p["text"]
            # the witness scene is exactly what the prompt describes and satisfies it
            assert len(p["scene"]["objects"]) == len(p["objects"])
            assert score_image(p["scene"], c)["exact"], p["text"]
            assert P.describes_scene(p, p["scene"])
    for p in cats["color"] + cats["size"] + cats["spatial"]:
        a, b = p["objects"]
        assert a["color"] != b["color"] and a["shape"] != b["shape"]   # a binding test, not a tautology
    for p in cats["size"]:
        assert {o["size"] for o in p["objects"]} == {"small", "large"} and " big " in f" {p['text']} "
    for p in cats["spatial"]:
        assert len(parse_caption(p["text"]).relations) == 1
    for p in cats["count"]:
        (cnt,) = parse_caption(p["text"]).counts
        assert 1 <= cnt.n <= 4 and cnt.n == len(p["objects"])
    for p in cats["long"]:
        c = parse_caption(p["text"])
        assert len(p["objects"]) >= 3 and c.background == p["background"]
        assert all(o.cell and o.size and o.color for o in c.objects)


def test_deterministic_by_seed_and_category_streams_independent():
    a = P.prompt_set(4, seed=3, size=32, categories=P.CATEGORIES)
    assert a == P.prompt_set(4, seed=3, size=32, categories=P.CATEGORIES)
    assert [p["text"] for p in a] != [p["text"] for p in P.prompt_set(4, seed=4, size=32, categories=P.CATEGORIES)]
    only_count = P.prompt_set(4, seed=3, categories=["count"], size=32)
    assert [p["text"] for p in only_count] == [p["text"] for p in a if p["category"] == "count"]


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="n_per_category"):
        P.prompt_set(0)
    with pytest.raises(ValueError, match="categories"):
        P.prompt_set(2, categories=["colour"])


def _dataset(tmp_path, train_scenes, heldout_scenes=()):
    """A minimal ingested dataset: manifest.parquet with the columns heldout_prompts reads."""
    rows = [{"key": f"k{i}", "split": split, "scene": json.dumps(s), "width": 32}
            for i, (split, s) in enumerate([("train", s) for s in train_scenes] +
                                           [("heldout", s) for s in heldout_scenes])]
    pd.DataFrame(rows).to_parquet(tmp_path / "manifest.parquet")
    (tmp_path / "shards").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"content_hash": "abc"}))
    return str(tmp_path)


def test_heldout_excludes_prompts_that_describe_a_training_scene(tmp_path):
    free = P.prompt_set(5, seed=0, size=32, categories=P.EASEL_CATEGORIES)
    # training data that contains exactly the witness scenes of the first two prompts of each
    # category (in other cells, sizes, backgrounds where the prompt leaves them open)
    rng = random.Random(1)
    train = []
    for cat, group in P.by_category(free).items():
        for p in group[:2]:
            objs = [dict(o) for o in p["scene"]["objects"]]
            if cat != "spatial" and cat != "long":  # the prompt leaves cells open: move the objects
                for o, cell in zip(objs, rng.sample(shapes.CELLS, len(objs))):
                    o["cell"] = cell
            train.append(shapes.scene_from_objects(objs, 32, p["scene"]["background"]))
    # and a scene that matches a colour prompt plus one more object: not a complete description
    extra = P.by_category(free)["color"][2]
    objs = [dict(o) for o in extra["scene"]["objects"]]
    free_cell = next(c for c in shapes.CELLS if c not in {o["cell"] for o in objs})
    objs.append({"shape": "star", "color": "black", "size": "small", "cell": free_cell})
    train.append(shapes.scene_from_objects(objs, 32))
    ds = _dataset(tmp_path, train, heldout_scenes=[free[0]["scene"]])

    held = P.heldout_prompts(ds, 5, seed=0, categories=P.EASEL_CATEGORIES)
    texts = {p["text"] for p in held}
    for cat, group in P.by_category(free).items():
        for p in group[:2]:
            assert p["text"] not in texts, (cat, p["text"])       # seen in training: excluded
        for p in group[2:]:
            assert p["text"] in texts, (cat, p["text"])           # unseen: kept, in the same order
    assert extra["text"] in texts
    assert all(len(v) == 5 for v in P.by_category(held).values())
    ps, meta = P.read_prompts(str(tmp_path / "prompts.json"))     # written beside the manifest
    assert ps == held and meta["training_scenes"] == len(train)
    assert meta["per_category"]["color"]["excluded"] == 2 and meta["dataset_content_hash"] == "abc"


def test_heldout_records_a_shortfall_when_a_category_runs_out(tmp_path):
    # training shows every "N <colour> <shape>s" scene (N = 1..4): no count prompt can be held
    # out; every one-object scene is among them, so one-object short prompts go too
    train = [shapes.scene_from_objects([{"shape": s, "color": c, "size": "small", "cell": cell}
                                        for cell in shapes.CELLS[:n]], 32)
             for s in shapes.SHAPES for c in shapes.COLORS for n in range(1, 5)]
    ds = _dataset(tmp_path, train)
    held = P.heldout_prompts(ds, 8, seed=0, categories=["short", "count"], out=str(tmp_path / "p.json"))
    assert [p["category"] for p in held] == ["short"] * 8
    assert all(len(p["objects"]) > 1 for p in held)
    _, meta = P.read_prompts(str(tmp_path / "p.json"))
    assert meta["per_category"]["count"]["found"] == 0 and meta["per_category"]["count"]["exhausted"]
    assert meta["per_category"]["short"]["excluded"] > 0 and not meta["per_category"]["short"]["exhausted"]


def test_read_prompts_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"prompts": [{"text": "a"}]}))
    with pytest.raises(ValueError, match="not an Easel prompt set"):
        P.read_prompts(str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match="dataset_dir"):
        (tmp_path / "shards").mkdir()
        pd.DataFrame([{"key": "a", "width": 32}]).to_parquet(tmp_path / "manifest.parquet")
        P.heldout_prompts(str(tmp_path), 2)
