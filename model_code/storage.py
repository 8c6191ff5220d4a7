"""One object-store abstraction for the whole library (fsspec underneath).

URIs: a plain path or ``file://...`` (the default: a local directory) and ``s3://bucket/key``
(MinIO in a cluster, SeaweedFS in tests). The S3 endpoint and credentials come from the
environment, never from code:

- ``EASEL_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` /
  ``MLFLOW_S3_ENDPOINT_URL``): the S3 endpoint, e.g. ``http://minio.easel:9000``;
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``): credentials;
- ``AWS_REGION`` (default ``us-east-1``).

Errors from the store are translated into ``StorageError`` with a message that says what is
wrong (missing object, bad credentials, unreachable endpoint) and which URI was involved.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator

import fsspec


class StorageError(RuntimeError):
    """A store operation failed; the message names the URI and the cause."""


def _endpoint() -> str | None:
    for var in ("EASEL_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                "MLFLOW_S3_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def is_remote(uri: str) -> bool:
    return scheme(uri) != "file"


def local_path(uri: str) -> str:
    """The filesystem path of a file:// URI or a plain path."""
    if is_remote(uri):
        raise StorageError(f"{uri} is not a local path")
    return uri[len("file://"):] if uri.startswith("file://") else uri


def location(uri: str) -> str:
    """A directory as a prefix to compare locations by: a local path with its links and `..`
    resolved, a URI as written; one trailing separator either way."""
    if is_remote(uri):
        return uri.rstrip("/") + "/"
    return os.path.join(os.path.realpath(local_path(uri)), "")


def within(a: str, b: str) -> bool:
    """Directory `a` is `b` or lies inside it (a local path and a URI never do)."""
    return is_remote(a) == is_remote(b) and location(a).startswith(location(b))


