"""Dataset versions with DVC: content ids, lineage, add/push/pull, an S3 remote from env.

A dataset's version id is "dvc:<md5>@git:<rev>":
- <md5> is the hash DVC records for the directory in its .dvc file / dvc.lock ("<hex>.dir"),
  computed by dvc-data (DVC's own hashing library) without running a DVC command, so it matches
  what `dvc add` / `dvc repro` write, for a local directory or an s3:// prefix. Files named in IGNORED_NAMES are left out,
  as the repo's .dvcignore leaves them out of DVC's hash: validation reports are derived from
  the data, so validating a dataset does not change its version.
- <rev> is the git commit of the code that sees it (the repository holding the dataset
  directory, else the current directory), or "nogit".

The repo's DVC remote is a local directory by default (.dvc/config: `../.easel/dvc-remote`,
i.e. <repo>/.easel/dvc-remote); `configure_s3_remote` adds a MinIO/S3 remote whose endpoint
goes into .dvc/config (through DVC's config API) and whose credentials stay in the environment
(or .dvc/config.local, which git ignores), never in committed config.
"""
from __future__ import annotations

import os
import posixpath
from contextlib import contextmanager
from typing import Any, Iterator

from model_code import storage
from model_code.tracking import git_dirty, git_head

IGNORED_NAMES = ("validation.json", "validation.html", "validation_gx")  # keep in sync with /.dvcignore
SKIPPED_DIRS = (".git", ".dvc")                         # DVC never hashes these


class VersionError(RuntimeError):
    """A DVC operation failed; the message says which and why."""


# ---------------------------------------------------------------- content ids
def _dvc_fs(dataset_dir: str):
    """(dvc-objects FileSystem, its path) for a local directory or any fsspec URI (s3://...)."""
    if not storage.is_remote(dataset_dir):
        from dvc_objects.fs.local import LocalFileSystem
        return LocalFileSystem(), storage.local_path(dataset_dir)
    from dvc_objects.fs.base import FileSystem
    return FileSystem(fs=storage.filesystem(dataset_dir)), dataset_dir.split("://", 1)[1].rstrip("/")


def file_md5(uri: str) -> str:
    """DVC's md5 of one file (dvc-data's hash_file)."""
    from dvc_data.hashfile.hash import hash_file
    fs, path = _dvc_fs(uri)
    return hash_file(path, fs, "md5")[1].value


def _files(dataset_dir: str) -> list[str]:
    """Relative posix paths of the files DVC would hash under dataset_dir (file_md5 of each, in
    dir_md5, reads them through the same file system)."""
    if not storage.is_remote(dataset_dir):
        root = storage.local_path(dataset_dir)
        if not os.path.isdir(root):
            raise ValueError(f"dataset_dir={dataset_dir}: not a directory")
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS + IGNORED_NAMES]
            for name in filenames:
                if name not in IGNORED_NAMES:
                    out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
        return out
    fs, base = _dvc_fs(dataset_dir)
    found = [p[len(base):].lstrip("/") for p in fs.find(base)]
    if not found:
        raise ValueError(f"dataset_dir={dataset_dir}: no objects under this prefix")
    return [p for p in found if posixpath.basename(p) not in IGNORED_NAMES
            and not set(p.split("/")[:-1]) & set(SKIPPED_DIRS + IGNORED_NAMES)]


def dir_md5(dataset_dir: str) -> str:
    """DVC 3's hash of a directory ("<md5>.dir"), computed by dvc-data itself: each file's md5
    (hash_file) into a Tree, whose digest is the md5 of its sorted [{md5, relpath}] JSON, exactly
    what `dvc add` / `dvc repro` record. The file list is ours (_files): dvc-data applies a
    .dvcignore only on local paths and only inside a DVC repository, and a dataset may be an
    s3:// prefix outside any; IGNORED_NAMES is the repository's .dvcignore."""
    from dvc_data.hashfile.hash import hash_file
    from dvc_data.hashfile.tree import Tree
    fs, root = _dvc_fs(dataset_dir)
    tree = Tree()
    for rel in _files(dataset_dir):
        meta, oid = hash_file(fs.join(root, *rel.split("/")), fs, "md5")
        tree.add(tuple(rel.split("/")), meta, oid)
    tree.digest()
    return tree.hash_info.value


def _code_dir(dataset_dir: str) -> str:
    """Where to ask git: the dataset's own directory when local, else the working directory."""
    if not storage.is_remote(dataset_dir) and os.path.isdir(storage.local_path(dataset_dir)):
        return storage.local_path(dataset_dir)
    return os.getcwd()


def dataset_version(dataset_dir: str) -> str:
    """"dvc:<md5>.dir@git:<sha>" ("@git:nogit" outside a git repository)."""
    rev = git_head(_code_dir(dataset_dir))
    return f"dvc:{dir_md5(dataset_dir)}@git:{rev or 'nogit'}"


