"""synthesize(): the raw Shapes source on disk — layout, determinism, resume, bad arguments."""
import json
import os

import pytest
from PIL import Image

from model_code.data import shapes
from model_code.data.synth import curated_count, is_curated, shapes_item, synthesize


def read_rows(out):
    with open(os.path.join(out, "captions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def image_bytes(out):
    d = os.path.join(out, "images")
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


def test_layout_fields_and_curated_fraction(tmp_path):
    out = str(tmp_path / "raw")
    res = synthesize(out, n=40, size=32, seed=7, curated_fraction=0.1, workers=1)
    assert res == {"n": 40, "out": out, "curated": 4, "size": 32, "seed": 7, "rendered": 40}
    rows = read_rows(out)
    assert [r["key"] for r in rows] == [f"shapes-7-{i:07d}" for i in range(40)]
    assert sum(r["curated_caption"] is not None for r in rows) == 4
    for r in rows:
        assert set(r) == {"key", "file", "caption", "curated_caption", "scene", "license"}
        assert r["file"] == f"images/{r['key']}.png" and r["license"] == "CC0-1.0"
        assert r["caption"] and r["scene"]["size"] == 32
        img = Image.open(os.path.join(out, r["file"]))
        assert img.size == (32, 32) and img.mode == "RGB"
        # the image is the scene graph rendered: the file and the truth cannot drift apart
        assert img.tobytes() == shapes.render(r["scene"]).tobytes()
    curated = [r for r in rows if r["curated_caption"]]
    # a curated caption names every object's colour (the truth a human would write down)
    for r in curated:
        for o in r["scene"]["objects"]:
            assert o["color"] in r["curated_caption"]


def test_curated_count_is_exact_and_prefix_stable():
    for n, f in [(10, 0.25), (1000, 0.1), (7, 1.0), (5, 0.0), (1200, 0.25)]:
        assert sum(is_curated(i, f) for i in range(n)) == curated_count(n, f) == int(n * f)
    assert shapes_item(0, 5, 64, 0.1) == shapes_item(0, 5, 64, 0.1)  # pure function of (seed, i)


def test_deterministic_regardless_of_workers(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    synthesize(a, n=30, size=32, seed=1, curated_fraction=0.2, workers=1)
    synthesize(b, n=30, size=32, seed=1, curated_fraction=0.2, workers=2)
    assert read_rows(a) == read_rows(b)
    assert image_bytes(a) == image_bytes(b)
    c = str(tmp_path / "c")
    synthesize(c, n=10, size=32, seed=2, curated_fraction=0.2, workers=1)
    assert read_rows(c)[0]["scene"] != read_rows(a)[0]["scene"]  # the seed matters


def test_resume_renders_only_what_is_missing(tmp_path):
    out = str(tmp_path / "raw")
    synthesize(out, n=20, size=32, seed=0, workers=1)
    before = image_bytes(out)
    assert synthesize(out, n=20, size=32, seed=0, workers=1)["rendered"] == 0  # complete: untouched
    # a killed run: three images and captions.jsonl missing, a half-written temp file left
    for i in (0, 7, 19):
        os.remove(os.path.join(out, "images", f"shapes-0-{i:07d}.png"))
    os.remove(os.path.join(out, "captions.jsonl"))
    open(os.path.join(out, "images", "shapes-0-0000003.png.tmp123"), "wb").write(b"\x89PN")
    res = synthesize(out, n=20, size=32, seed=0, workers=2)
    assert res["rendered"] == 3
    assert image_bytes(out) == before and len(read_rows(out)) == 20


def test_refuses_to_mix_sources(tmp_path):
    out = str(tmp_path / "raw")
    synthesize(out, n=5, size=32, seed=0, workers=1)
    with pytest.raises(ValueError, match="not part of this source"):
        synthesize(out, n=5, size=32, seed=1, workers=1)
    with pytest.raises(ValueError, match="different source"):
        synthesize(out, n=5, size=64, seed=0, workers=1)
    with pytest.raises(ValueError, match="not part of this source"):
        synthesize(out, n=3, size=32, seed=0, workers=1)


@pytest.mark.parametrize("kw, field", [({"n": 0}, "n must"), ({"size": 4}, "size must"),
                                       ({"curated_fraction": 1.5}, "curated_fraction must")])
def test_bad_arguments_name_the_field(tmp_path, kw, field):
    with pytest.raises(ValueError, match=field):
        synthesize(str(tmp_path / "x"), **{"n": 3, "size": 32, **kw})


def test_parse_scene_reads_every_stored_form():
    import json
    import math
    from model_code.data.shapes import parse_scene
    scene = {"size": 32, "background": "white", "objects": []}
    assert parse_scene(scene) is scene
    assert parse_scene(json.dumps(scene)) == scene
    for missing in (None, "", "  ", math.nan, 3):
        assert parse_scene(missing) is None
