"""Metrics on inputs whose answer is known."""
import numpy as np
import pytest
import torch
from PIL import Image

from model_code.data import shapes
from model_code.evaluate import metrics as M
from model_code.evaluate.prompts import prompt_set
from tests.drawing import soft_ellipses


@pytest.fixture(scope="module")
def prompts():
    from model_code.evaluate.prompts import EASEL_CATEGORIES
    return prompt_set(2, seed=0, size=32, categories=EASEL_CATEGORIES)   # GenEval's: test_geneval.py


def test_ground_truth_images_follow_their_prompts_exactly(prompts):
    images = [[shapes.render(p["scene"])] for p in prompts]
    pf = M.prompt_following(prompts, images)
    assert pf["overall"] == {"exact": 1.0, "constraint": 1.0, "invalid": 0.0, "blob": 0.0}
    for cat, v in pf["per_category"].items():
        assert v["exact"] == 1.0 and v["constraint"] == 1.0 and v["images"] == 2, cat
    assert pf["per_category"]["spatial"]["relation_acc"] == 1.0
    assert pf["per_category"]["long"]["background_acc"] == 1.0


def test_blank_images_follow_nothing(prompts):
    blank = Image.new("RGB", (32, 32), shapes.BACKGROUNDS["white"])
    pf = M.prompt_following(prompts, [[blank, blank] for _ in prompts])
    # a long prompt's background may be white: that one constraint can hold, nothing else
    assert pf["overall"]["exact"] == 0.0
    for cat, v in pf["per_category"].items():
        assert v["exact"] == 0.0 and v.get("object_acc", 0.0) == 0.0 and v.get("count_acc", 0.0) == 0.0, cat
        if cat != "long":
            assert v["constraint"] == 0.0, cat


def test_partial_credit_per_constraint():
    # "a red circle and a blue square" with only the red circle drawn: half the constraints
    p = {"id": "x", "category": "color", "text": "a red circle and a blue square"}
    img = shapes.render(shapes.scene_from_objects(
        [{"shape": "circle", "color": "red", "size": "large", "cell": "left"}], 32))
    (row,) = M.score_images(p, [img])
    assert row["exact"] == 0.0 and row["constraint"] == 0.5 and row["failed"] == ["blue square"]
    with pytest.raises(ValueError, match="images"):
        M.prompt_following([p], [])


def test_objects_drawn_as_blobs_are_counted():
    """A soft elongated blob in the asked colour meets no shape, and the blob share says why."""
    img = soft_ellipses(32, "white", [("red", 16, 16, 8.5, 4.25, 0.0)])      # 2:1, in the centre
    star = shapes.render(shapes.scene_from_objects(
        [{"shape": "star", "color": "red", "size": "large", "cell": "center"}], 32))
    p = {"id": "x", "category": "color", "text": "a red star"}
    blob_row, star_row = M.score_images(p, [img, star])
    assert (blob_row["exact"], blob_row["objects"], blob_row["blobs"]) == (0.0, 1, 1)
    assert (star_row["exact"], star_row["objects"], star_row["blobs"]) == (1.0, 1, 0)
    pf = M.prompt_following([p], [[img, star]])
    assert pf["overall"]["blob"] == 0.5 and pf["per_category"]["color"]["blob"] == 0.5


def test_chance_following_scores_real_scenes_against_the_prompts(prompts):
    p = prompts[0]
    assert M.chance_following([p], [p["scene"]], samples=3)["overall"]["exact"] == 1.0
    unused = next(b for b in shapes.BACKGROUNDS if b not in {q["background"] for q in prompts})
    empty = {"size": 32, "background": unused, "objects": []}
    # an empty canvas is no Shapes scene: nothing it shows counts
    assert M.chance_following(prompts, [empty], samples=2)["overall"] == {"exact": 0.0, "constraint": 0.0,
                                                                         "invalid": 1.0}
    with pytest.raises(ValueError, match="scenes"):
        M.chance_following(prompts, [])


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 8))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # small n (fewer samples than dimensions, singular covariances) stays finite and real
    assert M.frechet_distance(a[:3], a[:3]) == pytest.approx(0.0, abs=1e-8)
    assert np.isfinite(M.frechet_distance(a[:1], a[1:2]))
    # two Gaussians with known parameters: |mu|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) = 8*1 + 8*(1 + 4 - 2*2) = 16
    big = rng.normal(size=(20000, 8))
    assert M.frechet_distance(big, 2 * rng.normal(size=(20000, 8)) + 1.0) == pytest.approx(16.0, rel=0.05)
    # agrees with the textbook formula through scipy's sqrtm where that one is well-posed
    from scipy.linalg import sqrtm
    b = rng.normal(0.5, 1.5, size=(300, 8))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="equal D"):
        M.frechet_distance(a, a[:, :4])
    with pytest.raises(ValueError, match="at least one"):
        M.frechet_distance(a[:0], a)


