"""Caption parser: the generator's captions parse into exactly the scene's facts, typical prompts
into the constraints they state, and scoring an image against a prompt checks each constraint."""
import random

import pytest

from model_code.data import shapes
from model_code.data.oracle import parse_image
from model_code.text.caption_parser import (Constraints, CountSpec, ObjectSpec, RelationSpec,
                                            caption_facts, fact_holds, parse_caption, score_caption,
                                            score_image)

N_SCENES = 500


@pytest.fixture(scope="module")
def scenes():
    rng = random.Random(0)
    return [(s, rng) for s in (shapes.sample_scene(rng, 64) for _ in range(N_SCENES))]


def test_long_and_curated_captions_state_exactly_the_scene_facts(scenes):
    rng = random.Random(1)
    for scene, _ in scenes:
        truth = shapes.facts(scene)
        for text in (shapes.long_caption(scene), shapes.curated_caption(scene, rng)):
            s = score_caption(text, scene)
            assert s["recall"] == 1.0 and s["hallucination"] == 0 and s["precision"] == 1.0, text
            assert caption_facts(text) == truth, text
            assert s["n_true"] == len(truth) == s["n_stated"]


def test_short_caption_is_truthful_but_incomplete_and_alt_text_much_worse(scenes):
    rng = random.Random(2)
    short, alt = [], []
    for scene, _ in scenes:
        short.append(score_caption(shapes.short_caption(scene), scene))
        alt.append(score_caption(shapes.alt_text(scene, rng), scene))
    assert all(s["hallucination"] == 0 and s["precision"] == 1.0 for s in short)
    assert all(s["recall"] < 1.0 for s in short)          # no sizes, cells or background
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert mean(alt, "recall") < 0.05
    assert mean(alt, "precision") < 0.5
    assert mean(alt, "hallucination") > 0.2               # wrong colours and counts are caught
    assert sum(r["n_stated"] == 0 for r in alt) > 0.3 * len(alt)  # file names, slogans


def test_score_image_of_the_generating_scene_satisfies_every_constraint(scenes):
    rng = random.Random(3)
    for scene, _ in scenes[:200]:
        for text in (shapes.long_caption(scene), shapes.curated_caption(scene, rng),
                     shapes.short_caption(scene)):
            c = parse_caption(text)
            r = score_image(scene, c)
            assert r["exact"] and r["fraction"] == 1.0, (text, r)
            assert r["n_constraints"] == len(c) > 0


def test_oracle_parse_of_the_rendered_image_satisfies_its_long_caption():
    rng = random.Random(4)
    for _ in range(10):
        scene = shapes.sample_scene(rng, 64)
        assert score_image(parse_image(shapes.render(scene)), shapes.long_caption(scene))["exact"]


O = ObjectSpec


@pytest.mark.parametrize("text, want", [
    ("a red circle and a blue square",
     Constraints(objects=[O("circle", "red"), O("square", "blue")])),
    ("three squares", Constraints(counts=[CountSpec(3, O("square"))])),
    ("a big green star to the left of a small yellow triangle",
     Constraints(objects=[O("star", "green", "large"), O("triangle", "yellow", "small")],
                 relations=[RelationSpec(O("star", "green", "large"), "left of",
                                         O("triangle", "yellow", "small"))])),
    ("two red crosses on a beige background",
     Constraints(counts=[CountSpec(2, O("cross", "red"))], backgrounds=["beige"])),
    ("a circle", Constraints(objects=[O("circle")])),
    ("Three shapes on a white background.", Constraints(counts=[CountSpec(3)], backgrounds=["white"])),
    ("A tiny disc in the upper-left corner",
     Constraints(objects=[O("circle", size="small", cell="top-left")])),
    ("a plus sign above two boxes",
     Constraints(objects=[O("cross")], counts=[CountSpec(2, O("square"))],
                 relations=[RelationSpec(O("cross"), "above", O("square"))])),
    ("In the middle there is a little black dot.",
     Constraints(objects=[O("circle", "black", "small", "center")])),
    ("A big star in red is at the top middle.", Constraints(objects=[O("star", "red", "large", "top")])),
    ("On a plain light blue background there are two shapes.",
     Constraints(counts=[CountSpec(2)], backgrounds=["light blue"])),
    ("the circle is on top of the square",
     Constraints(objects=[O("circle"), O("square")],
                 relations=[RelationSpec(O("circle"), "above", O("square"))])),
    ("a circle left of a square and below a triangle",
     Constraints(objects=[O("circle"), O("square"), O("triangle")],
                 relations=[RelationSpec(O("circle"), "left of", O("square")),
                            RelationSpec(O("circle"), "below", O("triangle"))])),
    # a colour naming something that is not a palette object or background is left out
    ("a white circle on a blue background", Constraints(objects=[O("circle")])),
    ("5 stars", Constraints(counts=[CountSpec(5, O("star"))])),
])
def test_typical_prompts(text, want):
    assert parse_caption(text) == want


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_every_synonym_and_cell_phrase(shape):
    for syn in shapes.SHAPE_SYNONYMS[shape]:
        for size, words in shapes.SIZE_SYNONYMS.items():
            for cell, phrases in shapes.CELL_PHRASES.items():
                for word, phrase in zip(words * 3, phrases):
                    c = parse_caption(f"A {word} purple {syn} {phrase}.")
                    assert c.objects == [O(shape, "purple", size, cell)], (word, syn, phrase)
                    c = parse_caption(f"{phrase.capitalize()} there is a {word} {syn} in purple.")
                    assert c.objects == [O(shape, "purple", size, cell)], (word, syn, phrase)
        plural = {"box": "boxes", "plus sign": "plus signs"}.get(syn, shapes.PLURALS.get(syn, syn + "s"))
        for n, word in shapes.NUMBER_WORDS.items():
            assert parse_caption(f"{word} orange {plural if n > 1 else syn}").counts == [
                CountSpec(n, O(shape, "orange"))]


