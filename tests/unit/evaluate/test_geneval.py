"""Shapes-GenEval: GenEval's six tasks and rules, judged on scene graphs and on oracle parses."""
import random

import pytest

from model_code.data import shapes
from model_code.data.oracle import parse_image
from model_code.evaluate import geneval
from model_code.evaluate.metrics import prompt_following
from model_code.evaluate.prompts import make_prompt, prompt_set


def obj(shape, color, cell, size="small", S=64):
    s = shapes.scene_from_objects([{"shape": shape, "color": color, "size": size, "cell": cell}], size=S)
    return s["objects"][0]


def scene(*objs, bg="white"):
    return {"size": 64, "background": bg, "objects": list(objs)}


@pytest.mark.parametrize("task", geneval.TASKS)
def test_witness_scenes_and_their_renders_are_correct(task):
    rng = random.Random(0)
    for i in range(15):
        p = make_prompt(task, rng, size=64, index=i)
        assert p["category"] == task and "geneval" in p
        ok, why = geneval.judge(p["scene"], p["geneval"])
        assert ok, (p["text"], why)
        ok, why = geneval.judge(parse_image(shapes.render(p["scene"])), p["geneval"])
        assert ok, (p["text"], why)


def meta(text):
    """GenEval's metadata for the templates used below, written out as GenEval writes it."""
    inc = lambda cls, n=1, **kw: {"class": cls, "count": n, **kw}   # noqa: E731
    table = {
        "a circle": [inc("circle")],
        "a red circle": [inc("circle", color="red")],
        "three stars": ([inc("star", 3)], [inc("star", 4)]),
        "a circle left of a star": [inc("star"), inc("circle", position=["left of", 0])],
        "a circle right of a star": [inc("star"), inc("circle", position=["right of", 0])],
        "a circle above a star": [inc("star"), inc("circle", position=["above", 0])],
        "a red circle and a blue star": [inc("circle", color="red"), inc("star", color="blue")],
    }
    t = table[text]
    include, exclude = t if isinstance(t, tuple) else (t, [])
    return {"include": include, "exclude": exclude}


def test_templates_match_genevals_metadata():
    rng = random.Random(3)
    for _ in range(200):
        for task in geneval.TASKS:
            g = geneval.make(task, rng)
            if g["text"] in ("a circle", "a red circle", "three stars", "a circle left of a star",
                             "a red circle and a blue star"):
                assert {"include": g["include"], "exclude": g["exclude"]} == meta(g["text"])


def test_the_rules():
    red_circle, blue_star = obj("circle", "red", "left"), obj("star", "blue", "right")
    assert geneval.judge(scene(red_circle), meta("a circle"))[0]
    assert geneval.judge(scene(red_circle, blue_star), meta("a circle"))[0]   # GenEval: >= 1
    assert not geneval.judge(scene(blue_star), meta("a circle"))[0]
    # colours
    assert geneval.judge(scene(red_circle), meta("a red circle"))[0]
    ok, why = geneval.judge(scene(obj("circle", "green", "left")), meta("a red circle"))
    assert not ok and "expected red circle" in why
    # counting: exactly, through include >= n and exclude >= n + 1
    three = [obj("star", "red", c) for c in ("left", "center", "right")]
    assert geneval.judge(scene(*three), meta("three stars"))[0]
    assert not geneval.judge(scene(*three[:2]), meta("three stars"))[0]
    ok, why = geneval.judge(scene(*three, obj("star", "red", "top")), meta("three stars"))
    assert not ok and "expected star<4" in why
    # position, by GenEval's box test
    assert geneval.judge(scene(red_circle, blue_star), meta("a circle left of a star"))[0]
    assert not geneval.judge(scene(red_circle, blue_star), meta("a circle right of a star"))[0]
    above = scene(obj("circle", "red", "top"), obj("star", "blue", "bottom"))
    assert geneval.judge(above, meta("a circle above a star"))[0]
    assert not geneval.judge(above, meta("a circle left of a star"))[0]
    # colour attribution: swapped colours fail
    ca = meta("a red circle and a blue star")
    assert geneval.judge(scene(red_circle, blue_star), ca)[0]
    assert not geneval.judge(scene(obj("circle", "blue", "left"), obj("star", "red", "right")), ca)[0]


def test_invalid_scenes_are_wrong_whatever_they_show():
    objs = [obj(s, "red", c) for s, c in zip(shapes.SHAPES, ("top-left", "top", "top-right", "left", "center"))]
    ok, why = geneval.judge(scene(*objs), meta("a circle"))
    assert not ok and why.startswith("not a Shapes scene: 5 objects")
    ok, why = geneval.judge(scene(), meta("a circle"))
    assert not ok and "no object" in why


def test_relative_position_is_genevals():
    a, b = obj("circle", "red", "left"), obj("star", "blue", "right")
    assert geneval.relative_position(a, b) == {"left of"}
    assert geneval.relative_position(b, a) == {"right of"}
    assert geneval.relative_position(a, dict(a)) == set()            # same place: no relation
    diag = geneval.relative_position(obj("circle", "red", "top-left"), obj("star", "blue", "bottom-right"))
    assert diag == {"left of", "above"}


def test_overall_is_the_mean_of_six_and_seen_is_reported_apart():
    ps = prompt_set(3, seed=1, categories=geneval.TASKS)
    for i, p in enumerate(ps):
        p["seen"] = i % 2 == 0
    imgs = [[shapes.render(p["scene"])] for p in ps]
    pf = prompt_following(ps, imgs)
    assert pf["overall"]["geneval"] == pytest.approx(1.0)
    per = pf["per_category"]
    assert set(per) == set(geneval.TASKS)
    assert all(v["exact_seen"] == 1.0 and v["exact_heldout"] == 1.0 for v in per.values())
    blank = [[shapes.render({"size": 64, "background": "white", "objects": []})] for _ in ps]
    assert prompt_following(ps, blank)["overall"]["geneval"] == 0.0
    assert geneval.overall({"single_object": 1.0}) is None
