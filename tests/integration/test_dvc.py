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
    if with_code:  # the code dvc.yaml depends on, and the presets it reads its settings from
        stages = yaml.safe_load(open(os.path.join(REPO, "dvc.yaml")))["stages"]
        paths += sorted({d for s in stages.values() for d in s.get("deps", []) if d.startswith("model_code/")})
        paths.append("model_code/presets")
    for rel in paths:
        os.makedirs(os.path.dirname(src / rel) or src, exist_ok=True)
        if os.path.isdir(os.path.join(REPO, rel)):
            shutil.copytree(os.path.join(REPO, rel), src / rel, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
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


DATA = ["data/raw/shapes", "data/shapes"]   # what `dvc repro validate` made (the models were not trained)


def _edit_preset(repo, **sections):
    """Merge `sections` into the scratch repo's tiny preset (the file dvc.yaml reads settings from)."""
    from model_code.config import deep_merge
    path = os.path.join(repo, "model_code", "presets", "tiny.yaml")
    cfg = deep_merge(yaml.safe_load(open(path)), sections)
    yaml.safe_dump(cfg, open(path, "w"))


def test_repro_push_pull_local_and_s3(tmp_path, s3_server, monkeypatch):
    repo = _scratch_clone(tmp_path)
    _edit_preset(repo, data={"n": 40, "shard_size": 16})  # 3 shards, seconds not minutes

    _run(["dvc", "repro", "validate"], repo)   # the data stages
    # dvc.yaml's outputs are already git-ignored (data/.gitignore): repro adds only the lock
    # file and the validation metrics to commit
    assert _git_changes(repo) == ["data/validation/", "dvc.lock", "model_code/presets/tiny.yaml"]
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
    assert json.loads(_run(["dvc", "status", "--with-deps", "validate", "--json"], repo).stdout or "{}") == {}

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
        V.pull(repo, remote="minio", targets=DATA)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)

    # wipe cache and data, pull from S3: the same bytes
    _wipe(repo)
    stats = V.pull(repo, remote="minio", targets=DATA)
    assert stats["fetched"] == n_files
    assert V.dataset_version(shapes) == version
    assert V.dir_md5(os.path.join(repo, "data", "raw", "shapes")) == recorded["data/raw/shapes"]
    # ... and from the default local remote
    _wipe(repo)
    V.pull(repo, targets=DATA)
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


@pytest.mark.timeout(900)
def test_the_tiny_lifecycle_as_dvc_stages(tmp_path):
    """dvc.yaml's training and evaluation stages, as a user drives them in a fresh clone: `dvc
    repro` trains every part and evaluates both recipes (steps cut to seconds in the preset file,
    the one place dvc.yaml reads settings from), `dvc metrics show` and `dvc plots show` read the
    evaluations and the training curves, and `dvc exp run -S <preset>:KEY=VALUE` re-runs only the
    stages that key feeds."""
    repo = _scratch_clone(tmp_path)
    steps = {p: 4 for p in ("dvae", "transformer", "clip", "captioner", "prior", "decoder", "upsampler")}
    _edit_preset(repo, data={"n": 96, "shard_size": 48, "heldout_fraction": 0.25},
                 train={"steps": steps, "log_every": 2, "ckpt_every": 1000},
                 recaption={"max_retries": 0},   # a 4-step captioner is rejected anyway: no regeneration
                 evaluate={"n_per_category": 1, "samples_per_prompt": 2, "heldout_images": 16, "grid_prompts": 1})
    _run(["git", "commit", "-qam", "seconds, not minutes"], repo)
    home = tmp_path / "home"
    home.mkdir()
    env = _env({"OMP_NUM_THREADS": "1", "EASEL_HOME": str(home), "PYTHONPATH": REPO,
                "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"})

    _run(["dvc", "repro"], repo, env=env)
    for out in ("models/tokenizer", "models/clip", "models/captioner", "data/recaptioned", "models/dvae",
                "models/transformer", "models/prior", "models/decoder", "models/upsampler"):
        assert os.path.isdir(os.path.join(repo, out)), out
    for recipe in ("dalle", "unclip"):
        assert json.load(open(os.path.join(repo, "models", recipe, "bundle.json")))["recipe"] == recipe
    # nothing but the lock and the validation metrics for git to commit
    assert _git_changes(repo) == ["data/validation/", "dvc.lock"]
    lock = yaml.safe_load(open(os.path.join(repo, "dvc.lock")))["stages"]
    assert lock["transformer"]["params"]["model_code/presets/tiny.yaml"]["train.steps.transformer"] == 4

    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], repo, env=env).stdout)
    flat = json.dumps(metrics)
    assert "eval/dalle/metrics.json" in flat and "eval/unclip/metrics.json" in flat and "pf.geneval" in flat
    plots = json.loads(_run(["dvc", "plots", "show", "--json", "-o", str(tmp_path / "plots")], repo,
                            env=env).stdout)["data"]
    loss = plots["Training loss"][0]["content"]["data"]["values"]   # a vega-lite spec with its rows
    assert {r["filename"] for r in loss} == {f"{p}/history.csv" for p in steps}
    assert {(r["filename"], r["step"]) for r in loss} >= {("transformer/history.csv", "2"),
                                                          ("transformer/history.csv", "4")}
    assert {r["category"] for r in plots["Shapes-GenEval by category (exact)"][0]["content"]["data"]["values"]} \
        >= {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert plots["eval/dalle/samples-single_object.png"][0]["type"] == "image"
    _run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo, env=env)
    assert (tmp_path / "plots" / "index.html").exists()
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "the tiny lifecycle, reproduced"], repo)

    # an experiment: one preset key; only the stages that read it (and what depends on them) run
    res = _run(["dvc", "exp", "run", "-S", "model_code/presets/tiny.yaml:train.steps.transformer=6"], repo, env=env)
    ran = {line.split("'")[1] for line in res.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"transformer", "bundle-dalle", "evaluate-dalle"}, res.stdout[-3000:]
    history = open(os.path.join(repo, "models", "transformer", "history.csv")).read().splitlines()
    assert history[-1].split(",")[0] == "6"
