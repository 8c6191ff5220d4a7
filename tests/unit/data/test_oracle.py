"""The Shapes-world oracle: exact on rendered images, graceful on degraded and garbage ones.

Exact-match rates are measured on seeded random scenes: clean renders at 32, 64 and 256 px, and
Gaussian blur (sigma 0.8 px) + JPEG quality 75 at 64 px. tests/benchmarks/bench_oracle.py measures
more scenes and all sizes (docs/benchmarks.md).
"""
import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from model_code.data import shapes
from model_code.data.oracle import BLOB, match_objects, parse_image, scene_match
from model_code.recaption.captioner import OracleCaptioner
from tests.drawing import soft_ellipses

N_SCENES = 300


def blur_jpeg(img: Image.Image) -> Image.Image:
    """The issue's degradation: Gaussian blur sigma 0.8, then JPEG q=75 and back."""
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def match_rate(size: int, n: int, degrade=None, seed: int = 0) -> tuple[float, list]:
    rng = random.Random(seed)
    ok, misses = 0, []
    for _ in range(n):
        scene = shapes.sample_scene(rng, size)
        img = shapes.render(scene)
        pred = parse_image(degrade(img) if degrade else img)
        if scene_match(pred, scene):
            ok += 1
        else:
            misses.append((scene, pred))
    return ok / n, misses


@pytest.mark.parametrize("size", [32, 64, 256])
def test_exact_scene_match_on_rendered_images(size):
    rate, misses = match_rate(size, N_SCENES, seed=size)
    assert rate >= 0.995, (rate, misses[:2])


def test_exact_scene_match_after_blur_and_jpeg_at_64px():
    rate, misses = match_rate(64, N_SCENES, degrade=blur_jpeg, seed=1)
    assert rate >= 0.95, (rate, misses[:2])


def test_parse_recovers_the_generators_geometry():
    rng = random.Random(5)
    d_centre, d_extent = [], []
    for _ in range(25):
        scene = shapes.sample_scene(rng, 64)
        pred = parse_image(shapes.render(scene))
        assert pred["size"] == 64 and pred["background"] == scene["background"]
        by_cell = {o["cell"]: o for o in pred["objects"]}
        for o in scene["objects"]:
            p = by_cell[o["cell"]]
            assert set(p) >= {"shape", "color", "size", "cell", "cx", "cy", "extent"}
            assert isinstance(p["cx"], float) and p["fit"] > 0.93
            d_centre.append(max(abs(p["cx"] - o["cx"]), abs(p["cy"] - o["cy"])))
            d_extent.append(abs(p["extent"] / o["extent"] - 1))
    # sub-pixel centres and extents within a few percent (objects clipped by the canvas edge are
    # the least determined: their hidden side is unseen)
    assert max(d_centre) < 1.0 and np.median(d_centre) < 0.15
    assert max(d_extent) < 0.08 and np.median(d_extent) < 0.02


def _adjacent_scene(S: int, shape: str) -> dict:
    """Four same-colour large shapes as close as the sampler allows (bounding boxes 0.03 S apart):
    after blur the left, centre and top ones touch."""
    e, gap, c = 0.30 * S, 0.03 * S, S / 2
    where = {"center": (c, c), "left": (c - e - gap, c), "top": (c, c - e - gap),
             "bottom-right": (c + e + gap, c + e + gap)}
    return {"size": S, "background": "white",
            "objects": [{"shape": shape, "color": "blue", "size": "large", "cell": cell,
                         "cx": x, "cy": y, "extent": e} for cell, (x, y) in where.items()]}


@pytest.mark.parametrize("S", [32, 64])
@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_touching_same_colour_neighbours_are_split(S, shape):
    scene = _adjacent_scene(S, shape)
    img = shapes.render(scene)
    for degraded in (img, img.filter(ImageFilter.GaussianBlur(0.8)), blur_jpeg(img)):
        pred = parse_image(degraded)
        assert scene_match(pred, scene), [(o["shape"], o["cell"]) for o in pred["objects"]]


