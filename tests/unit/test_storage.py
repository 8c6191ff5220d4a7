"""model_code.storage on the default store: plain paths and file:// URIs, same API as s3://."""
import os

import pytest

from model_code import storage
from model_code.storage import StorageError


@pytest.fixture(params=["path", "file-uri"])
def root(request, tmp_path):
    """The same directory as a plain path and as a file:// URI."""
    base = str(tmp_path / "store")
    return base if request.param == "path" else "file://" + base


def _plain(uri):
    return storage.local_path(uri)


def test_scheme_helpers(tmp_path):
    assert storage.scheme("s3://b/k") == "s3" and storage.scheme("/x/y") == "file"
    assert storage.scheme("file:///x") == "file" and not storage.is_remote("file:///x")
    assert storage.is_remote("s3://b/k")
    assert storage.local_path("file:///a/b") == "/a/b" and storage.local_path("/a/b") == "/a/b"
    with pytest.raises(StorageError, match="not a local path"):
        storage.local_path("s3://b/k")
    assert storage.join("s3://b", "x", "y.bin") == "s3://b/x/y.bin"
    assert storage.join(str(tmp_path), "x") == os.path.join(str(tmp_path), "x")
    with pytest.raises(StorageError, match="unsupported URI scheme 'nosuch'"):
        storage.filesystem("nosuch://x/y")


def test_bytes_text_exists_size(root):
    uri = storage.join(root, "a", "b", "c.bin")  # parents are created on write
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01hello")
    assert storage.exists(uri) and storage.size(uri) == 7
    assert storage.read_bytes(uri) == b"\x00\x01hello"
    assert open(_plain(uri), "rb").read() == b"\x00\x01hello"  # really on disk, where it says
    t = storage.join(root, "t.txt")
    storage.write_text(t, "héllo ✓")
    assert storage.read_text(t) == "héllo ✓"
    with storage.open_uri(storage.join(root, "deep", "er", "f.txt"), "w") as f:
        f.write("streamed")
    assert storage.read_text(storage.join(root, "deep", "er", "f.txt")) == "streamed"


def test_missing_objects_are_storage_errors(root):
    missing = storage.join(root, "nope.bin")
    with pytest.raises(StorageError, match=r"read .*nope\.bin: no such object"):
        storage.read_bytes(missing)
    with pytest.raises(StorageError, match="no such object"):
        storage.size(missing)
    with pytest.raises(StorageError, match="no such object"):
        storage.open_uri(missing, "rb")
    assert storage.ls(storage.join(root, "no-dir")) == []


def test_ls_glob_remove(root):
    for name in ("b.tar", "a.tar", "c.json", "sub/d.tar"):
        storage.write_bytes(storage.join(root, name), name.encode())
    entries = storage.ls(root)
    assert [os.path.basename(e) for e in entries] == ["a.tar", "b.tar", "c.json", "sub"]
    assert storage.ls(root, "*.tar") == [os.path.join(_plain(root), n) for n in ("a.tar", "b.tar")]
    assert storage.glob(storage.join(root, "*.tar")) == storage.ls(root, "*.tar")
    assert storage.glob(storage.join(root, "**", "*.tar"))[-1].endswith("sub/d.tar")
    storage.remove(storage.join(root, "a.tar"))
    assert not storage.exists(storage.join(root, "a.tar"))
    storage.remove(storage.join(root, "sub"), recursive=True)
    assert [os.path.basename(e) for e in storage.ls(root)] == ["b.tar", "c.json"]
    storage.remove(storage.join(root, "never-there"))  # removing nothing is not an error


def test_put_get_file_and_dir(root, tmp_path):
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    files = {"top.bin": os.urandom(1000), "nested/a.txt": b"a", "nested/deeper/b.txt": b"bb"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    storage.put_file(str(src / "top.bin"), storage.join(root, "one", "top.bin"))
    got = storage.get_file(storage.join(root, "one", "top.bin"), str(tmp_path / "dl" / "top.bin"))
    assert open(got, "rb").read() == files["top.bin"]

    storage.put_dir(str(src), storage.join(root, "tree"))
    out = storage.get_dir(storage.join(root, "tree"), str(tmp_path / "back"))
    for rel, data in files.items():
        assert open(os.path.join(out, rel), "rb").read() == data
    # same path in and out is a no-op, not a self-copy error
    same = storage.join(root, "one", "top.bin")
    storage.put_file(_plain(same), same)
    assert storage.get_file(same, _plain(same)) == _plain(same)


def test_copy_dir_from_a_relative_path_leaves_out_skipped_entries(tmp_path, monkeypatch):
    """A trained part named relatively (dvc.yaml's `--part tokenizer=models/tokenizer`) is copied
    whole, file names intact, its checkpoints/ left out."""
    src = tmp_path / "models" / "tokenizer"
    (src / "checkpoints").mkdir(parents=True)
    (src / "tokenizer.json").write_text("t")
    (src / "easel_tokenizer.json").write_text("e")
    (src / "checkpoints" / "step-1.ckpt").write_text("c")
    monkeypatch.chdir(tmp_path)
    assert storage.copy_dir("models/tokenizer", "bundle/tokenizer", skip=("checkpoints",)) == 2
    assert sorted(os.listdir(tmp_path / "bundle" / "tokenizer")) == ["easel_tokenizer.json", "tokenizer.json"]
    # the listing's details: each file's size and modification time, from the one find
    rows = storage.files_under("models/tokenizer", detail=True)
    assert [(rel, info["size"]) for rel, _, info in rows] == [
        ("checkpoints/step-1.ckpt", 1), ("easel_tokenizer.json", 1), ("tokenizer.json", 1)]
    assert all(info.get("mtime") for _, _, info in rows)
