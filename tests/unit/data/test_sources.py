"""Source readers: folder, WebDataset, manifest (parquet/CSV), shapes://; kind detection; records
that cannot be read are yielded with an error, never dropped."""
import io
import json
import os
import tarfile

import pandas as pd
import pytest
from PIL import Image

from model_code.data import sources
from model_code.data.synth import shapes_item, synthesize


def png(color=(200, 10, 10), size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def by_key(records):
    return {r["key"]: r for r in records}


# ---------------------------------------------------------------- folder
def test_folder_jsonl_sidecars_nested_and_extra_fields(tmp_path):
    root = str(tmp_path / "src")
    write(f"{root}/a.png", png((1, 2, 3)))
    write(f"{root}/a.txt", "caption of a\n")
    write(f"{root}/b.jpg", png((4, 5, 6)))                      # no caption anywhere
    write(f"{root}/deep/er/c.png", png((7, 8, 9)))
    write(f"{root}/deep/er/c.txt", "nested")
    write(f"{root}/deep/er/c.json", json.dumps({"license": "CC-BY-4.0", "opt_out": "false", "w": 3}))
    write(f"{root}/set/x.png", png((10, 11, 12)))
    write(f"{root}/set/k9.webp", png((13, 14, 15)))
    write(f"{root}/set/captions.jsonl",
          json.dumps({"file": "x.png", "caption": "from jsonl", "curated_caption": "careful",
                      "scene": {"size": 32}, "license": "CC0-1.0", "camera": "X100"}) + "\n"
          + json.dumps({"key": "k9", "text": "key only"}) + "\n\n")
    write(f"{root}/hf/metadata.jsonl", json.dumps({"file_name": "h.png", "text": "hf style"}) + "\n")
    write(f"{root}/hf/h.png", png((16, 17, 18)))
    write(f"{root}/README.md", "not an image, ignored")
    recs = list(sources.iter_records(root))
    r = by_key(recs)
    assert set(r) == {"a", "b", "deep__er__c", "set__x", "k9", "hf__h"}
    assert r["a"]["caption"] == "caption of a\n" and r["a"]["image"] == png((1, 2, 3))
    assert r["b"]["caption"] is None and r["b"]["error"] is None  # ingest says "no caption"
    assert r["deep__er__c"]["license"] == "CC-BY-4.0" and r["deep__er__c"]["opt_out"] is False
    assert r["deep__er__c"]["meta"] == {"w": 3}
    x = r["set__x"]
    assert (x["caption"], x["curated_caption"], x["scene"], x["license"]) == \
        ("from jsonl", "careful", {"size": 32}, "CC0-1.0")
    assert x["meta"] == {"camera": "X100"}          # unknown fields are kept
    assert x["source"] == os.path.join(root, "set/x.png")
    assert r["k9"]["caption"] == "key only" and r["k9"]["image"] == png((13, 14, 15))
    assert r["hf__h"]["caption"] == "hf style"
    # deterministic order: jsonl lines first (file order), then the other images by path
    assert [q["key"] for q in recs] == ["hf__h", "set__x", "k9", "a", "b", "deep__er__c"]
    assert recs == list(sources.iter_records(root))


def test_folder_errors_are_records_not_exceptions(tmp_path):
    root = str(tmp_path / "src")
    write(f"{root}/good.png", png())
    write(f"{root}/good.txt", "ok")
    write(f"{root}/latin1.png", png())
    write(f"{root}/latin1.txt", b"caf\xe9")
    write(f"{root}/badside.png", png())
    write(f"{root}/badside.json", "{not json")
    os.symlink("loop.png", f"{root}/loop.png")
    write(f"{root}/loop.txt", "a caption")
    write(f"{root}/captions.jsonl", b'{"file": "gone.png", "caption": "x"}\n[1, 2]\n'
                                    b'{"file": "latin1b.png", "caption": "caf\xe9"}\n')
    write(f"{root}/latin1b.png", png())
    r = by_key(sources.iter_records(root))
    assert r["good"]["error"] is None
    assert r["latin1"]["error"][0] == sources.CAPTION_NOT_UTF8
    assert r["badside"]["error"][0] == sources.BAD_METADATA
    assert r["loop"]["error"][0] == sources.UNREADABLE and "symbolic links" in r["loop"]["error"][1]
    assert r["gone"]["error"][0] == sources.MISSING_IMAGE
    assert r["captions-line2"]["error"][0] == sources.BAD_METADATA
    # a non-UTF-8 jsonl line still claims its image: no second record "without caption"
    assert r["latin1b"]["error"][0] == sources.CAPTION_NOT_UTF8
    assert len(r) == 7


def test_lazy_records_resolve_in_load_image(tmp_path):
    root = str(tmp_path / "src")
    write(f"{root}/a.png", png())
    write(f"{root}/a.txt", "x")
    (rec,) = sources.iter_records(root, lazy=True)
    assert rec["image"] is None and rec["ref"] == ("uri", f"{root}/a.png")
    os.remove(f"{root}/a.png")  # vanished between listing and reading
    sources.load_image(rec)
    assert rec["error"][0] == sources.MISSING_IMAGE and rec["image"] is None


# ---------------------------------------------------------------- WebDataset
def make_tar(path, members):
    with tarfile.open(path, "w") as t:
        for name, data in members:
            data = data if isinstance(data, bytes) else data.encode("utf-8")
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))