@pytest.mark.parametrize("bg", list(shapes.BACKGROUNDS))
def test_blank_canvas_has_background_and_no_objects(bg):
    img = Image.new("RGB", (64, 64), shapes.BACKGROUNDS[bg])
    assert parse_image(img) == {"size": 64, "background": bg, "objects": []}


def test_additive_noise_degrades_gracefully():
    rng, nrng = random.Random(7), np.random.default_rng(0)
    ok = 0
    for _ in range(40):
        scene = shapes.sample_scene(rng, 64)
        a = np.asarray(shapes.render(scene), np.float32) + nrng.normal(0, 15, (64, 64, 3))
        ok += scene_match(parse_image(np.clip(a, 0, 255).astype(np.uint8)), scene)
    assert ok >= 38


def test_garbage_images_never_raise():
    r = np.random.default_rng(0)
    stripes = np.tile((np.arange(64) % 2 * 255).astype(np.uint8)[:, None, None], (1, 64, 3))
    cases = [r.integers(0, 256, (64, 64, 3), dtype=np.uint8),
             r.integers(0, 256, (256, 256, 3), dtype=np.uint8),
             stripes, np.zeros((64, 64, 3), np.uint8), np.full((32, 32, 3), np.nan, np.float32),
             np.zeros((1, 1, 3), np.uint8), r.integers(0, 256, (5, 5, 3), dtype=np.uint8),
             r.integers(0, 256, (37, 91, 3), dtype=np.uint8), Image.new("L", (48, 48), 3),
             Image.new("RGBA", (40, 40), (1, 2, 3, 0)), Image.new("P", (33, 33))]
    for img in cases:
        out = parse_image(img)
        assert isinstance(out["objects"], list) and out["background"] in shapes.BACKGROUNDS
    # pure noise is not a picture of shapes: every blob fits no shape and is dropped
    assert parse_image(cases[0])["objects"] == [] and parse_image(cases[1])["objects"] == []


def soft_ellipse(rng: random.Random, S: int, aspect: float, sigma: float) -> tuple[Image.Image, str]:
    """A blob drawer's object: an ellipse of the world's colours, of a size between the world's
    two, at any angle, anti-aliased like shapes.render and blurred."""
    bg, col = rng.choice(list(shapes.BACKGROUNDS)), rng.choice(list(shapes.COLORS))
    area = math.pi / 4 * (rng.uniform(0.20, 0.27) * S) ** 2          # small 0.18 S, large 0.30 S
    a, th = math.sqrt(area * aspect / math.pi), rng.uniform(0, math.pi)
    b, cx, cy = a / aspect, rng.uniform(0.3, 0.7) * S, rng.uniform(0.3, 0.7) * S
    return soft_ellipses(S, bg, [(col, cx, cy, a, b, th)], sigma), col


@pytest.mark.parametrize("aspect,shape", [(1.0, "circle"), (1.7, BLOB), (2.4, BLOB)])
def test_a_soft_blob_is_no_star(aspect, shape):
    """A judge that names the best-fitting world shape for every blob reads stars, squares and
    crosses into a generator's soft blobs and scores a blob drawer near a quarter on "the asked
    shape" (docs/results.md, session 19). An elongated blob has no shape; a round one is a circle,
    whatever its size. Both are still objects of their colour."""
    rng = random.Random(0)
    for _ in range(12):
        img, col = soft_ellipse(rng, 32, aspect, rng.choice((0.8, 1.2)))
        objs = parse_image(img)["objects"]
        assert [(o["shape"], o["color"]) for o in objs] == [(shape, col)]
    blob_scene = parse_image(soft_ellipse(rng, 32, 2.0, 1.0)[0])
    assert shapes.invalid_reason(blob_scene) is None                # an object, in one cell
    truth = {**blob_scene, "objects": [{**blob_scene["objects"][0], "shape": "star"}]}
    assert not scene_match(blob_scene, truth)                       # ...that is no star
    # the oracle captioner has no words for it: no caption, so recaptioning keeps the original
    assert OracleCaptioner().caption([soft_ellipse(rng, 32, 2.0, 1.0)[0]]) == [""]


