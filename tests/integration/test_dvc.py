"""DVC versioning in a fresh git clone of a scratch repo that holds copies of this repo's DVC
set-up (.dvc/config, .dvcignore, dvc.yaml, params.yaml, data/.gitignore): `dvc repro` through
the easel CLI, version ids equal to DVC's own hashes, push to the default local remote and to
S3 (SeaweedFS), wipe, pull, identical data. Nothing runs in the real checkout."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from model_code import storage
from model_code.data import version as V

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore", "dvc.yaml", "params.yaml",
               ".gitignore", "data/.gitignore", "data/README.md")


def _env(extra=None):
    env = dict(os.environ)
    # the venv's `easel` and `dvc` first; no analytics; git identity for the scratch commits
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com", **(extra or {}))
    return env


def _run(args, cwd, env=None, check=True):
    res = subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _scratch_clone(tmp_path, files=SETUP_FILES, with_code=True):
    """A git repo with copies of the DVC set-up (+ the code files dvc.yaml depends on),
    committed, then `git clone`d: the clone is what a new user gets."""
    src = tmp_path / "origin"
    src.mkdir()
    paths = list(files)
    if with_code:
        stages = yaml.safe_load(open(os.path.join(REPO, "dvc.yaml")))["stages"]
        paths += sorted({d for s in stages.values() for d in s.get("deps", []) if d.startswith("model_code/")})
    for rel in paths:
        os.makedirs(os.path.dirname(src / rel) or src, exist_ok=True)
        shutil.copyfile(os.path.join(REPO, rel), src / rel)
    _run(["git", "init", "-q"], src)
    _run(["git", "add", "-A"], src)
    _run(["git", "commit", "-qm", "scratch"], src)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(src), str(clone)], tmp_path)
    return str(clone)


def _git_changes(repo):
    return sorted(line[3:] for line in _run(["git", "status", "--porcelain"], repo).stdout.splitlines())


def _wipe(repo):
    for rel in (".dvc/cache", "data/shapes", "data/raw"):
        shutil.rmtree(os.path.join(repo, rel), ignore_errors=True)


def test_repro_push_pull_local_and_s3(tmp_path, s3_server, monkeypatch):
    repo = _scratch_clone(tmp_path)
    params = yaml.safe_load(open(os.path.join(repo, "params.yaml")))
    params["data"].update(n=40, shard_size=16)  # 3 shards, seconds not minutes
    yaml.safe_dump(params, open(os.path.join(repo, "params.yaml"), "w"))

    _run(["dvc", "repro"], repo)
    # dvc.yaml's outputs are already git-ignored (data/.gitignore): repro adds only the lock
    # file and the validation metrics to commit
    assert _git_changes(repo) == ["data/validation/", "dvc.lock", "params.yaml"]
    lock = yaml.safe_load(open(os.path.join(repo, "dvc.lock")))
    recorded = {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}
    shapes = os.path.join(repo, "data", "shapes")
    # our hash is DVC's hash, for the raw source and the ingested dataset
    assert V.dir_md5(shapes) == recorded["data/shapes"]
    assert V.dir_md5(os.path.join(repo, "data", "raw", "shapes")) == recorded["data/raw/shapes"]
    head = _run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    version = V.dataset_version(shapes)
    assert version == f"dvc:{recorded['data/shapes']}@git:{head}"
    lin = V.lineage(shapes)
    assert lin["matches_dvc"] is True and lin["dvc_file"].endswith("dvc.lock") and lin["git_rev"] == head
    metrics = json.load(open(os.path.join(repo, "data", "validation", "shapes.json")))
    assert metrics["success"] and metrics["statistics"]["rows"] == 40

    # a validation report inside the dataset is .dvcignore'd: same version, DVC sees no change
    with open(os.path.join(shapes, "validation.json"), "w") as f:
        f.write('{"success": true}')
    assert V.dataset_version(shapes) == version
    assert json.loads(_run(["dvc", "status", "--json"], repo).stdout or "{}") == {}

    # the default remote is <clone>/.easel/dvc-remote (relative in .dvc/config), git-ignored
    n_files = V.push(repo)
    local_remote = os.path.join(repo, ".easel", "dvc-remote", "files", "md5")
    assert n_files > 40 and os.path.isdir(local_remote)
    assert ".easel/" not in " ".join(_git_changes(repo))

    # S3 remote: endpoint in committed config, credentials from the environment only
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):  # DVC must get it from .dvc/config
        monkeypatch.delenv(k, raising=False)
    s3_server.bucket("easel-dvc")  # DVC does not create buckets
    info = V.configure_s3_remote(repo, "minio", "s3://easel-dvc/store", endpoint_url=s3_server.endpoint)
    assert info["credentials"] == "environment"
    config = open(os.path.join(repo, ".dvc", "config")).read()
    assert "s3://easel-dvc/store" in config and s3_server.endpoint in config
    assert s3_server.secret_key not in config
    assert V.push(repo, remote="minio") == n_files
    assert len(storage.glob("s3://easel-dvc/store/files/md5/*/*")) == n_files

    # wrong credentials: a clear error, not a silent no-op
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    _wipe(repo)
    with pytest.raises(V.VersionError, match="dvc pull from remote minio failed"):
        V.pull(repo, remote="minio")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)

    # wipe cache and data, pull from S3: the same bytes
    _wipe(repo)
    stats = V.pull(repo, remote="minio")
    assert stats["fetched"] == n_files
    assert V.dataset_version(shapes) == version
    assert V.dir_md5(os.path.join(repo, "data", "raw", "shapes")) == recorded["data/raw/shapes"]
    # ... and from the default local remote
    _wipe(repo)
    V.pull(repo)
    assert V.dataset_version(shapes) == version

    # credentials can be kept in .dvc/config.local, which git ignores
    V.configure_s3_remote(repo, "minio", "s3://easel-dvc/store", store_credentials=True)
    assert s3_server.secret_key in open(os.path.join(repo, ".dvc", "config.local")).read()
    assert s3_server.secret_key not in open(os.path.join(repo, ".dvc", "config")).read()
    assert ".dvc/config.local" not in _git_changes(repo)


def _dataset(path, files):
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
        with open(os.path.join(path, rel), "wb") as f:
            f.write(data)


def test_track_and_version_ids_match_dvc_add(tmp_path):
    repo = _scratch_clone(tmp_path, files=(".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"),
                          with_code=False)
    ds = os.path.join(repo, "datasets", "toy")
    _dataset(ds, {"manifest.parquet": b"m" * 100, "shards/shard-00000.tar": os.urandom(3000),
                  "shards/shard-00001.tar": b"", "dataset.json": b'{"size": 32}',
                  "validation.json": b'{"ignored": true}', "nested/deep/x.txt": b"line\r\n"})
    res = V.track(ds, repo)
    dvc_file = yaml.safe_load(open(res["dvc_file"]))
    assert dvc_file["outs"][0]["md5"] == res["md5"] == V.dir_md5(ds)
    assert dvc_file["outs"][0]["nfiles"] == 5  # validation.json left out, as by .dvcignore
    head = _run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert res["version"] == V.dataset_version(ds) == f"dvc:{res['md5']}@git:{head}"
    assert V.parse_version(res["version"]) == {"dvc_md5": res["md5"], "git_rev": head}
    assert "/toy" in open(os.path.join(repo, "datasets", ".gitignore")).read()

    # any content change is a new version; the report file is not content
    with open(os.path.join(ds, "validation.json"), "w") as f:
        f.write("changed")
    assert V.dir_md5(ds) == res["md5"]
    with open(os.path.join(ds, "nested", "deep", "x.txt"), "ab") as f:
        f.write(b"!")
    assert V.dir_md5(ds) != res["md5"]
    assert V.lineage(ds)["matches_dvc"] is False

    # lineage names the parent dataset and its version; outside git the rev is "nogit"
    parent, child = tmp_path / "nogit" / "parent", tmp_path / "nogit" / "child"
    _dataset(str(parent), {"dataset.json": b"{}", "manifest.parquet": b"p"})
    _dataset(str(child), {"dataset.json": json.dumps({"parent": "../parent"}).encode(),
                          "captions/shard-00000.parquet": b"c"})
    lin = V.lineage(str(child))
    assert lin["version"].endswith("@git:nogit") and lin["git_rev"] is None
    assert lin["parent_version"] == V.dataset_version(str(parent))
    assert lin["dvc_recorded"] is None and lin["matches_dvc"] is None


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a DVC repository"):
        V.push(str(tmp_path))
    with pytest.raises(ValueError, match="must be an s3://"):
        V.configure_s3_remote(str(tmp_path), "minio", "http://x")
    with pytest.raises(ValueError, match="not a directory"):
        V.dir_md5(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a dataset version id"):
        V.parse_version("abc")