def test_webdataset_dir_glob_brace_list_and_json(tmp_path):
    d = tmp_path / "wds"
    d.mkdir()
    make_tar(d / "s-000.tar", [("a.jpg", png((1, 1, 1))), ("a.txt", "cap a"),
                              ("sub/b.png", png((2, 2, 2))),
                              ("sub/b.json", json.dumps({"caption": "cap b", "license": "MIT", "x": 1}))])
    make_tar(d / "s-001.tar", [("c.d.webp", png((3, 3, 3))), ("c.d.txt", "cap c"),
                              ("c.d.json", json.dumps({"caption": "ignored: txt wins", "y": 2})),
                              ("e.txt", "no image")])
    for src in (str(d), f"{d}/s-*.tar", f"{d}/s-{{000..001}}.tar", [str(d / "s-000.tar"), str(d / "s-001.tar")]):
        assert sources.detect_kind(src) == "webdataset"
        r = by_key(sources.iter_records(src))
        assert list(r) == ["a", "sub__b", "c", "e"], src
    assert r["a"]["caption"] == "cap a" and r["a"]["image"] == png((1, 1, 1))
    assert r["a"]["source"] == f"{d}/s-000.tar#a.jpg"
    assert r["c"]["source"] == f"{d}/s-001.tar#c.d.webp"
    assert (r["sub__b"]["caption"], r["sub__b"]["license"], r["sub__b"]["meta"]) == ("cap b", "MIT", {"x": 1})
    assert r["c"]["caption"] == "cap c" and r["c"]["meta"] == {"y": 2}  # key = up to the first dot
    assert r["e"]["error"][0] == sources.MISSING_IMAGE


def test_webdataset_truncated_tar_reports_the_rest(tmp_path):
    import numpy as np
    noise = [io.BytesIO() for _ in range(6)]  # ~12 KB each: the cut lands inside a member
    for i, buf in enumerate(noise):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    full = tmp_path / "full.tar"
    make_tar(full, [(f"k{i}.png", b.getvalue()) for i, b in enumerate(noise)])
    data = full.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    recs = list(sources.iter_records(str(tmp_path / "cut.tar")))
    assert [r["key"] for r in recs[:-1]] == ["k0", "k1", "k2"]
    assert [r["error"] for r in recs[:-1]] == [None] * 3
    assert recs[-1]["error"][0] == sources.UNREADABLE_TAR
    assert "after 3 members; the rest is unreadable" in recs[-1]["error"][1]