def test_an_outline_no_shape_explains_is_a_blob():
    """A blurred L (no world shape, no ellipse either) is an object of no shape, not the least bad
    world shape."""
    im = Image.new("RGB", (128, 128), shapes.BACKGROUNDS["white"])
    d = ImageDraw.Draw(im)
    d.rectangle((30, 30, 50, 100), fill=shapes.COLORS["blue"])
    d.rectangle((30, 80, 100, 100), fill=shapes.COLORS["blue"])
    img = im.resize((32, 32), Image.BOX).filter(ImageFilter.GaussianBlur(0.8))
    assert [(o["shape"], o["color"]) for o in parse_image(img)["objects"]] == [(BLOB, "blue")]


def test_blurred_shapes_are_still_shapes_at_32px():
    """The blob rule must not take honestly blurred renders: at 32 px with blur up to sigma 1 and
    JPEG, nearly every object keeps its shape (bench_oracle.py measures 2000 scenes)."""
    rng, objs, blobs, ok = random.Random(1), 0, 0, 0
    for _ in range(60):
        scene = shapes.sample_scene(rng, 32)
        img = shapes.render(scene).filter(ImageFilter.GaussianBlur(rng.choice((0.6, 1.0))))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=75)
        pred = parse_image(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        objs += len(pred["objects"])
        blobs += sum(o["shape"] == BLOB for o in pred["objects"])
        ok += scene_match(pred, scene)
    assert blobs <= 0.02 * objs and ok >= 54


def test_array_and_tensor_inputs_agree_with_pil():
    scene = shapes.sample_scene(random.Random(3), 64)
    img = shapes.render(scene)
    a = np.asarray(img)
    want = parse_image(img)
    assert scene_match(want, scene)
    t = torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 127.5 - 1.0   # (3, H, W) in [-1, 1]
    for x in (a, a.astype(np.float32) / 255.0, t, t[None], np.moveaxis(a, -1, 0)):
        assert scene_match(parse_image(x), scene)


def test_other_canvas_sizes_and_non_square():
    rng = random.Random(11)
    for S in (48, 100, 512):
        scene = shapes.sample_scene(rng, S)
        pred = parse_image(shapes.render(scene))
        assert pred["size"] == S and scene_match(pred, scene), S
    # a non-square image is resampled to a square and still parsed
    wide = shapes.render(shapes.sample_scene(rng, 64)).resize((80, 64))
    assert parse_image(wide)["size"] == 80


@pytest.mark.parametrize("bad", [None, "an image", np.zeros((2, 2, 2, 2, 2)), np.zeros((0, 0, 3)),
                                 np.zeros((4, 4, 7, 7))])
def test_not_an_image_is_a_value_error_naming_img(bad):
    with pytest.raises(ValueError, match="img"):
        parse_image(bad)


def test_scene_match_and_match_objects():
    truth = {"background": "white", "objects": [
        {"shape": "circle", "color": "red", "size": "large", "cell": "top-left"},
        {"shape": "square", "color": "blue", "size": "small", "cell": "center"},
        {"shape": "star", "color": "green", "size": "small", "cell": "bottom"}]}
    pred = {"background": "white", "objects": [dict(o) for o in reversed(truth["objects"])]}
    assert scene_match(pred, truth)                      # order does not matter
    pred["objects"][0]["shape"] = "cross"                # the star (bottom) read as a cross
    pred["objects"].append({"shape": "dot", "color": "black", "size": "small", "cell": "right"})
    del pred["objects"][1]                               # the blue square missed
    assert not scene_match(pred, truth)
    m = match_objects(pred, truth)
    pairs = {p["truth"]: p for p in m["pairs"]}
    assert pairs[0]["exact"] and not pairs[2]["exact"]
    assert pairs[2]["cell"] and pairs[2]["color"] and not pairs[2]["shape"]
    assert m["missing"] == [1] and len(m["extra"]) == 1
    assert m["object_accuracy"] == pytest.approx(1 / 3)
    assert not scene_match({**truth, "background": "gray"}, truth)
    # a duplicate object is a different multiset
    dup = {"background": "white", "objects": truth["objects"] + truth["objects"][:1]}
    assert not scene_match(dup, truth)
