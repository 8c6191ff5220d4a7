"""model_code.storage against a real S3 server (SeaweedFS on 127.0.0.1, standing in for MinIO):
the same API as the file:// tests, multipart objects, auth failures,
a dataset validated in place on S3, and an MLflow server keeping its artifacts in S3."""
import hashlib
import json
import os
import uuid

import pytest

from model_code import storage
from model_code.storage import StorageError
from tests.servers import mlflow_tracking_server


@pytest.fixture
def bucket(s3_env):
    """A fresh prefix per test in one bucket (SeaweedFS is shared by the session, and a new
    bucket costs ~1.5 s there: each is a collection with volumes of its own)."""
    return f"{s3_env.bucket('easel-storage-test')}/{uuid.uuid4().hex[:12]}"


def test_bytes_ls_glob_remove(bucket):
    uri = f"{bucket}/a/b/c.bin"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01hello")
    assert storage.exists(uri) and storage.size(uri) == 7
    assert storage.read_bytes(uri) == b"\x00\x01hello"
    storage.write_text(f"{bucket}/t.txt", "héllo ✓")
    assert storage.read_text(f"{bucket}/t.txt") == "héllo ✓"
    with storage.open_uri(f"{bucket}/streamed.txt", "w") as f:
        f.write("line\n" * 3)
    assert storage.read_text(f"{bucket}/streamed.txt") == "line\n" * 3

    for name in ("shards/b.tar", "shards/a.tar", "shards/c.json", "shards/sub/d.tar"):
        storage.write_bytes(f"{bucket}/{name}", name.encode())
    assert storage.ls(f"{bucket}/shards") == [f"{bucket}/shards/{n}" for n in
                                              ("a.tar", "b.tar", "c.json", "sub")]
    assert storage.ls(f"{bucket}/shards", "*.tar") == [f"{bucket}/shards/a.tar", f"{bucket}/shards/b.tar"]
    assert storage.glob(f"{bucket}/shards/*.tar") == storage.ls(f"{bucket}/shards", "*.tar")
    assert storage.ls(f"{bucket}/no-prefix") == []
    storage.remove(f"{bucket}/shards/a.tar")
    assert not storage.exists(f"{bucket}/shards/a.tar")
    storage.remove(f"{bucket}/shards", recursive=True)
    # every object is gone (SeaweedFS, unlike MinIO, may still list an emptied "sub/" prefix)
    assert storage.glob(f"{bucket}/shards/**/*.*") == []
    assert not any(storage.exists(f"{bucket}/shards/{n}") for n in ("b.tar", "c.json", "sub/d.tar"))
    with pytest.raises(StorageError, match=r"read .*missing\.bin: no such object"):
        storage.read_bytes(f"{bucket}/missing.bin")