# ---------------------------------------------------------------- manifests
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_manifest_columns_relative_paths_and_missing_files(tmp_path, fmt):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    (img_dir / "one.png").write_bytes(png((1, 1, 1)))
    (tmp_path / "abs.png").write_bytes(png((2, 2, 2)))
    df = pd.DataFrame({"Image_Path": ["imgs/one.png", str(tmp_path / "abs.png"), "imgs/missing.png", ""],
                       "ALT": ["first", "second", "third", "fourth"],
                       "license": ["CC0-1.0", None, None, None] if fmt == "parquet" else ["CC0-1.0", "", "", ""],
                       "opt_out": ["false", "true", "0", "1"],
                       "score": [0.5, 0.25, 0.0, 1.0]})
    path = tmp_path / f"m.{fmt}"
    df.to_parquet(path) if fmt == "parquet" else df.to_csv(path, index=False)
    assert sources.detect_kind(str(path)) == "manifest"
    recs = list(sources.iter_records(str(path)))
    assert [r["key"] for r in recs] == ["one", "abs", "missing", "row-00000004"]
    one, ab, missing, empty = recs
    assert one["image"] == png((1, 1, 1)) and one["caption"] == "first" and one["license"] == "CC0-1.0"
    assert one["source"] == str(img_dir / "one.png") and one["opt_out"] is False
    assert ab["image"] == png((2, 2, 2)) and ab["opt_out"] is True
    assert float(one["meta"]["score"]) == 0.5
    assert missing["error"][0] == sources.MISSING_IMAGE and "missing.png" in missing["error"][1]
    assert empty["error"][0] == sources.MISSING_IMAGE


def test_manifest_image_bytes_and_bad_columns(tmp_path):
    path = tmp_path / "hf.parquet"
    pd.DataFrame({"image": [{"bytes": png((9, 9, 9)), "path": "x.png"}], "text": ["hf"],
                  "key": ["k1"]}).to_parquet(path)
    (rec,) = sources.iter_records(str(path))
    assert (rec["key"], rec["image"], rec["caption"]) == ("k1", png((9, 9, 9)), "hf")
    pd.DataFrame({"picture": ["a.png"], "caption": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no image column.*columns: picture, caption"):
        list(sources.iter_records(str(tmp_path / "bad.parquet")))
    pd.DataFrame({"path": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "nocap.csv", index=False)
    with pytest.raises(ValueError, match="no caption column"):
        list(sources.iter_records(str(tmp_path / "nocap.csv")))


# ---------------------------------------------------------------- shapes and detection
def test_shapes_source_matches_synth_folder(tmp_path):
    synthesize(str(tmp_path / "raw"), n=12, size=32, seed=3, curated_fraction=0.25, workers=1)
    from_folder = by_key(sources.iter_records(str(tmp_path / "raw")))
    from_gen = by_key(sources.iter_records("shapes://n=12,size=32,seed=3,curated_fraction=0.25"))
    assert list(from_folder) == list(from_gen) == [f"shapes-3-{i:07d}" for i in range(12)]
    for k, a in from_gen.items():
        b = from_folder[k]
        for f in ("image", "caption", "curated_caption", "scene", "license"):
            assert a[f] == b[f], (k, f)
    assert sum(r["curated_caption"] is not None for r in from_gen.values()) == 3
    assert from_gen["shapes-3-0000005"]["caption"] == shapes_item(3, 5, 32, 0.25)["caption"]


@pytest.mark.parametrize("bad, field", [("shapes://n=0", "'n'"), ("shapes://size=2", "'size'"),
                                        ("shapes://n=ten", "'n'"), ("shapes://colour=3", "colour"),
                                        ("shapes://curated_fraction=2", "curated_fraction")])
def test_shapes_uri_errors_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        sources.parse_shapes_uri(bad)


def test_detect_kind_and_override(tmp_path):
    assert sources.detect_kind("shapes://n=3") == "shapes"
    assert sources.detect_kind(str(tmp_path / "x.csv")) == "manifest"
    write(str(tmp_path / "f" / "a.png"), png())
    assert sources.detect_kind(str(tmp_path / "f")) == "folder"
    make_tar(tmp_path / "w" / "s.tar", [("a.png", png())]) if (tmp_path / "w").mkdir() is None else None
    assert sources.detect_kind(str(tmp_path / "w")) == "webdataset"
    with pytest.raises(ValueError, match="does not exist"):
        sources.detect_kind(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="kind must be one of"):
        list(sources.iter_records(str(tmp_path / "f"), kind="zip"))
    # forcing "folder" on a directory of tars finds no images: an empty stream, not an error
    assert list(sources.iter_records(str(tmp_path / "w"), kind="folder")) == []


def test_sanitize_key():
    assert sources.sanitize_key("a/b c.d") == "a__b_c_d"
    assert sources.sanitize_key("") == "_"
    long = sources.sanitize_key("x" * 300)
    assert len(long) <= 160 and long != sources.sanitize_key("x" * 299)