def parse_version(version: str) -> dict[str, str | None]:
    """"dvc:X@git:Y" -> {"dvc_md5": X, "git_rev": Y or None}."""
    if not version.startswith("dvc:") or "@git:" not in version:
        raise ValueError(f"version={version!r} is not a dataset version id (dvc:<md5>@git:<rev>)")
    md5, rev = version[4:].split("@git:", 1)
    return {"dvc_md5": md5, "git_rev": None if rev == "nogit" else rev}


def check_version(found: dict, expected: str) -> None:
    """Raise ValueError unless the dataset that `found` (lineage()'s result) describes has the
    content of `expected`: a version id "dvc:<md5>@git:<rev>" or the DVC hash "<md5>" alone. Only
    the content is compared: the git part names the code that looked at the data, not the data."""
    expected = (expected or "").strip()
    want = parse_version(expected)["dvc_md5"] if expected.startswith("dvc:") else expected
    if not want:
        raise ValueError("dataset_version: empty (give dvc:<md5>@git:<rev> or the DVC hash)")
    if want != found["dvc_md5"]:
        raise ValueError(f"dataset_version: {found.get('dataset')} is {found['version']}, not the requested "
                         f"{expected} (its content differs; a run pinned to a version stops before training)")


# ---------------------------------------------------------------- lineage
def _recorded_md5(dataset_dir: str) -> tuple[str | None, str | None]:
    """(md5, file) that DVC recorded for this directory: DIR.dvc, or an out in a dvc.lock
    of an enclosing DVC repository; (None, None) when DVC does not track it."""
    if storage.is_remote(dataset_dir):
        return None, None
    path = os.path.abspath(storage.local_path(dataset_dir)).rstrip(os.sep)
    dvc_file = path + ".dvc"
    if os.path.isfile(dvc_file):
        import yaml
        outs = (yaml.safe_load(open(dvc_file)) or {}).get("outs") or []
        return (outs[0].get("md5") if outs else None), dvc_file
    root = _repo_root(path)
    lock = os.path.join(root, "dvc.lock") if root else None
    if lock and os.path.isfile(lock):
        import yaml
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        for stage in ((yaml.safe_load(open(lock)) or {}).get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if out.get("path") == rel:
                    return out.get("md5"), lock
    return None, None


def _repo_root(path: str) -> str | None:
    """The nearest enclosing directory that holds a .dvc/ directory."""
    d = path if os.path.isdir(path) else os.path.dirname(path)
    while True:
        if os.path.isdir(os.path.join(d, ".dvc")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def lineage(dataset_dir: str) -> dict[str, Any]:
    """Version id and where the dataset came from: {"dataset", "version", "dvc_md5",
    "git_rev", "git_dirty", "dvc_recorded" (what DVC's files say, or None), "dvc_file",
    "matches_dvc", "parent", "parent_version", "content_hash", "created", "src"}."""
    from model_code.data import dataset as ds
    if storage.exists(storage.join(dataset_dir, "_parts")) and not storage.exists(
            storage.join(dataset_dir, "dataset.json")):
        # an interrupted ingest: a version id would name records that are not all there
        raise ValueError(f"{dataset_dir} is a partial ingest (_parts/ and no dataset.json): run the same "
                         f"ingest again to finish it, then version it")
    md5 = dir_md5(dataset_dir)
    code = _code_dir(dataset_dir)
    rev = git_head(code)
    meta: dict = {}
    if storage.exists(storage.join(dataset_dir, "dataset.json")):
        meta = ds.info(dataset_dir)
    # recaption records an absolute path or URI; an older or hand-written relative one is read
    # against this dataset, not the working directory (data/dataset.py parent_of)
    parent = ds.parent_of(dataset_dir, meta)
    parent_version = None
    if parent:
        try:
            parent_version = dataset_version(parent)
        except (ValueError, storage.StorageError, OSError):
            parent_version = None  # the parent is not reachable from here: keep its name only
    recorded, dvc_file = _recorded_md5(dataset_dir)
    return {"dataset": dataset_dir, "version": f"dvc:{md5}@git:{rev or 'nogit'}",
            "dvc_md5": md5, "git_rev": rev,
            "git_dirty": git_dirty(code) if rev else None,
            "dvc_recorded": recorded, "dvc_file": dvc_file,
            "matches_dvc": (recorded == md5) if recorded else None,
            "parent": parent, "parent_version": parent_version,
            "content_hash": meta.get("content_hash"), "created": meta.get("created"),
            "src": meta.get("src")}


# ---------------------------------------------------------------- DVC operations
@contextmanager
def _repo(repo_dir: str) -> Iterator[Any]:
    if not os.path.isdir(os.path.join(repo_dir, ".dvc")):
        raise ValueError(f"repo_dir={repo_dir}: not a DVC repository (no .dvc/ directory)")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")  # no phoning home from tests or clusters
    from dvc.repo import Repo
    with Repo(repo_dir) as repo:
        yield repo


@contextmanager
def _dvc_errors(what: str) -> Iterator[None]:
    from dvc.exceptions import DvcException
    try:
        yield
    except DvcException as e:
        cause = e.__cause__ or e.__context__
        detail = f": {storage._cause(cause)}" if cause else ""
        raise VersionError(f"{what} failed: {e}{detail}") from e


def _abs(repo_dir: str, path: str) -> str:
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(repo_dir, path))


def _targets(repo_dir: str, targets: list[str] | None) -> list[str] | None:
    return [_abs(repo_dir, t) for t in targets] if targets else None


def _rel(repo_dir: str, path: str) -> str:
    full = path if os.path.isabs(path) else os.path.join(repo_dir, path)
    rel = os.path.relpath(os.path.abspath(full), os.path.abspath(repo_dir))
    if rel.startswith(".."):
        raise ValueError(f"dataset_dir={path} is outside the DVC repository {repo_dir}")
    return rel


def track(dataset_dir: str, repo_dir: str = ".") -> dict[str, str]:
    """`dvc add DATASET` in repo_dir: caches the data, writes DATASET.dvc and a .gitignore
    entry (commit both). Returns {"dvc_file", "md5", "version"}."""
    rel = _rel(repo_dir, dataset_dir)
    with _repo(repo_dir) as repo, _dvc_errors(f"dvc add {rel}"):
        repo.add([_abs(repo_dir, rel)])  # DVC resolves relative targets against the cwd
    dvc_file = os.path.join(repo_dir, rel + ".dvc")
    md5, _ = _recorded_md5(os.path.join(repo_dir, rel))
    return {"dvc_file": dvc_file, "md5": md5,
            "version": f"dvc:{md5}@git:{git_head(repo_dir) or 'nogit'}"}


def push(repo_dir: str = ".", remote: str | None = None, targets: list[str] | None = None) -> int:
    """`dvc push` (to `remote`, default: the repo's default remote) of everything the repo
    tracks, or of `targets` (paths relative to repo_dir); returns the files transferred."""
    with _repo(repo_dir) as repo, _dvc_errors(f"dvc push to remote {remote or '(default)'}"):
        return int(repo.push(targets=_targets(repo_dir, targets), remote=remote))


def pull(repo_dir: str = ".", remote: str | None = None, targets: list[str] | None = None,
         force: bool = False) -> dict[str, Any]:
    """`dvc pull`: fetch from the remote into the cache and check out the workspace.
    Returns DVC's stats ({"fetched": n, "added": [...], "modified": [...], ...})."""
    with _repo(repo_dir) as repo, _dvc_errors(f"dvc pull from remote {remote or '(default)'}"):
        result = repo.pull(targets=_targets(repo_dir, targets), remote=remote, force=force)
    return {k: (v if isinstance(v, (int, list)) else list(v)) for k, v in (result.get("stats") or {}).items()}


def configure_s3_remote(repo_dir: str, name: str, url: str, endpoint_url: str | None = None,
                        default: bool = False, store_credentials: bool = False) -> dict[str, Any]:
    """Add or update an S3 (MinIO) remote.

    The endpoint (default: EASEL_S3_ENDPOINT_URL / AWS_ENDPOINT_URL*) goes into .dvc/config,
    which is committed; credentials are read by DVC from AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY at run time, or with store_credentials=True are copied from the
    environment into .dvc/config.local (git-ignored). DVC does not create buckets."""
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ValueError(f"url={url!r} must be an s3://bucket[/prefix] URL")
    if not name or any(c in name for c in " []\"'"):
        raise ValueError(f"name={name!r} is not a usable remote name")
    endpoint_url = endpoint_url or storage._endpoint()
    creds = {}
    if store_credentials:
        for var, key in (("AWS_ACCESS_KEY_ID", "access_key_id"),
                         ("AWS_SECRET_ACCESS_KEY", "secret_access_key")):
            if not os.environ.get(var):
                raise ValueError(f"store_credentials=True but {var} is not set in the environment")
            creds[key] = os.environ[var]
    with _repo(repo_dir) as repo, _dvc_errors(f"configuring remote {name}"):
        with repo.config.edit("repo") as conf:
            section = {"url": url}
            if endpoint_url:
                section["endpointurl"] = endpoint_url
            if os.environ.get("AWS_REGION"):
                section["region"] = os.environ["AWS_REGION"]
            conf["remote"][name] = section
            if default:
                conf["core"]["remote"] = name
        if creds:
            with repo.config.edit("local") as conf:
                conf["remote"].setdefault(name, {}).update(creds)
    return {"name": name, "url": url, "endpointurl": endpoint_url, "default": default,
            "credentials": ".dvc/config.local" if creds else "environment"}
