"""ingest(): hostile inputs, real photos, every source kind, dedup, resume after a kill,
determinism, s3:// both ways. The balance input = accepted + quarantined + duplicates is
checked on every output."""
import io
import json
import os
import signal
import subprocess
import sys
import re
import tarfile
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from model_code import storage
from model_code.data import ingest as ingest_mod
from model_code.data.ingest import MANIFEST_COLUMNS, ingest, split_of
from model_code.data.synth import synthesize
from tests.unit.data import hostile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def tables(out):
    return tuple(pd.read_parquet(os.path.join(out, f"{n}.parquet"))
                 for n in ("manifest", "quarantine", "duplicates"))


def shard_members(out):
    """{key: (png bytes, json dict)} over all shards, via tarfile."""
    got = {}
    for name in sorted(os.listdir(os.path.join(out, "shards"))):
        with tarfile.open(os.path.join(out, "shards", name)) as t:
            for m in t:
                key, ext = m.name.rsplit(".", 1)
                got.setdefault(key, {})[ext] = t.extractfile(m).read()
    return {k: (v["png"], json.loads(v["json"])) for k, v in got.items()}


def check_balance(res, out):
    man, quar, dup = tables(out)
    assert res["input"] == res["accepted"] + res["quarantined"] + res["duplicates"]
    assert (len(man), len(quar), len(dup)) == (res["accepted"], res["quarantined"], res["duplicates"])
    meta = json.load(open(os.path.join(out, "dataset.json")))
    assert meta["input"] == res["input"] and meta["balance"] == "input = accepted + quarantined + duplicates"
    assert not os.path.exists(os.path.join(out, "_parts"))
    keys = list(man.key) + list(quar.key) + list(dup.key)
    assert len(keys) == len(set(keys)) == res["input"]  # every record in exactly one table
    assert set(dup.kept_key) <= set(man.key)
    return man, quar, dup