def test_definite_references_resolve_to_earlier_objects():
    c = parse_caption("A large red circle in the top left and a small blue square at the bottom. "
                      "The red circle is above the blue square.")
    assert len(c.objects) == 2
    assert c.relations == [RelationSpec(O("circle", "red", "large", "top-left"), "above",
                                        O("square", "blue", "small", "bottom"))]
    # two red circles: "the red circle" is ambiguous and stays a description
    c = parse_caption("A red circle on the left and a red circle on the right. "
                      "The red circle is left of the red circle.")
    assert len(c.objects) == 2
    assert c.relations == [RelationSpec(O("circle", "red"), "left of", O("circle", "red"))]


def test_score_image_checks_each_kind_of_constraint():
    scene = shapes.scene_from_objects([
        {"shape": "circle", "color": "red", "size": "large", "cell": "top-left"},
        {"shape": "square", "color": "blue", "size": "small", "cell": "bottom-right"},
        {"shape": "square", "color": "green", "size": "small", "cell": "center"}],
        size=64, background="gray")

    def ok(text):
        return score_image(scene, text)["exact"]

    assert ok("a red circle") and ok("a big red circle") and not ok("a small red circle")
    assert not ok("a blue circle") and not ok("a red circle and a red circle")
    assert ok("two squares") and not ok("three squares") and ok("one blue square") and ok("three shapes")
    assert ok("a red circle above a blue square") and not ok("a red circle below a blue square")
    assert ok("a red circle to the left of and above a green square")
    assert not ok("a green square to the left of a red circle")
    assert ok("on a gray background") and not ok("on a white background")
    r = score_image(scene, "a red circle and a yellow star on a gray background")
    assert r["n_constraints"] == 3 and r["n_satisfied"] == 2 and not r["exact"]
    assert r["fraction"] == pytest.approx(2 / 3)
    assert [x["kind"] for x in r["results"]] == ["background", "object", "object"]
    assert [x["ok"] for x in r["results"]] == [True, True, False]
    assert score_image(scene, "") == {"results": [], "n_constraints": 0, "n_satisfied": 0,
                                      "fraction": 1.0, "exact": True, "invalid": None}


def test_partial_and_count_facts_are_judged():
    scene = shapes.scene_from_objects(
        [{"shape": "circle", "color": "red", "size": "small", "cell": "left"}], background="white")
    assert fact_holds(("object", None, "red", "circle"), scene)
    assert not fact_holds(("object", None, "blue", "circle"), scene)
    assert fact_holds(("count", 1, None, None, "circle", None), scene)
    assert not fact_holds(("count", 2, None, None, "circle", None), scene)
    s = score_caption("a blue circle on white", scene)   # a wrong colour, a right background
    assert s["n_stated"] == 2 and s["hallucination"] == 1 and s["precision"] == 0.5
    assert s["recall"] == pytest.approx(1 / 4)              # the background of 4 true facts
    assert score_caption("IMG_1234.jpg", scene) == {"precision": 0.0, "recall": 0.0, "hallucination": 0,
                                                    "n_stated": 0, "n_true": 4}
    with pytest.raises(ValueError, match="fact"):
        fact_holds(("colour", "red"), scene)