def test_diversity():
    e = np.tile(np.array([[1.0, 2.0, 3.0]]), (4, 1))
    assert M.diversity([e, e]) == 0.0                       # identical samples
    orth = np.eye(3)
    assert M.pairwise_distance(orth) == pytest.approx(1.0)   # orthogonal samples: 1 - 0
    assert M.diversity([e, orth]) == pytest.approx(0.5)
    assert M.diversity([e[:1]]) is None                      # one sample per prompt: undefined
    with pytest.raises(ValueError):
        M.pairwise_distance(e[:1])


def test_dvae_metrics_on_a_tiny_untrained_dvae():
    from model_code.config import load_preset
    from model_code.models.dvae import DVAE
    from model_code.train.parts import section
    torch.manual_seed(0)
    dvae = DVAE.from_config(section(load_preset("tiny"), "dvae")).eval()
    imgs = [shapes.render(p["scene"]) for p in prompt_set(1, seed=0, size=32)]
    m = M.dvae_metrics(dvae, imgs, batch_size=4)
    k = dvae.codebook_size
    assert 1.0 <= m["perplexity"] <= k and 0 <= m["dead_codes"] < k
    assert m["used_fraction"] == pytest.approx(1 - m["dead_codes"] / k)
    assert np.isfinite(m["psnr"]) and m["psnr"] > 0
    with pytest.raises(ValueError, match="at least one"):
        M.dvae_metrics(dvae, [])


def test_captioner_metrics_from_sidecars(tmp_path):
    import json

    import pandas as pd
    scenes = [p["scene"] for p in prompt_set(3, seed=0, size=32, categories=["long"])]
    pd.DataFrame([{"key": f"k{i}", "split": "heldout", "scene": json.dumps(s), "width": 32}
                  for i, s in enumerate(scenes)]).to_parquet(tmp_path / "manifest.parquet")
    (tmp_path / "shards").mkdir()
    assert M.captioner_metrics(str(tmp_path)) is None         # no sidecars: skipped
    (tmp_path / "captions").mkdir()
    pd.DataFrame([{"key": "k0", "original": "a.png", "short": shapes.short_caption(scenes[0]),
                   "long": shapes.long_caption(scenes[0]),
                   "short_fallback": False, "long_fallback": False},
                  {"key": "k1", "original": "IMG_1234.jpg", "short": "five purple crosses", "long": "IMG_1234.jpg",
                   "short_fallback": False, "long_fallback": True}]
                 ).to_parquet(tmp_path / "captions" / "shard-00000.parquet")
    m = M.captioner_metrics(str(tmp_path))
    assert m["long.fallback_rate"] == 0.5 and m["short.fallback_rate"] == 0.0
    assert m["long.recall"] == pytest.approx(1.0)            # the full caption, the only own long one
    assert m["long.hallucination"] == 0.0
    assert m["short.hallucination"] == 0.5                   # one false fact in one of two captions


def test_finite_drops_what_gates_cannot_read():
    assert M.finite({"a": 1, "b": float("nan"), "c": None, "d": True, "e": "x", "f": np.float32(2)}) == \
        {"a": 1.0, "f": 2.0}


def test_table_verdicts_respect_noise():
    from model_code.evaluate.tables import _verdict, paired, per_prompt_se
    assert _verdict(0.2, 0.05) == "agrees"
    assert _verdict(-0.2, 0.05) == "disagrees"
    assert _verdict(0.05, 0.05).startswith("within noise (difference +0.050, 2 SE = 0.100")
    assert _verdict(0.0, 0.0).startswith("within noise")
    rows = [{"prompt_id": i // 2, "constraint": float(i // 2 % 2)} for i in range(8)]   # 4 prompts: 0, 1, 0, 1
    assert per_prompt_se(rows) == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    # pairing by prompt: a constant gain on prompts of very different difficulty is certain
    better = [{"prompt_id": r["prompt_id"], "constraint": r["constraint"] * 0.5 + 0.25} for r in rows]
    diff, se = paired(better, [dict(r, constraint=r["constraint"] * 0.5) for r in rows])
    assert diff == pytest.approx(0.25) and se == pytest.approx(0.0)
    assert paired([0.3, 0.5], [0.1, 0.2]) == (pytest.approx(0.25), pytest.approx(0.05))
    # per-prompt values as numpy arrays, as the guidance table passes its diversity losses (it
    # failed on "the truth value of an array" once it had more than one prompt)
    assert paired(np.array([0.3, 0.5, 0.4]), np.array([0.1, 0.2, 0.3]))[0] == pytest.approx(0.2)


def test_best_of_groups_picks_the_best_in_each_disjoint_group():
    from model_code.evaluate.tables import best_of_groups
    scores = np.array([[0.1, 0.9, 0.5, 0.2, 0.3, 0.4],
                       [0.7, 0.1, 0.2, 0.8, 0.6, 0.0]])
    assert best_of_groups(scores, 1).tolist() == [list(range(6))] * 2       # N = 1: every candidate
    assert best_of_groups(scores, 2).tolist() == [[1, 2, 5], [0, 3, 4]]
    assert best_of_groups(scores, 4).tolist() == [[1], [3]]                  # a ragged tail is left out
    assert best_of_groups(scores, 6).tolist() == [[1], [3]]
    with pytest.raises(ValueError, match="best-of-7"):
        best_of_groups(scores, 7)