def test_put_get_file_and_dir(bucket, tmp_path):
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    files = {"top.bin": os.urandom(5000), "nested/a.txt": b"a", "nested/deeper/b.txt": b"bb"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    storage.put_file(str(src / "top.bin"), f"{bucket}/one/top.bin")
    assert storage.get_file(f"{bucket}/one/top.bin", str(tmp_path / "dl.bin")) == str(tmp_path / "dl.bin")
    assert (tmp_path / "dl.bin").read_bytes() == files["top.bin"]
    storage.put_dir(str(src), f"{bucket}/tree")
    assert storage.ls(f"{bucket}/tree") == [f"{bucket}/tree/nested", f"{bucket}/tree/top.bin"]
    assert all(storage.size(f"{bucket}/tree/{r}") == len(d) for r, d in files.items())
    out = storage.get_dir(f"{bucket}/tree", str(tmp_path / "back"))
    for rel, data in files.items():
        assert open(os.path.join(out, rel), "rb").read() == data
    # copy_dir between prefixes and down to disk, leaving out a top-level entry (a part's checkpoints/)
    assert storage.copy_dir(f"{bucket}/tree", f"{bucket}/copy", skip=("nested",)) == 1
    assert storage.ls(f"{bucket}/copy") == [f"{bucket}/copy/top.bin"]
    assert storage.copy_dir(f"{bucket}/tree", str(tmp_path / "copy")) == len(files)
    assert (tmp_path / "copy" / "nested" / "deeper" / "b.txt").read_bytes() == b"bb"
    assert [rel for rel, _ in storage.files_under(f"{bucket}/tree")] == sorted(files)
    # detail: each file's size (and ETag) from the one listing
    assert {rel: info["size"] for rel, _, info in storage.files_under(f"{bucket}/tree", detail=True)} == \
        {rel: len(d) for rel, d in files.items()}
    storage.move(f"{bucket}/copy/top.bin", f"{bucket}/copy/moved.bin")
    assert storage.ls(f"{bucket}/copy") == [f"{bucket}/copy/moved.bin"]


def test_sample_cache_in_the_object_store(bucket):
    """A table's or evaluation's samples kept on S3 (a pod's `out`): keyed by the bundle's
    listing, read back whole, gone when cleared."""
    import numpy as np

    from model_code.evaluate.sample_cache import SampleCache, bundle_fingerprint
    storage.write_text(f"{bucket}/bundle/bundle.json", "{}")
    storage.write_bytes(f"{bucket}/bundle/clip/model.safetensors", b"w")
    fp = bundle_fingerprint(f"{bucket}/bundle")
    cache = SampleCache(f"{bucket}/out/samples", f"{bucket}/bundle")
    assert cache.arrays({"k": 1}, lambda: {"x": np.arange(3)})["x"].tolist() == [0, 1, 2]
    assert SampleCache(f"{bucket}/out/samples", f"{bucket}/bundle").arrays(
        {"k": 1}, lambda: {"x": np.arange(9)})["x"].tolist() == [0, 1, 2]
    assert [u.rsplit(".", 1)[-1] for u in storage.ls(f"{bucket}/out/samples")] == ["npz"]
    storage.write_bytes(f"{bucket}/bundle/clip/model.safetensors", b"retrained")
    assert bundle_fingerprint(f"{bucket}/bundle") != fp
    cache.clear()
    assert not storage.exists(f"{bucket}/out/samples") or storage.glob(f"{bucket}/out/samples/*") == []


def test_large_object_is_multipart_and_intact(bucket, s3_env, tmp_path):
    size = 64 * 2**20
    block = os.urandom(2**20)
    want = hashlib.sha256()
    # streamed write: s3fs buffers 50 MiB blocks, so 64 MiB go up as a 2-part multipart upload;
    # 64 distinct MiB blocks, so a dropped or swapped part would change the hash
    with storage.open_uri(f"{bucket}/big/big.bin", "wb") as f:
        for i in range(64):
            chunk = i.to_bytes(4, "big") + block[4:]
            want.update(chunk)
            f.write(chunk)
    assert storage.size(f"{bucket}/big/big.bin") == size
    # an S3 multipart upload's ETag is "<md5 of the part md5s>-<number of parts>"
    etag = s3_env.fs().info(f"{bucket[5:]}/big/big.bin")["ETag"].strip('"')
    assert etag.endswith("-2"), etag
    got = storage.get_file(f"{bucket}/big/big.bin", str(tmp_path / "back.bin"))
    assert os.path.getsize(got) == size
    h = hashlib.sha256()
    with open(got, "rb") as f:
        while chunk := f.read(4 * 2**20):
            h.update(chunk)
    assert h.hexdigest() == want.hexdigest()


@pytest.mark.parametrize("var,value", [("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
                                       ("AWS_ACCESS_KEY_ID", "nobody")])
def test_wrong_credentials_say_so(bucket, monkeypatch, var, value):
    storage.write_bytes(f"{bucket}/x.bin", b"x")
    monkeypatch.setenv(var, value)
    for call in (lambda: storage.read_bytes(f"{bucket}/x.bin"),
                 lambda: storage.write_bytes(f"{bucket}/y.bin", b"y"),
                 lambda: storage.ls(bucket),
                 lambda: storage.exists(f"{bucket}/x.bin")):
        with pytest.raises(StorageError) as ei:
            call()
        msg = str(ei.value)
        assert "credentials rejected by the object store" in msg and "AWS_SECRET_ACCESS_KEY" in msg, msg
        assert bucket in msg  # names the URI


def test_dataset_validates_in_place_on_s3(bucket, tmp_path):
    from model_code.data.ingest import ingest
    from model_code.data.synth import synthesize
    from model_code.data.validate import validate
    synthesize(str(tmp_path / "raw"), n=16, size=32, seed=1, curated_fraction=0.25, workers=1)
    ingest(str(tmp_path / "raw"), str(tmp_path / "ds"), size=32, shard_size=8, workers=1, progress=False)
    storage.put_dir(str(tmp_path / "ds"), f"{bucket}/datasets/shapes")
    res = validate(f"{bucket}/datasets/shapes")
    assert res["success"], res["failed_expectations"]
    assert res["report"] == f"{bucket}/datasets/shapes/validation.json"
    assert json.loads(storage.read_text(res["report"]))["statistics"]["rows"] == 16
    # the version id of the copy in S3 is the local one's (the report is not content)
    from model_code.data.version import dir_md5
    assert dir_md5(f"{bucket}/datasets/shapes") == dir_md5(str(tmp_path / "ds"))
    # a shard lost in the store is caught: the manifest names a file that is not there
    storage.remove(f"{bucket}/datasets/shapes/shards/shard-00001.tar")
    res = validate(f"{bucket}/datasets/shapes")
    assert "expect_column_values_to_be_in_set(shard)" in res["failed_expectations"]


@pytest.mark.slow
def test_mlflow_server_keeps_artifacts_in_s3(s3_env, bucket, tmp_path):
    # MLflow's S3 artifact store uses boto3 (not s3fs): the server image needs it
    pytest.importorskip("boto3", reason="MLflow's S3 artifact repository needs boto3")
    import mlflow
    with mlflow_tracking_server(tmp_path, artifacts_destination=f"{bucket}/mlflow",
                                env=s3_env.env()) as uri:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.create_experiment("storage-test")
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "preset", "tiny")
        (tmp_path / "notes.txt").write_text("kept in S3")
        client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"), "reports")
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.params == {"preset": "tiny"}
        local = client.download_artifacts(run.info.run_id, "reports/notes.txt", str(tmp_path / "dl"))
        assert open(local).read() == "kept in S3"
    # the server (not the client) wrote the artifact into the bucket
    found = storage.glob(f"{bucket}/mlflow/**/reports/notes.txt")
    assert len(found) == 1 and storage.read_text(found[0]) == "kept in S3"