_S3_ENV = ("AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
_S3_FS: dict[tuple, fsspec.AbstractFileSystem] = {}


def filesystem(uri: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for a URI; s3 is configured from the environment."""
    sch = scheme(uri)
    if sch == "file":
        return fsspec.filesystem("file", auto_mkdir=True)
    if sch in ("s3", "s3a"):
        # One instance per (environment, process): a new S3FileSystem builds a botocore client,
        # ~0.5-1 s each time, while a reused one answers in ~10-30 ms. Keyed on the variables
        # it is configured from, so changed credentials/endpoint get a new client, and on the
        # pid, since a client's event loop does not survive a fork.
        env_key = (_endpoint(), os.getpid(), *(os.environ.get(v) for v in _S3_ENV))
        fs = _S3_FS.get(env_key)
        if fs is None:
            opts: dict = {"client_kwargs": {"region_name": os.environ.get("AWS_REGION", "us-east-1")},
                          # fresh listings every time: shards appear while other workers write
                          "use_listings_cache": False, "skip_instance_cache": True}
            if _endpoint():
                opts["endpoint_url"] = _endpoint()
            fs = _S3_FS[env_key] = fsspec.filesystem("s3", **opts)
        return fs
    try:
        return fsspec.filesystem(sch)
    except (ValueError, ImportError) as e:
        raise StorageError(f"unsupported URI scheme {sch!r} in {uri}: use a path, file:// or s3://") from e


def _strip(uri: str) -> str:
    """The path as the filesystem wants it (no scheme for file, bucket/key for s3)."""
    return local_path(uri) if not is_remote(uri) else uri.split("://", 1)[1]


def _with_scheme(uri_like: str, path: str) -> str:
    return path if not is_remote(uri_like) else f"{scheme(uri_like)}://{path}"


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


@contextmanager
def _errors(uri: str, action: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise StorageError(f"{action} {uri}: no such object or directory") from e
    except PermissionError as e:
        raise StorageError(f"{action} {uri}: {_cause(e)}") from e
    except OSError as e:
        raise StorageError(f"{action} {uri}: {_cause(e)}") from e
    except Exception as e:  # botocore and aiohttp errors are not OSError subclasses
        raise StorageError(f"{action} {uri}: {_cause(e)}") from e


def _s3_error_code(e: BaseException) -> str | None:
    """The S3 error code (e.g. "SignatureDoesNotMatch") from botocore's ClientError, which s3fs
    keeps as the __cause__ of the PermissionError/OSError it raises."""
    seen = 0
    while e is not None and seen < 8:
        code = (getattr(e, "response", None) or {}).get("Error", {}).get("Code")
        if code:
            return str(code)
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _cause(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    code = _s3_error_code(e) or ""
    low = f"{text} {code}".lower()
    # a HEAD request's 403 has no body, so a bad key shows only as "Forbidden": treat every
    # 403 as a credentials problem and say both possibilities
    if isinstance(e, PermissionError) or any(k in low for k in (
            "invalidaccesskeyid", "signaturedoesnotmatch", "access denied", "accessdenied",
            "forbidden", "403", "does not exist in our records", "does not match the signature")):
        detail = f"{code}: {text}" if code and code not in text else text
        return (f"credentials rejected by the object store at {_endpoint() or 'the default AWS endpoint'}"
                f" ({detail.splitlines()[0][:200]}): the access key is unknown, the secret is wrong, or "
                f"they do not grant access to this object; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    if any(k in low for k in ("could not connect", "connect timeout", "connection refused",
                              "cannot connect")):
        return f"object store unreachable at {_endpoint() or 'the default endpoint'} ({text[:200]})"
    return text.splitlines()[0][:300]


def open_uri(uri: str, mode: str = "rb", **kw) -> IO:
    """Open a file at a URI (parent directories are created for local writes)."""
    fs = filesystem(uri)
    with _errors(uri, "open"):
        return fs.open(_strip(uri), mode, **kw)


def read_bytes(uri: str) -> bytes:
    with _errors(uri, "read"):
        return filesystem(uri).cat_file(_strip(uri))


def write_bytes(uri: str, data: bytes) -> None:
    with _errors(uri, "write"):
        with open_uri(uri, "wb") as f:
            f.write(data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str) -> bool:
    with _errors(uri, "stat"):
        return filesystem(uri).exists(_strip(uri))


def size(uri: str) -> int:
    with _errors(uri, "stat"):
        return int(filesystem(uri).size(_strip(uri)))


def ls(uri: str, pattern: str | None = None) -> list[str]:
    """Entries directly under a directory/prefix (full URIs, sorted); optional glob on names."""
    fs = filesystem(uri)
    with _errors(uri, "list"):
        if not fs.exists(_strip(uri)):
            return []
        names = sorted(fs.ls(_strip(uri), detail=False))
    out = [_with_scheme(uri, n) for n in names]
    if pattern:
        import fnmatch
        out = [u for u in out if fnmatch.fnmatch(posixpath.basename(u.rstrip("/")), pattern)]
    return out


def glob(uri_pattern: str) -> list[str]:
    fs = filesystem(uri_pattern)
    with _errors(uri_pattern, "glob"):
        return sorted(_with_scheme(uri_pattern, p) for p in fs.glob(_strip(uri_pattern)))


def makedirs(uri: str) -> None:
    if not is_remote(uri):
        os.makedirs(local_path(uri), exist_ok=True)
    # object stores have no directories


def remove(uri: str, recursive: bool = False) -> None:
    fs = filesystem(uri)
    with _errors(uri, "remove"):
        if fs.exists(_strip(uri)):
            fs.rm(_strip(uri), recursive=recursive)


def put_file(local: str, uri: str) -> None:
    """Upload a local file (multipart for large files, by s3fs)."""
    if not is_remote(uri):
        dst = local_path(uri)
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        if os.path.abspath(local) != os.path.abspath(dst):
            shutil.copyfile(local, dst)
        return
    with _errors(uri, "upload to"):
        filesystem(uri).put_file(local, _strip(uri))


def get_file(uri: str, local: str) -> str:
    """Download to a local path; returns the local path."""
    os.makedirs(os.path.dirname(os.path.abspath(local)) or ".", exist_ok=True)
    if not is_remote(uri):
        if os.path.abspath(local_path(uri)) != os.path.abspath(local):
            shutil.copyfile(local_path(uri), local)
        return local
    with _errors(uri, "download"):
        filesystem(uri).get_file(_strip(uri), local)
    return local


def put_dir(local_dir: str, uri: str) -> None:
    """Upload a local directory tree under a URI prefix."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            put_file(src, join(uri, rel))


def files_under(src: str, skip: tuple[str, ...] = (), detail: bool = False) -> list[tuple]:
    """Every file under `src` (a directory or URI prefix) as (path relative to src, URI), sorted,
    leaving out the top-level entries named in `skip` (e.g. a trained part's checkpoints/).
    detail=True adds each file's info (size, mtime or ETag) from the same listing: one request on
    S3, not one per file."""
    fs = filesystem(src)
    # fsspec's local find returns absolute paths whatever it was given: compare like with like
    base = _strip(src).rstrip("/") if is_remote(src) else os.path.abspath(local_path(src))
    with _errors(src, "list"):
        found = fs.find(base, detail=True)
    out = []
    for path, info in found.items():
        rel = path[len(base):].lstrip("/") if is_remote(src) else os.path.relpath(path, base).replace(os.sep, "/")
        if rel and rel.split("/", 1)[0] not in skip:
            uri = _with_scheme(src, path) if is_remote(src) else path
            out.append((rel, uri, info) if detail else (rel, uri))
    return sorted(out, key=lambda row: row[0])


def fingerprint(uri: str) -> str:
    """What a file or a directory/prefix holds, cheaply (no content read): a hash of every file's
    relative path, size and modification time (ETag on S3). Adding, removing or rewriting a file
    changes it; so does a copy (new times)."""
    import hashlib
    import json
    fs = filesystem(uri)
    with _errors(uri, "stat"):
        if fs.isfile(_strip(uri)):
            found = [("", fs.info(_strip(uri)))]
        else:
            found = [(rel, info) for rel, _, info in files_under(uri, detail=True)]
    rows = [[rel, info.get("size"), info.get("mtime") or info.get("ETag") or info.get("LastModified")]
            for rel, info in found]
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:24]


def copy_dir(src: str, dst: str, skip: tuple[str, ...] = ()) -> int:
    """Copy every file under `src` (a directory or URI prefix) to `dst`, leaving out the top-level
    entries named in `skip` (e.g. a trained part's checkpoints/); returns the files copied."""
    found = files_under(src, skip)
    for rel, uri in found:
        if is_remote(src):
            with tempfile.TemporaryDirectory() as tmp:
                put_file(get_file(uri, os.path.join(tmp, "f")), join(dst, rel))
        else:
            put_file(uri, join(dst, rel))
    return len(found)


def move(src: str, dst: str) -> None:
    """Rename a file (same store): a file written under a side name appears whole under `dst`."""
    with _errors(src, "move"):
        filesystem(src).mv(_strip(src), _strip(dst))


def get_dir(uri: str, local_dir: str) -> str:
    """Download everything under a URI prefix into a local directory."""
    if not is_remote(uri):
        src = local_path(uri)
        if os.path.abspath(src) != os.path.abspath(local_dir):
            shutil.copytree(src, local_dir, dirs_exist_ok=True)
        return local_dir
    fs = filesystem(uri)
    base = _strip(uri).rstrip("/")
    with _errors(uri, "download"):
        for p in fs.find(base):
            rel = p[len(base):].lstrip("/")
            dst = os.path.join(local_dir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            fs.get_file(p, dst)
    return local_dir