# ---------------------------------------------------------------- hostile corpus
def test_hostile_corpus(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    corpus = hostile.build_hostile_corpus(src)
    res = ingest(src, out, size=64, workers=2, progress=False)
    man, quar, dup = check_balance(res, out)
    got = {k: ("accepted", None) for k in man.key}
    got.update({k: ("quarantined", r) for k, r in zip(quar.key, quar.reason)})
    got.update({k: ("duplicate", r) for k, r in zip(dup.key, dup.kind)})
    assert got == corpus["expect"]
    assert len({r for o, r in corpus["expect"].values() if o == "quarantined"}) >= 14  # distinct reasons
    assert all(d for d in quar.detail)  # every quarantine says why in detail
    assert set(dup.kept_key) == {"01_good_rgb"}

    rows = man.set_index("key")
    px = {k: np.asarray(Image.open(io.BytesIO(png))) for k, (png, _) in shard_members(out).items()}
    assert all(a.shape == (64, 64, 3) for a in px.values())
    ref = np.asarray(ImageOps.fit(hostile.smooth_image(2, 72, 72), (64, 64), Image.LANCZOS), dtype=float)
    assert np.abs(px["02_cmyk"] - ref).mean() < 8  # CMYK JPEG -> the colours it was made from
    assert rows.loc["02_cmyk", "orig_mode"] == "CMYK"
    g = px["03_gray16"][..., 0].astype(int)  # 16-bit ramp scaled to 8 bits, not clipped at 255
    assert g[0, 0] < 5 and g[-1, -1] > 250 and 100 < g[32, 32] < 160
    assert tuple(px["04_palette_transparent"][2, 2]) == (255, 255, 255)  # transparent -> white
    assert tuple(px["04_palette_transparent"][32, 32]) == (200, 30, 30)
    assert tuple(px["05_rgba"][32, 5]) == (255, 255, 255) and tuple(px["05_rgba"][32, 60]) == (0, 0, 255)
    assert tuple(px["06_animated"][10, 10]) == (10, 200, 10)  # first frame
    ex = px["07_exif_rotated"].astype(int)  # displayed: red on top, blue at the bottom
    assert ex[3, 32, 0] > 180 and ex[3, 32, 2] < 60 and ex[60, 32, 2] > 180 and ex[60, 32, 0] < 60
    assert (rows.loc["07_exif_rotated", "orig_width"], rows.loc["07_exif_rotated", "orig_height"]) == (40, 80)
    r = dict(zip(quar.key, quar.detail))
    assert "U+0000" in r["10_control_chars"] and "caption_control=strip" in r["10_control_chars"]
    # nothing outside the source reached the dataset: not the linked caption, not the linked image
    assert not any("SECRET" in c for c in man.caption)
    assert all("outside-secret" not in s or k in ("abs", "up") for k, s in zip(quar.key, quar.source))
    assert "outside the source" in r["60_caption_link_out"] and "outside-secret/token.txt" in r["60_caption_link_out"]
    assert rows.loc["50_listed__a", "license"] == "CC-BY-4.0"
    assert shard_members(out)["50_listed__a"][1]["meta"] == {"photographer": "Ada"}
    assert "5242880 chars" in r["29_huge_caption"] and "1000x10" in r["25_wide_strip"]


def test_control_characters_can_be_stripped_by_policy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    hostile.smooth_image(1, 64, 64).save(src / "a.png")
    (src / "a.txt").write_bytes("a\x00 red\x1b circle\u202e\r\n\tplease".encode())
    res = ingest(str(src), str(tmp_path / "q"), size=32, workers=0, progress=False)
    assert (res["accepted"], res["reasons"]) == (0, {"control characters in caption": 1})
    res = ingest(str(src), str(tmp_path / "s"), size=32, workers=0, progress=False, caption_control="strip")
    man, _, _ = check_balance(res, str(tmp_path / "s"))
    assert list(man.caption) == ["a red circle please"]
    assert list(man.caption_cleaned) == [True]   # the manifest records what was done
    with pytest.raises(ValueError, match="caption_control"):
        ingest(str(src), str(tmp_path / "x"), caption_control="keep")


def test_a_manifest_folder_source_never_follows_links_out(tmp_path):
    """sources.escapes: the shared check every folder read goes through."""
    from model_code.data.sources import escapes
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (root / "sub" / "link").symlink_to(tmp_path / "secret")
    (root / "sub" / "ok").symlink_to(root / "sub")
    assert escapes(str(root), "sub/link") == str(tmp_path / "secret")
    assert escapes(str(root), "sub/ok/x.png") is None
    assert escapes(str(root), "../secret") == "../secret"
    assert escapes(str(root), "/etc/passwd") == "/etc/passwd"
    assert escapes(str(root), "a/../b.png") is None


def test_pixel_limit_is_configurable(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    hostile.smooth_image(0, 300, 300).save(src / "big.png")
    (src / "big.txt").write_text("large")
    before = Image.MAX_IMAGE_PIXELS
    res = ingest(str(src), str(tmp_path / "out"), workers=1, progress=False, max_pixels=50_000)
    _, quar, _ = check_balance(res, str(tmp_path / "out"))
    assert list(quar.reason) == ["decompression bomb"]
    assert "90000 pixels" in quar.detail[0] and "50000" in quar.detail[0]
    assert Image.MAX_IMAGE_PIXELS == before  # the in-process run restores Pillow's global
    res = ingest(str(src), str(tmp_path / "out2"), workers=1, progress=False)
    assert res["accepted"] == 1


# ---------------------------------------------------------------- real photographs
def test_real_photographs_from_matplotlib(tmp_path):
    cbook = pytest.importorskip("matplotlib.cbook")
    names = ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"]
    paths = [cbook.get_sample_data(n, asfileobj=False) for n in names]
    pd.DataFrame({"url": paths, "alt": ["Grace Hopper", "a present", "matplotlib logo"]}).to_csv(
        tmp_path / "photos.csv", index=False)
    out = str(tmp_path / "out")
    # the photos live in matplotlib's folder, not beside the manifest: the user allows it
    res = ingest(str(tmp_path / "photos.csv"), out, size=64, workers=1, progress=False,
                 allow_roots=sorted({os.path.dirname(p) for p in paths}))
    man, quar, _ = check_balance(res, out)
    assert list(man.key) == ["grace_hopper", "Minduka_Present_Blue_Pack"]
    assert list(quar.reason) == ["extreme aspect ratio"]  # logo2.png is 542x130 (4.2:1)
    members = shard_members(out)
    for key, path in zip(man.key, paths):
        want = Image.open(path)
        if want.mode == "RGBA":
            want = Image.alpha_composite(Image.new("RGBA", want.size, "white"), want)
        want = np.asarray(ImageOps.fit(want.convert("RGB"), (64, 64), Image.LANCZOS), dtype=float)
        got = np.asarray(Image.open(io.BytesIO(members[key][0])), dtype=float)
        # the same picture, normalised (JPEG draft decoding and the reducing gap move it a little;
        # another picture is ~50 away)
        assert np.abs(got - want).mean() < 6, key
    hop = man.set_index("key").loc["grace_hopper"]
    assert (hop.orig_width, hop.orig_height, hop.orig_format) == (512, 600, "JPEG")
    res = ingest(str(tmp_path / "photos.csv"), str(tmp_path / "out5"), size=64, workers=1,
                 progress=False, max_aspect=5.0, allow_roots=sorted({os.path.dirname(p) for p in paths}))
    assert res["accepted"] == 3


# ---------------------------------------------------------------- dedup
def test_near_dup_keeps_distinct_shapes_scenes(tmp_path):
    """pHash collides constantly on flat shapes; the thumbnail check must keep distinct scenes."""
    out = str(tmp_path / "out")
    res = ingest("shapes://n=2000,size=64,seed=0", out, shard_size=1000, workers=2, progress=False)
    man, _, dup = check_balance(res, out)
    assert res["duplicates"] <= 2, dup  # ~0: only scenes identical up to sub-pixel jitter may go
    scenes = {}
    for k, s in zip(man.key, man.scene):
        scenes[k] = json.loads(s)
    from model_code.data.synth import shapes_item

    def attrs(scene):
        return scene["background"], sorted((o["shape"], o["color"], o["size"], o["cell"])
                                           for o in scene["objects"])
    for k, kept in zip(dup.key, dup.kept_key):
        assert attrs(shapes_item(0, int(k.rsplit("-", 1)[1]), 64, 0.1)["scene"]) == attrs(scenes[kept])


def test_exact_and_near_duplicates(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    base = hostile.smooth_image(5, 120, 100)
    base.save(src / "a1.png")
    base.save(src / "a2_copy.png")
    base.save(src / "a3_jpeg.jpg", quality=70)
    base.resize((60, 50), Image.BILINEAR).save(src / "a4_small.png")
    hostile.smooth_image(6, 120, 100).save(src / "b_other.png")
    for p in src.iterdir():
        (src / f"{p.stem}.txt").write_text(f"caption {p.stem}")
    out = str(tmp_path / "out")
    res = ingest(str(src), out, workers=1, progress=False)
    man, _, dup = check_balance(res, out)
    assert list(man.key) == ["a1", "b_other"]
    assert list(zip(dup.key, dup.kept_key, dup.kind)) == [
        ("a2_copy", "a1", "exact"), ("a3_jpeg", "a1", "near"), ("a4_small", "a1", "near")]
    assert dup.distance[0] == 0 and all(dup.distance <= 4)
    res = ingest(str(src), str(tmp_path / "exact_only"), workers=1, progress=False, near_dup_threshold=-1)
    assert (res["accepted"], res["duplicates"]) == (4, 1)


def test_near_dup_index_across_thumbnail_blocks(monkeypatch):
    from model_code.data import hashing
    monkeypatch.setattr(hashing, "THUMB_BLOCK", 4)  # ids 0..9 span three blocks
    ix = hashing.NearDupIndex(threshold=4, tolerance=24)
    rng = np.random.default_rng(0)
    thumbs = [rng.integers(0, 256, hashing.THUMB_BYTES, dtype=np.uint8) for _ in range(10)]
    for i, t in enumerate(thumbs):
        assert ix.add(f"{i:02d}" * 32, 0b1111 << (4 * i), t.tobytes()) == i
    probe = np.clip(thumbs[9].astype(int) + 20, 0, 255).astype(np.uint8).tobytes()
    assert ix.find("ff" * 32, (0b1111 << 36) ^ 0b11, probe) == (9, "near", 2)
    far = np.clip(thumbs[9].astype(int) + 30, 0, 255).astype(np.uint8).tobytes()
    assert ix.find("ff" * 32, 0b1111 << 36, far) is None  # same pHash, colours too far apart
    assert ix.find("05" * 32, 123, far) == (5, "exact", 0)
    assert hashing.NearDupIndex(threshold=-1).find("ff" * 32, 0, far) is None


# ---------------------------------------------------------------- source kinds end to end
def test_every_source_kind_and_round_trip(tmp_path):
    """shapes:// == the synth folder; an ingested dataset's shards re-ingest as WebDataset;
    a parquet manifest with relative paths ingests the same pixels."""
    raw = str(tmp_path / "raw")
    synthesize(raw, n=60, size=32, seed=4, curated_fraction=0.2, workers=1)
    a = ingest(raw, str(tmp_path / "a"), size=32, shard_size=25, workers=2, progress=False)
    b = ingest("shapes://n=60,size=32,seed=4,curated_fraction=0.2", str(tmp_path / "b"), size=32,
               shard_size=25, workers=2, progress=False)
    assert (a["kind"], b["kind"]) == ("folder", "shapes") and a["shards"] == 3
    ma, mb = tables(str(tmp_path / "a"))[0], tables(str(tmp_path / "b"))[0]
    cols = ["key", "sha256", "phash", "caption", "curated_caption", "scene", "license", "split"]
    pd.testing.assert_frame_equal(ma[cols], mb[cols])
    assert ma.curated_caption.notna().sum() == 12 and set(ma.license) == {"CC0-1.0"}

    c = ingest(str(tmp_path / "a" / "shards"), str(tmp_path / "c"), size=32, workers=1, progress=False)
    assert c["kind"] == "webdataset"
    mc = tables(str(tmp_path / "c"))[0]
    pd.testing.assert_frame_equal(ma[cols], mc[cols])

    rows = [json.loads(line) for line in open(os.path.join(raw, "captions.jsonl"))]
    pd.DataFrame({"file": [r["file"] for r in rows], "caption": [r["caption"] for r in rows],
                  "key": [r["key"] for r in rows]}).to_parquet(os.path.join(raw, "list.parquet"))
    d = ingest(os.path.join(raw, "list.parquet"), str(tmp_path / "d"), size=32, workers=2, progress=False)
    md = tables(str(tmp_path / "d"))[0]
    assert d["kind"] == "manifest" and list(md.sha256) == list(ma.sha256)

    # ingesting at another size resamples (Lanczos) but keeps keys and captions
    e = ingest(raw, str(tmp_path / "e"), size=48, workers=2, progress=False)
    me = tables(str(tmp_path / "e"))[0]
    assert set(me.width) == {48} and list(me.key) == list(ma.key) and e["duplicates"] == a["duplicates"]


# ---------------------------------------------------------------- determinism and the output contract
def test_deterministic_across_workers_and_webdataset_readable(tmp_path):
    wds = pytest.importorskip("webdataset")
    src = "shapes://n=150,size=32,seed=9,curated_fraction=0.3"
    r1 = ingest(src, str(tmp_path / "w1"), size=32, shard_size=40, workers=1, progress=False,
                heldout_fraction=0.2)
    r2 = ingest(src, str(tmp_path / "w2"), size=32, shard_size=40, workers=2, progress=False,
                heldout_fraction=0.2)
    assert r1["shards"] == r2["shards"] == 4
    for t1, t2 in zip(tables(str(tmp_path / "w1")), tables(str(tmp_path / "w2"))):
        pd.testing.assert_frame_equal(t1, t2)
    for name in os.listdir(tmp_path / "w1" / "shards"):  # byte-identical shards
        assert (tmp_path / "w1" / "shards" / name).read_bytes() == (tmp_path / "w2" / "shards" / name).read_bytes()

    man = tables(str(tmp_path / "w1"))[0]
    assert tuple(man.columns) == MANIFEST_COLUMNS
    assert list(man.split) == [split_of(k, 0.2) for k in man.key]
    assert 0.1 < (man.split == "heldout").mean() < 0.3
    url = str(tmp_path / "w1" / "shards" / "shard-{00000..00003}.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False))
    assert [s["__key__"] for s in samples] == list(man.key)
    by_key = man.set_index("key")
    for s in samples:
        row = json.loads(s["json"])
        assert row == {c: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v)
                       for c, v in by_key.loc[s["__key__"]].items()} | {"key": s["__key__"]}
        assert Image.open(io.BytesIO(s["png"])).size == (32, 32)


def test_complete_output_is_returned_and_other_parameters_refused(tmp_path):
    out = str(tmp_path / "out")
    first = ingest("shapes://n=20,size=32", out, size=32, workers=1, progress=False)
    stamp = os.path.getmtime(os.path.join(out, "manifest.parquet"))
    again = ingest("shapes://n=20,size=32", out, size=32, workers=2, progress=False)
    assert again == first and os.path.getmtime(os.path.join(out, "manifest.parquet")) == stamp
    with pytest.raises(ValueError, match="size: 32 != 64"):
        ingest("shapes://n=20,size=32", out, size=64, workers=1, progress=False)


@pytest.mark.parametrize("kw, field", [({"size": 4}, "size must"), ({"shard_size": 0}, "shard_size"),
                                       ({"heldout_fraction": 1.5}, "heldout_fraction"),
                                       ({"near_dup_threshold": 65}, "near_dup_threshold"),
                                       ({"workers": -1}, "workers"), ({"kind": "zip"}, "kind must"),
                                       ({"min_sides": 3}, "unknown ingest option"),
                                       ({"max_aspect": 0.5}, "max_aspect")])
def test_bad_arguments_name_the_field(tmp_path, kw, field):
    with pytest.raises(ValueError, match=field):
        ingest("shapes://n=2", str(tmp_path / "o"), **{"workers": 1, "progress": False, **kw})


def test_empty_source_and_progress_log(tmp_path, caplog, monkeypatch):
    (tmp_path / "empty").mkdir()
    res = ingest(str(tmp_path / "empty"), str(tmp_path / "o"), workers=1, progress=False)
    assert (res["input"], res["accepted"], res["shards"]) == (0, 0, 0)
    check_balance(res, str(tmp_path / "o"))
    import logging
    caplog.set_level(logging.INFO, logger="model_code.data.ingest")
    monkeypatch.setattr(ingest_mod, "LOG_EVERY", 10)  # not a terminal: a log line every N records
    ingest("shapes://n=30,size=32", str(tmp_path / "p"), size=32, workers=1, progress=True)
    lines = [m for m in caplog.messages if m.startswith("ingest: ") and "img/s" in m]
    assert [m.split(" records")[0] for m in lines] == ["ingest: 10", "ingest: 20", "ingest: 30"]
    caplog.clear()
    ingest("shapes://n=30,size=32", str(tmp_path / "q"), size=32, workers=1, progress=False)
    assert not [m for m in caplog.messages if "img/s" in m]


def test_unreadable_source_fails_before_writing(tmp_path):
    pd.DataFrame({"path": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
    for workers in (1, 2):
        with pytest.raises(ValueError, match="no caption column"):
            ingest(str(tmp_path / "m.csv"), str(tmp_path / f"o{workers}"), workers=workers, progress=False)
        assert not os.path.exists(tmp_path / f"o{workers}")
    with pytest.raises(ValueError, match="does not exist"):
        ingest(str(tmp_path / "nowhere"), str(tmp_path / "o3"), workers=1, progress=False)


def test_dead_worker_fails_loudly_then_resumes(tmp_path, monkeypatch):
    """A worker killed mid-record (OOM killer, a decoder segfault) must not hang the run."""
    real = ingest_mod.process_record

    def dies_on_17(rec, cfg):  # forked workers inherit this patch
        if rec["key"].endswith("0000017"):
            # the other worker's chunk finishes first (a dead worker fails every chunk in flight,
            # so without the pause the first shard may not be complete yet, load permitting)
            time.sleep(1.0)
            os._exit(137)
        return real(rec, cfg)
    monkeypatch.setattr(ingest_mod, "process_record", dies_on_17)
    out = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match=r"worker died while processing records among shapes-0-\d+ .. "
                                           r"shapes-0-\d+") as e:
        ingest("shapes://n=40,size=32", out, size=32, shard_size=10, workers=2, progress=False)
    lo, hi = (int(k) for k in re.findall(r"shapes-0-(\d+)", str(e.value)))
    assert lo <= 17 <= hi                      # the range named holds the record that killed it
    assert os.path.exists(os.path.join(out, "_parts", "00000.done.json"))
    monkeypatch.setattr(ingest_mod, "process_record", real)
    res = ingest("shapes://n=40,size=32", out, size=32, shard_size=10, workers=2, progress=False)
    assert res["resumed_parts"] >= 1 and res["input"] == 40
    check_balance(res, out)


# ---------------------------------------------------------------- resume after a kill
def test_resume_after_kill_matches_uninterrupted(tmp_path):
    src = "shapes://n=600,size=32,seed=5"
    out, ref = str(tmp_path / "killed"), str(tmp_path / "ref")
    code = ("import sys; from model_code.data.ingest import ingest; "
            "ingest(sys.argv[1], sys.argv[2], size=32, shard_size=50, workers=2, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, src, out], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = os.path.join(out, "_parts", "00001.done.json")
    deadline = time.monotonic() + 120
    while not os.path.exists(marker):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard finished in 120 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the parent and its pool workers
    proc.wait()
    assert not os.path.exists(os.path.join(out, "dataset.json")), "killed too late to test resume"
    done_before = len([n for n in os.listdir(os.path.join(out, "_parts"))
                       if n.endswith(".done.json") and n[0].isdigit()])
    res = ingest(src, out, size=32, shard_size=50, workers=2, progress=False)
    assert res["resumed_parts"] == done_before >= 2
    full = ingest(src, ref, size=32, shard_size=50, workers=2, progress=False)
    for k in ("input", "accepted", "quarantined", "duplicates", "shards"):
        assert res[k] == full[k]
    check_balance(res, out)
    for t1, t2 in zip(tables(out), tables(ref)):
        pd.testing.assert_frame_equal(t1, t2)
    assert sorted(os.listdir(os.path.join(out, "shards"))) == sorted(os.listdir(os.path.join(ref, "shards")))
    for name in os.listdir(os.path.join(ref, "shards")):
        assert open(os.path.join(out, "shards", name), "rb").read() == \
            open(os.path.join(ref, "shards", name), "rb").read()


# ---------------------------------------------------------------- s3:// (a real S3 server)
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    servers = pytest.importorskip("tests.servers")
    try:
        servers.weed_binary()
    except RuntimeError as e:
        pytest.skip(str(e))
    with servers.seaweedfs_s3(tmp_path_factory.mktemp("s3"), "ingest-key", "ingest-secret-0123456789",
                              buckets=["raw", "data"]) as endpoint:
        yield servers.S3Server(endpoint, "ingest-key", "ingest-secret-0123456789")


def test_s3_synth_ingest_and_manifest(s3, tmp_path, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    synthesize("s3://raw/shapes", n=24, size=32, seed=2, workers=2)
    assert len(storage.ls("s3://raw/shapes/images")) == 24
    res = ingest("s3://raw/shapes", "s3://data/ds", size=32, shard_size=10, workers=2, progress=False)
    assert (res["input"], res["shards"], res["manifest"]) == (24, 3, "s3://data/ds/manifest.parquet")
    local = storage.get_dir("s3://data/ds", str(tmp_path / "ds"))
    man, _, _ = check_balance(res, local)
    assert man.source.str.startswith("s3://raw/shapes/images/").all()
    # a CSV manifest on S3 whose relative paths resolve against its own prefix
    storage.write_text("s3://raw/shapes/list.csv", "path,caption\nimages/shapes-2-0000000.png,one\n"
                                                   "images/nope.png,two\n")
    res = ingest("s3://raw/shapes/list.csv", "s3://data/m", size=32, workers=1, progress=False)
    assert (res["accepted"], res["reasons"]) == (1, {"missing image": 1})
    local = storage.get_dir("s3://data/m", str(tmp_path / "m"))
    assert tables(local)[0].sha256[0] == man.sha256[0]


def test_a_manifest_naming_files_outside_its_directory_is_refused_unless_allowed(tmp_path):
    import subprocess
    import sys
    elsewhere = tmp_path / "mounted-secrets"
    elsewhere.mkdir()
    hostile.smooth_image(3, 64, 64).save(elsewhere / "token.png")
    d = tmp_path / "m"
    d.mkdir()
    hostile.smooth_image(4, 64, 64).save(d / "in.png")
    (d / "link.png").symlink_to(elsewhere / "token.png")
    pd.DataFrame({"file": ["in.png", str(elsewhere / "token.png"), "../mounted-secrets/token.png",
                           "link.png", f"file://{elsewhere / 'token.png'}"],
                  "caption": ["a", "b", "c", "d", "e"], "key": ["k1", "k2", "k3", "k4", "k5"]}
                 ).to_parquet(d / "manifest.parquet")
    res = ingest(str(d / "manifest.parquet"), str(tmp_path / "o1"), size=32, workers=0, progress=False)
    man, quar, _ = check_balance(res, str(tmp_path / "o1"))
    assert list(man.key) == ["k1"]
    assert set(quar.key) == {"k2", "k3", "k4", "k5"} and set(quar.reason) == {"outside the source"}
    assert all("--allow-root" in d for d in quar.detail)
    # the user names the directory: allowed (k3..k5 are the same picture: duplicates of k2)
    out = subprocess.run([sys.executable, "-m", "easel.cli", "data", "ingest", str(d / "manifest.parquet"),
                          "--out", str(tmp_path / "o2"), "--size", "32", "--workers", "0", "--quiet",
                          "--allow-root", str(elsewhere), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert (s["accepted"], s["quarantined"], s["duplicates"]) == (2, 0, 3)


# ---------------------------------------------------------------- what a hostile new user tried
def _smooth_png(seed: int) -> bytes:
    return hostile.encode(hostile.smooth_image(seed, 32, 32), "PNG")


def _reasons(out):
    _, quar, _ = tables(out)
    return dict(zip(quar.key, quar.reason)), dict(zip(quar.key, quar.detail))


def test_a_manifest_reads_only_paths_and_s3_inside_its_roots_and_fetches_no_url(tmp_path):
    """local:// and memory:// would read around the root checks; http(s) would make the
    platform fetch (and store) whatever an address serves. None is read; no request is made."""
    import http.server
    import threading
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(_smooth_png(9))

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret.png").write_bytes(_smooth_png(1))
        src = tmp_path / "src"
        src.mkdir()
        (src / "good.png").write_bytes(_smooth_png(2))
        (src / "token.png").write_bytes(b"SECRET TOKEN inside a file named like an image\n")
        url = f"http://127.0.0.1:{server.server_port}"
        pd.DataFrame({"key": ["good", "loc", "mem", "web", "webs", "nul", "token", "s3"],
                      "path": ["good.png", f"local://{outside}/secret.png", "memory://x/secret.png",
                               f"{url}/a.png", f"https://{url}/b.png", "go\x00od.png", "token.png",
                               "s3://another-team/secret.png"],
                      "caption": ["a picture"] * 8}).to_parquet(src / "m.parquet")
        out = str(tmp_path / "out")
        res = ingest(str(src / "m.parquet"), out, size=32, workers=1, progress=False)
    finally:
        server.shutdown()
    check_balance(res, out)
    reason, detail = _reasons(out)
    assert res["accepted"] == 1 and hits == []
    assert {k: reason[k] for k in ("loc", "mem", "web", "webs")} == dict.fromkeys(("loc", "mem", "web", "webs"),
                                                                                  "unsupported URI")
    assert "download the images first" in detail["web"]
    assert reason["nul"] == "bad metadata" and "NUL" in detail["nul"]
    assert reason["s3"] == "outside the source" and "--allow-root" in detail["s3"]
    # a file that is no image is described, not quoted: the quarantine may travel further than the source
    assert reason["token"] == "not an image" and "looks like text" in detail["token"]
    assert "SECRET" not in " ".join(detail.values())


def test_text_that_is_not_unicode_quarantines_its_record_not_the_run(tmp_path):
    """Lone surrogates (JSON "\\ud800"), file names in another encoding and a CSV row with a
    latin-1 byte: each record is quarantined or kept with an escaped source; the run finishes."""
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        (src / f"{name}.png").write_bytes(_smooth_png(10 + i))
    (src / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "bad \ud800 caption"}) + "\n"
                                        + json.dumps({"file": "b.png", "caption": "fine",
                                                      "note": "meta \udc80 field"}) + "\n")
    (src / "c.txt").write_text("a good caption")
    latin = os.path.join(os.fsencode(str(src)), b"caf\xe9.png")     # a legal Linux file name
    with open(latin, "wb") as f:
        f.write(_smooth_png(20))
    with open(os.path.join(os.fsencode(str(src)), b"caf\xe9.txt"), "wb") as f:
        f.write(b"\xef\xbb\xbfa caption saved by Notepad")             # with a BOM
    out = str(tmp_path / "out")
    res = ingest(str(src), out, size=32, workers=1, progress=False)
    man, quar, _ = check_balance(res, out)
    reason, _ = _reasons(out)
    assert reason == {"a": "caption not UTF-8"}
    caf = man[man.source.str.contains("caf")].iloc[0]
    assert "\\udce9" in caf.source and caf.caption == "a caption saved by Notepad"
    # a CSV with one latin-1 caption: that row alone is quarantined
    (src / "m.csv").write_bytes(b"path,caption\nb.png,fine\nc.png,caf\xe9 au lait\n")
    res = ingest(str(src / "m.csv"), str(tmp_path / "csv"), size=32, workers=1, progress=False)
    check_balance(res, str(tmp_path / "csv"))
    assert (res["accepted"], res["reasons"]) == (1, {"caption not UTF-8": 1})
    (src / "ragged.csv").write_text("path,caption\nb.png,fine\nc.png,fine,extra cell\n")
    with pytest.raises(ValueError, match="ragged.csv cannot be parsed as CSV"):
        ingest(str(src / "ragged.csv"), str(tmp_path / "r"), size=32, workers=1, progress=False)


@pytest.mark.timeout(120)
def test_a_fifo_and_unsupported_formats_are_quarantined_not_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_smooth_png(30))
    (src / "a.TXT").write_text("an upper-case sidecar")
    os.mkfifo(src / "b.png")                     # reading it would block forever
    os.mkfifo(src / "c.txt")
    (src / "d.avif").write_bytes(b"\x00\x00\x00\x1cftypavif")
    pd.DataFrame({"path": ["b.png"], "caption": ["x"]}).to_csv(src / "m.csv", index=False)
    out = str(tmp_path / "out")
    res = ingest(str(src), out, size=32, workers=1, progress=False)
    man, _, _ = check_balance(res, out)
    assert list(man.caption) == ["an upper-case sidecar"]
    assert res["reasons"] == {"not a file": 2, "unsupported image format": 1}
    res = ingest(str(src / "m.csv"), str(tmp_path / "m"), size=32, workers=1, progress=False)
    assert res["reasons"] == {"not a file": 1}


def test_tar_links_repeated_members_and_escaping_names_are_quarantined(tmp_path):
    """A sample with KEY.png twice is ambiguous (webdataset refuses it); links are never
    followed; a member named ../x or /x is what `tar -x` would write outside its directory."""
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as t:
        def add(name, data=b"", **kw):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in kw.items():
                setattr(info, k, v)
            t.addfile(info, io.BytesIO(data))
        add("ok.png", _smooth_png(40))
        add("ok.txt", b"fine")
        add("dup.png", _smooth_png(41))
        add("dup.txt", b"which one?")
        add("dup.png", _smooth_png(42))
        add("sym.png", type=tarfile.SYMTYPE, linkname="/etc/hostname")
        add("hl.png", type=tarfile.LNKTYPE, linkname="ok.png")
        add("../evil.png", _smooth_png(43))
        add("/abs.png", _smooth_png(44))
    out = str(tmp_path / "out")
    res = ingest(str(path), out, size=32, workers=1, progress=False)
    man, _, _ = check_balance(res, out)
    assert list(man.key) == ["ok"]
    assert res["reasons"] == {"duplicate tar member": 1, "not a file": 2, "outside the source": 2}


def test_a_changed_source_is_neither_returned_nor_resumed_as_it_was(tmp_path, monkeypatch, caplog):
    from model_code.data import version as V
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"a{i}.png").write_bytes(_smooth_png(50 + i))
        (src / f"a{i}.txt").write_text(f"picture {i}")
    out = str(tmp_path / "out")
    assert ingest(str(src), out, size=32, workers=1, progress=False)["input"] == 3
    assert ingest(str(src), out, size=32, workers=1, progress=False)["input"] == 3   # unchanged: reused
    (src / "a3.png").write_bytes(_smooth_png(53))
    (src / "a3.txt").write_text("picture 3")
    with pytest.raises(ValueError, match="has changed since"):
        ingest(str(src), out, size=32, workers=1, progress=False)
    # a partial ingest (killed before it was assembled), then the source changes: start over
    part = str(tmp_path / "part")

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(ingest_mod, "_assemble", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest(str(src), part, size=32, shard_size=1, workers=1, progress=False)
    with pytest.raises(ValueError, match="partial ingest"):
        V.lineage(part)                  # no version id for records that are not all there
    monkeypatch.undo()
    os.remove(src / "a0.png")
    os.remove(src / "a0.txt")
    import logging
    caplog.set_level(logging.WARNING, logger="model_code.data.ingest")
    res = ingest(str(src), part, size=32, shard_size=1, workers=1, progress=False)
    man, _, _ = check_balance(res, part)
    assert sorted(man.key) == ["a1", "a2", "a3"] and res["resumed_parts"] == 0
    assert any("starting over" in m for m in caplog.messages)
    assert sorted(os.listdir(os.path.join(part, "shards"))) == [f"shard-{i:05d}.tar" for i in range(3)]


def test_out_inside_the_source_and_a_file_as_the_source_are_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_smooth_png(60))
    for out in (src, src / "ds"):
        with pytest.raises(ValueError, match="inside the source folder"):
            ingest(str(src), str(out), size=32, workers=1, progress=False)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        ingest(str(src / "a.png"), str(tmp_path / "o"), size=32, workers=1, progress=False)
    assert not os.path.exists(tmp_path / "o") and sorted(os.listdir(src)) == ["a.png"]


def test_empty_key_cells_fall_back_to_the_file_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("x", "y"):
        (src / f"{name}.png").write_bytes(_smooth_png(70 + ord(name)))
    (src / "m.csv").write_text("key,path,caption,scene\n,x.png,one,\n  ,y.png,two,5\n")
    res = ingest(str(src / "m.csv"), str(tmp_path / "o"), size=32, workers=1, progress=False)
    man, _, _ = check_balance(res, str(tmp_path / "o"))
    reason, detail = _reasons(str(tmp_path / "o"))
    assert list(man.key) == ["x"] and reason == {"y": "bad metadata"} and "JSON object" in detail["y"]