@pytest.mark.timeout(120)
def test_adversarial_text_never_raises():
    rng = random.Random(5)
    words = ["a", "the", "red", "circle", "in", "top", "left", "of", "above", "two", "shapes", "and",
             ".", "light", "blue", "background", "big", "plus", "sign", "7", "no"]
    junk = [
        "", " ", "...", "🙂ü漢字\u0000\ud7ff" * 1000, "\n\t" * 500, "a" * 100_000, "9" * 5000,
        "the the the of of", "left of above below", "in the in the top of the", "plus", "light",
        "IMG_1234.jpg DSC12345.JPG", "one", "circles circles" * 10,
        # 1 MB: one long sentence of domain words, and a caption repeated
        " ".join(rng.choice(words) for _ in range(220_000))[:1_000_000],
        ("A small red circle sits in the top left. The red circle is above the blue square. "
         * 12_000)[:1_000_000],
    ]
    scene = shapes.sample_scene(random.Random(0), 32)
    for text in junk:
        c = parse_caption(text)
        assert isinstance(c, Constraints)
        s = score_caption(text, scene)
        assert 0.0 <= s["precision"] <= 1.0 and 0.0 <= s["recall"] <= 1.0
        score_image(scene, c)
    assert len(parse_caption("")) == 0 and parse_caption("🙂 circle 🙂").objects == [O("circle")]


def test_non_string_is_a_value_error():
    with pytest.raises(ValueError, match="text"):
        parse_caption(None)
    with pytest.raises(ValueError, match="constraints"):
        score_image({"objects": []}, 42)


# ---------------------------------------------------------------- invalid scenes meet nothing
def _obj(shape, color, cell, size="small"):
    return {"shape": shape, "color": color, "cell": cell, "size": size}


def test_invalid_scenes_meet_no_constraint():
    from model_code.text.caption_parser import score_image
    many = {"background": "white", "objects": [_obj(s, c, cell) for s, c, cell in [
        ("circle", "red", "top-left"), ("square", "blue", "top"), ("star", "green", "top-right"),
        ("cross", "black", "left"), ("triangle", "yellow", "center")]]}
    same_cell = {"background": "white", "objects": [_obj("circle", "red", "left"), _obj("star", "blue", "left")]}
    blank = {"background": "white", "objects": []}
    for scene, reason in ((many, "5 objects"), (same_cell, "two objects in one cell"), (blank, "no object")):
        for prompt in ("a red circle", "a white background", "five shapes", "a red circle left of a blue square"):
            s = score_image(scene, prompt)
            assert s["invalid"].startswith(reason)
            assert not s["exact"] and s["n_satisfied"] == 0 and s["fraction"] == 0.0
    ok = {"background": "white", "objects": [_obj("circle", "red", "left")]}
    assert score_image(ok, "a red circle on a white background")["exact"]
    assert score_image(ok, "a red circle")["invalid"] is None


def test_noise_and_blank_images_score_nothing():
    """The oracle may read dozens of "objects" in noise; the judge scores such a parse as nothing."""
    import numpy as np
    from PIL import Image
    from model_code.data.oracle import parse_image
    from model_code.evaluate.metrics import score_images
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    blank = [Image.new("RGB", (32, 32), (248, 248, 248))]
    prompts = ["a red circle", "a blue square", "a white background", "a circle", "one shape"]
    for p in prompts:
        rows = score_images({"text": p}, noise + blank, parse=parse_image)
        assert all(r["exact"] == 0.0 and r["constraint"] == 0.0 and r["invalid"] for r in rows), \
            [(r["invalid"], r["failed"]) for r in rows]


def test_items_carry_their_spans_and_what_no_noun_phrase_took():
    """The serving rewriter names the words the grammar did not carry from these spans: a
    colour read as "in red", a background word, and cells and relations left without a noun phrase."""
    from model_code.text import caption_parser as cp
    t = cp._tokens("a big star in red at the top on a white background")
    items, dropped = cp.dropped_items(t)
    spans = {k: " ".join(t[s:e]) for k, _, s, e in items}
    assert spans == {"np": "star", "color": "in red", "cell": "at the top", "bg": "white background"}
    assert dropped == [] and items[0][1].color == "red" and items[0][1].cell == "top"
    t = cp._tokens("above a circle, then on the left")   # a relation with no subject; a cell taken
    items, dropped = cp.dropped_items(t)
    assert [items[k][0] for k in dropped] == ["rel"]
    t = cp._tokens("a circle. in the top left")           # a cell alone in its sentence
    assert [(items[k][0]) for items, d in [cp.dropped_items(t[3:])] for k in d] == ["cell"]
    # the parser's own reading is the same items without the spans
    t = cp._tokens("two red circles left of a blue square and above a triangle")
    assert [k for k, _ in cp._read_sentence(t)] == [k for k, _, _, _ in cp.read_items(t) if k not in ("color", "bgword")]
