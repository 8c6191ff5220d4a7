"""Source readers: every supported input becomes one stream of records, in a deterministic order.

Kinds (`detect_kind`, or `kind=` to force one):
  folder      an image directory, recursive; captions in captions.jsonl / metadata.jsonl files
              (fields: file or key, caption, anything else kept) or beside each image as KEY.txt
              (+ optional KEY.json metadata). A raw Shapes source (synth.py) is one of these.
  webdataset  .tar shards (a directory of them, one .tar, a glob, a {000..009} brace pattern or a
              list): members KEY.jpg/png/webp/... + KEY.txt and/or KEY.json
  manifest    a parquet or CSV file with an image column (path/file/image/url/..., local or s3://,
              relative paths against the manifest's directory; or image bytes) and a caption
              column (caption/text/alt/...), names auto-detected
  shapes      the Shapes generator itself: shapes://n=1000,size=64,seed=0[,curated_fraction=0.1]

A record is a plain dict (picklable, so ingest can ship it to worker processes):
  key              unique id (sanitised: [A-Za-z0-9_-], no dots, so WebDataset keeps it whole)
  source           where it came from: a path/URI, "TAR#MEMBER", "FILE#line=N", "shapes://...#i"
  image            encoded image bytes, or None while `ref` is unresolved (lazy) or on error
  ref              lazy image: ("uri", URI) or ("shapes", scene); `load_image` resolves it
  caption, curated_caption, scene, license, opt_out   the known fields (None when absent)
  meta             every other field the source carried
  error            None, or (reason, detail): the record could not even be read. It is still
                   yielded, so that ingest quarantines it: nothing is dropped silently.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
from typing import Any, Iterable, Iterator

from model_code import storage

KINDS = ("folder", "webdataset", "manifest", "shapes")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
JSONL_NAMES = ("captions.jsonl", "metadata.jsonl")  # ours, and the Hugging Face imagefolder one

# Field names recognised in jsonl lines, sidecar json, tar json and manifest columns (lower case).
FILE_FIELDS = ("file", "file_name", "filename", "path", "image", "image_path", "filepath",
               "file_path", "url", "image_url", "uri", "image_uri")
CAPTION_FIELDS = ("caption", "text", "alt", "alt_text", "alttext", "txt", "prompt", "description")
KEY_FIELDS = ("key", "id", "__key__")
KNOWN = ("curated_caption", "scene", "license", "opt_out")

# Reasons for records that cannot be read (ingest adds the decode/caption ones).
MISSING_IMAGE = "missing image"
UNREADABLE = "unreadable file"
BAD_METADATA = "bad metadata"
CAPTION_NOT_UTF8 = "caption not UTF-8"
UNREADABLE_TAR = "unreadable tar"
OUTSIDE_SOURCE = "outside the source"            # a symlink or path that leaves the source's root
ORPHAN_CAPTION = "caption without an image"      # KEY.txt / KEY.json with no KEY.<image> beside it
NOT_A_FILE = "not a file"                        # a directory named like an image (x.png/), a FIFO, a link in a tar
UNSUPPORTED_URI = "unsupported URI"              # http(s)://, local://, ...: only paths, file:// and s3:// are read
UNSUPPORTED_FORMAT = "unsupported image format"  # x.avif, x.heic, ...: an image Easel cannot decode
DUPLICATE_MEMBER = "duplicate tar member"        # KEY.png twice in one tar sample: which is the image?
# image files by extension that Pillow (as installed) cannot decode: quarantined, not skipped
UNSUPPORTED_IMAGE_EXTS = (".avif", ".heic", ".heif", ".jxl", ".svg", ".jp2", ".j2k", ".psd", ".dng",
                          ".cr2", ".nef", ".arw", ".raw")
READ_SCHEMES = ("file", "s3", "s3a")             # what a manifest's image column may name


def safe_text(text: str) -> str:
    """`text`, writable as UTF-8: a file name's undecodable bytes (os.walk gives them as
    surrogate escapes) and lone surrogates from JSON ("\\ud800") become backslash escapes,
    so a record's source or a quarantine detail can always be written."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# ---------------------------------------------------------------- records
def sanitize_key(text: str) -> str:
    """A key that survives tar member names and WebDataset's first-dot split."""
    s = text.replace("\\", "/").strip("/").replace("/", "__")
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", s).strip("_") or "_"
    if len(s) > 160:  # keep tar names short; the hash keeps long keys distinct
        s = s[:140] + "-" + hashlib.sha1(s.encode()).hexdigest()[:16]
    return s


def make_record(key: str, source: str, *, image: bytes | None = None, ref: tuple | None = None,
                fields: dict | None = None, error: tuple[str, str] | None = None) -> dict[str, Any]:
    """A record from raw fields: known names go to their slots, the rest to `meta`."""
    rec: dict[str, Any] = {"key": sanitize_key(key), "source": safe_text(source), "image": image, "ref": ref,
                           "caption": None, "curated_caption": None, "scene": None, "license": None,
                           "opt_out": False, "meta": {}, "error": error}
    fields = fields or {}
    cap = _pick(list(fields), CAPTION_FIELDS)  # "caption" wins over "text" over "alt" ...
    for name, value in fields.items():
        low = name.lower()
        if name == cap:
            rec["caption"] = value
        elif low in KNOWN:
            rec[low] = value
        elif low in KEY_FIELDS or low in FILE_FIELDS:
            continue  # already used for key / image
        else:
            rec["meta"][name] = value
    if isinstance(rec["scene"], str):  # manifests carry the scene as a JSON string
        try:
            rec["scene"] = json.loads(rec["scene"]) if rec["scene"].strip() else None
        except ValueError as e:
            rec["error"] = rec["error"] or (BAD_METADATA, f"scene is not valid JSON: {e}")
    if rec["scene"] is not None and not isinstance(rec["scene"], dict):
        rec["error"] = rec["error"] or (BAD_METADATA, f"scene must be a JSON object (a scene graph), "
                                                      f"got {type(rec['scene']).__name__}")
    rec["opt_out"] = _truthy(rec["opt_out"])
    return rec


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y", "t")
    return bool(v) if v is not None and v == v else False  # NaN -> False


def _decode_caption(data: bytes, where: str) -> tuple[str | None, tuple[str, str] | None]:
    try:  # utf-8-sig: a leading BOM (Windows Notepad) is an encoding mark, not text
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        return None, (CAPTION_NOT_UTF8, f"{where}: {e}")


def load_image(rec: dict) -> dict:
    """Resolve a lazy record in place: read `ref` into `image`, or set `error` (never raises
    for a bad input; ingest workers call this so reads run in parallel)."""
    if rec["image"] is not None or rec["error"] is not None or rec["ref"] is None:
        return rec
    what, arg = rec["ref"]
    if what == "shapes":
        from model_code.data.synth import render_png
        rec["image"] = render_png(arg)
    elif what == "uri":
        if not storage.is_remote(arg) and _special(arg):
            # a FIFO would block the read forever, a device would stream without end
            rec["error"] = (NOT_A_FILE, f"{safe_text(arg)} is not a regular file")
            rec["ref"] = None
            return rec
        try:
            rec["image"] = storage.read_bytes(arg)
        except (storage.StorageError, OSError) as e:
            missing = isinstance(e.__cause__ or e, FileNotFoundError) and not os.path.islink(arg)
            rec["error"] = (MISSING_IMAGE if missing else UNREADABLE, f"{arg}: {e}")
    else:
        raise ValueError(f"unknown image ref kind {what!r}")
    rec["ref"] = None
    return rec


def _special(path: str) -> bool:
    """A local path that exists but is no regular file (FIFO, socket, device, directory)."""
    try:
        return os.path.exists(path) and not os.path.isfile(path)
    except (ValueError, OSError):   # a NUL in the path: not a file either
        return True


# ---------------------------------------------------------------- detection
def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[") or ("{" in s and ".." in s)


def _expand(src: str | Iterable[str]) -> list[str]:
    """A list of shard URIs from a list, a glob or a {a..b} brace pattern."""
    if not isinstance(src, str):
        return [str(s) for s in src]
    if "{" in src and ".." in src:
        from braceexpand import braceexpand
        return list(braceexpand(src))
    if _has_glob(src):
        return storage.glob(src)
    return [src]


def detect_kind(src: str | list[str]) -> str:
    """"folder" | "webdataset" | "manifest" | "shapes" for a source string (or list of tars)."""
    if not isinstance(src, str):
        return "webdataset"
    if src.startswith("shapes://"):
        return "shapes"
    low = src.lower().rstrip("/")
    if low.endswith((".parquet", ".pq", ".csv", ".tsv", ".csv.gz")):
        return "manifest"
    if low.endswith(".tar") or _has_glob(src):
        return "webdataset"
    if not storage.exists(src):
        raise ValueError(f"source {src!r} does not exist")
    if not storage.is_remote(src) and not os.path.isdir(storage.local_path(src)):
        raise ValueError(f"source {src!r} is a file, not a folder of images, WebDataset .tar shards or a "
                         f".parquet/.csv/.tsv manifest: point at the folder it is in, or list it in a manifest")
    entries = [posixpath.basename(u.rstrip("/")).lower() for u in storage.ls(src)]
    if any(e.endswith(".tar") for e in entries) and not any(
            e.endswith(IMAGE_EXTS) or e in JSONL_NAMES for e in entries):
        return "webdataset"
    return "folder"


def iter_records(src: str | list[str], kind: str = "auto", lazy: bool = False,
                 allow_roots: Iterable[str] = ()) -> Iterator[dict]:
    """All records of a source, in a deterministic order. With lazy=True images that live in
    their own files (folder, manifest, shapes) are left as `ref` for `load_image`.
    `allow_roots`: directories (or s3:// prefixes) a manifest's images may come from besides its own."""
    kind = detect_kind(src) if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be one of auto, {', '.join(KINDS)}; got {kind!r}")
    if kind == "manifest":
        reader = lambda s: read_manifest(s, allow_roots)  # noqa: E731
    else:
        reader = {"folder": read_folder, "webdataset": read_webdataset, "shapes": read_shapes}[kind]
    for rec in reader(src):
        yield rec if lazy else load_image(rec)


def fingerprint(src: str | list[str], kind: str) -> str | None:
    """What the source holds now, cheaply (paths, sizes, modification times; no content read):
    ingest compares it with the one it recorded, so a finished dataset is not returned for a
    source that changed since, nor a partial one resumed on other records. None for shapes://
    (the URI is the whole identity). A manifest's own bytes are covered, not the images it names."""
    if kind == "shapes":
        return None
    uris = _expand(src) if kind == "webdataset" and (not isinstance(src, str) or _has_glob(src)) else [src]
    parts = [f"{u}={storage.fingerprint(u)}" for u in uris]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- (a) image folder
def _list_files(root: str) -> list[str]:
    """Relative paths ('/'-separated) of all files under root, sorted. Local walks do not
    follow directory symlinks (no loops); a file symlink that loops is listed and fails on read.
    Entries that are no regular file (FIFOs, sockets, devices) are left to `_not_files`."""
    if storage.is_remote(root):
        fs = storage.filesystem(root)   # one client per process (storage caches it)
        base = root.split("://", 1)[1].rstrip("/")
        return sorted(p[len(base) + 1:] for p in fs.find(base))
    base = storage.local_path(root)
    out = []
    for d, dirs, files in os.walk(base, followlinks=False):
        dirs.sort()
        rel = os.path.relpath(d, base)
        for name in files:
            if not _special(os.path.join(d, name)):
                out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(out)


def _not_files(root: str) -> list[tuple[str, str]]:
    """(relative path, why) of what is listed but no regular file: directories named like
    images (x.png/), FIFOs, sockets and devices (reading a FIFO blocks forever). Not records,
    but accounted for (quarantined as "not a file"), never silently skipped."""
    if storage.is_remote(root):
        return []
    base = storage.local_path(root)
    out = []
    for d, dirs, files in os.walk(base, followlinks=False):
        rel = os.path.relpath(d, base)
        name_of = lambda n: (n if rel == "." else f"{rel}/{n}").replace(os.sep, "/")  # noqa: E731
        out += [(name_of(n), "a directory named like an image") for n in dirs
                if posixpath.splitext(n)[1].lower() in IMAGE_EXTS]
        out += [(name_of(n), "not a regular file (a FIFO, socket or device)") for n in files
                if _special(os.path.join(d, n))]
    return sorted(out)


def escapes(src: str, rel: str) -> str | None:
    """Where `rel` really leads, when that is outside the source `src` (None when it stays in).

    A folder source is read only inside its own root: a path with `..` or an absolute path, and a
    symlink (anywhere along the path) whose target resolves outside the root's real path, would
    read another file's contents into the dataset (in a pod: service-account tokens, mounted
    secrets). Object-store sources have no symlinks; only their paths are checked."""
    norm = posixpath.normpath(rel)
    if norm.startswith("../") or norm == ".." or posixpath.isabs(rel):
        return rel
    if storage.is_remote(src):
        return None
    base = os.path.realpath(storage.local_path(src))
    try:
        real = os.path.realpath(os.path.join(base, norm))
    except ValueError:   # a NUL byte: no file has that name
        return rel
    return None if real == base or real.startswith(base + os.sep) else real


def _outside(src: str, rel: str, what: str) -> tuple[str, str] | None:
    real = escapes(src, rel)
    if real is None:
        return None
    return (OUTSIDE_SOURCE, f"{storage.join(src, rel) if not posixpath.isabs(rel) else rel}: the "
                            f"{what} resolves to {real}, outside the source {src}; nothing outside "
                            f"the source is read")


def _split_ext(rel: str) -> tuple[str, str]:
    stem, ext = posixpath.splitext(rel)
    return stem, ext.lower()


def read_folder(src: str) -> Iterator[dict]:
    files = _list_files(src)
    if not files and not storage.exists(src):
        raise ValueError(f"source {src!r} does not exist")
    images = [f for f in files if _split_ext(f)[1] in IMAGE_EXTS]
    sidecars = {f for f in files if _split_ext(f)[1] in (".txt", ".json")}
    side_of = {_split_ext(f): f for f in sorted(sidecars)}   # (stem, ".txt") -> "a/KEY.TXT" (any case)
    claimed: set[str] = set()
    # 1) caption files, line by line (streamed: a million-line jsonl is never held whole)
    for jl in (f for f in files if posixpath.basename(f) in JSONL_NAMES):
        bad = _outside(src, jl, "caption file")
        if bad:
            yield make_record(posixpath.splitext(jl)[0], storage.join(src, jl), error=bad)
            continue
        yield from _read_jsonl(src, jl, claimed, set(files))
    # 2) images no caption file named: KEY.txt / KEY.json beside them, or no caption at all
    stems = set()
    for rel in images:
        stem, _ = _split_ext(rel)
        stems.add(stem)
        if rel in claimed:
            continue
        uri = storage.join(src, rel)
        fields: dict[str, Any] = {}
        error = _outside(src, rel, "image")
        js, txt = side_of.get((stem, ".json")), side_of.get((stem, ".txt"))
        for side in (js, txt):
            if error is None and side is not None:
                error = _outside(src, side, "caption" if side == txt else "metadata file")
        if error is not None:
            yield make_record(stem, uri, error=error)
            continue
        if js is not None:
            fields, error = _read_json_sidecar(storage.join(src, js))
        if txt is not None and error is None:
            where = storage.join(src, txt)
            try:
                text, error = _decode_caption(storage.read_bytes(where), where)
            except storage.StorageError as e:
                text, error = None, (UNREADABLE, str(e))
            if text is not None:
                fields["caption"] = text
        yield make_record(stem, uri, ref=("uri", uri), fields=fields, error=error)
    # 3) what looks like part of a record but is none: caption files with no image beside them,
    #    directories named like images. Accounted for (quarantined), never silently skipped.
    for rel, why in _not_files(src):
        suffix = "-dir" if why.startswith("a directory") else "-special"
        yield make_record(_split_ext(rel)[0] + suffix, storage.join(src, rel),
                          error=(NOT_A_FILE, f"{storage.join(src, rel)} is {why}"))
    for rel in (f for f in files if _split_ext(f)[1] in UNSUPPORTED_IMAGE_EXTS):
        yield make_record(_split_ext(rel)[0], storage.join(src, rel), error=(
            UNSUPPORTED_FORMAT, f"{storage.join(src, rel)}: {_split_ext(rel)[1]} images are not decoded "
                                f"(supported: {', '.join(e[1:] for e in IMAGE_EXTS)}); convert it first"))
    for rel in sorted(sidecars):
        stem = _split_ext(rel)[0]
        if stem not in stems and posixpath.basename(rel) not in JSONL_NAMES:
            kind = "caption" if rel.endswith(".txt") else "metadata"
            yield make_record(f"{stem}-{rel.rsplit('.', 1)[1]}", storage.join(src, rel),
                              error=(ORPHAN_CAPTION, f"{storage.join(src, rel)}: a {kind} file with no image "
                                                     f"{stem}.<{'|'.join(e[1:] for e in IMAGE_EXTS)}> beside it"))


def _read_json_sidecar(uri: str) -> tuple[dict, tuple[str, str] | None]:
    try:
        obj = json.loads(storage.read_bytes(uri).decode("utf-8"))
    except UnicodeDecodeError as e:
        return {}, (CAPTION_NOT_UTF8, f"{uri}: {e}")
    except (ValueError, storage.StorageError) as e:
        return {}, (BAD_METADATA, f"{uri}: {e}")
    if not isinstance(obj, dict):
        return {}, (BAD_METADATA, f"{uri}: expected a JSON object, got {type(obj).__name__}")
    return obj, None


def _first(obj: dict, names: tuple[str, ...]) -> Any:
    for k, v in obj.items():   # an empty cell names nothing (an empty key would become "_")
        if k.lower() in names and v is not None and not (isinstance(v, str) and not v.strip()):
            return v
    return None


def _read_jsonl(src: str, jl: str, claimed: set[str], files: set[str]) -> Iterator[dict]:
    jl_uri = storage.join(src, jl)
    jl_dir = posixpath.dirname(jl)
    with storage.open_uri(jl_uri, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{jl_uri}#line={n}"
            error = None
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                # still parse it (lossily) to learn which image it names, so that image is
                # quarantined under its own key rather than reappearing without a caption
                line, error = raw.decode("utf-8", "replace"), (CAPTION_NOT_UTF8, f"{where}: {e}")
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as e:
                yield make_record(f"{posixpath.splitext(jl)[0]}-line{n}", where,
                                  error=(BAD_METADATA, f"{where}: invalid JSON ({e})"))
                continue
            file = _first(obj, FILE_FIELDS)
            key = _first(obj, KEY_FIELDS)
            if file is None and key is not None:  # key only: the image is KEY.<ext> beside it
                file = next((f"{key}{e}" for e in IMAGE_EXTS
                             if posixpath.join(jl_dir, f"{key}{e}") in files), f"{key}.png")
            if file is None:
                yield make_record(f"{posixpath.splitext(jl)[0]}-line{n}", where,
                                  error=(BAD_METADATA, f"{where}: names no image (no file or key field)"))
                continue
            if "\x00" in str(file):
                yield make_record(str(key) if key is not None else f"{posixpath.splitext(jl)[0]}-line{n}", where,
                                  error=(BAD_METADATA, f"{where}: the image path {str(file)!r} holds a NUL byte"))
                continue
            rel = posixpath.normpath(posixpath.join(jl_dir, str(file)))
            bad = _outside(src, rel, "image named by the caption file")
            if bad:
                yield make_record(str(key) if key is not None else f"{posixpath.splitext(jl)[0]}-line{n}",
                                  where, error=bad)
                continue
            claimed.add(rel)
            uri = storage.join(src, rel)
            rec = make_record(str(key) if key is not None else _split_ext(rel)[0], uri,
                              ref=("uri", uri), fields=obj, error=error)
            if error is None and rec["error"] is None and rel not in files and not storage.exists(uri):
                rec["error"] = (MISSING_IMAGE, f"{where} names {uri}, which does not exist")
            yield rec


# ---------------------------------------------------------------- (b) WebDataset tars
def _wds_split(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the basename."""
    d, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def read_webdataset(src: str | list[str]) -> Iterator[dict]:
    if isinstance(src, str) and not _has_glob(src) and not src.lower().endswith(".tar"):
        shards = storage.ls(src, "*.tar")  # a directory of shards
    else:
        shards = _expand(src)
    if not shards:
        raise ValueError(f"source {src!r} holds no .tar shards")
    for shard in shards:
        yield from _read_tar(shard)


def _group_record(shard: str, key: str, members: dict[str, bytes]) -> dict:
    """One WebDataset sample. Fields are matched on their last suffix ("d.webp" is an image,
    as webdataset's decoders do)."""
    source = f"{shard}#{key}"
    by_suffix: dict[str, str] = {}
    for ext in members:
        by_suffix.setdefault(ext.rsplit(".", 1)[-1], ext)
    members = {**members, **{suf: members[ext] for suf, ext in by_suffix.items()}}
    img_ext = next((e for e in (x.lstrip(".") for x in IMAGE_EXTS) if e in by_suffix), None)
    fields: dict[str, Any] = {}
    error = None
    if "json" in members:
        try:
            obj = json.loads(members["json"].decode("utf-8"))
            fields = obj if isinstance(obj, dict) else {"json": obj}
        except UnicodeDecodeError as e:
            error = (CAPTION_NOT_UTF8, f"{source}.json: {e}")
        except ValueError as e:
            error = (BAD_METADATA, f"{source}.json: {e}")
    if "txt" in members and error is None:
        text, error = _decode_caption(members["txt"], f"{source}.txt")
        if text is not None:
            fields = {k: v for k, v in fields.items() if k.lower() not in CAPTION_FIELDS}
            fields["caption"] = text
    if img_ext is None:
        error = error or (MISSING_IMAGE, f"{source}: no image member (has {', '.join(sorted(by_suffix.values()))})")
    else:
        source = f"{shard}#{key}.{by_suffix[img_ext]}"
    return make_record(key, source, image=members.get(img_ext) if img_ext else None,
                       fields=fields, error=error)


def _group(shard: str, key: str, members: dict[str, bytes], repeated: list[str]) -> dict:
    if repeated:   # webdataset itself refuses a sample with a repeated name: which one is the image?
        return make_record(key, f"{shard}#{key}", error=(
            DUPLICATE_MEMBER, f"{shard}: the sample {key!r} has more than one member named "
                              f"{', '.join(sorted(set(repeated)))}; none of its members is used"))
    return _group_record(shard, key, members)


def _unsafe_member(name: str) -> bool:
    norm = posixpath.normpath(name)
    return posixpath.isabs(name) or norm == ".." or norm.startswith("../")


def _read_tar(shard: str) -> Iterator[dict]:
    key, members, repeated, n = None, {}, [], 0
    try:
        with storage.open_uri(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for m in tar:  # streaming: members in file order, one group at a time
                if m.isdir():
                    continue   # structure, not data
                where = f"{shard}#{safe_text(m.name)}"
                if _unsafe_member(m.name):   # what `tar -x` would write outside its directory
                    n += 1
                    yield make_record(f"{m.name}-unsafe", where, error=(
                        OUTSIDE_SOURCE, f"{where}: an absolute or '..' member name leaves the archive; "
                                        f"such members are not read"))
                    continue
                if not m.isfile():   # symlinks, hard links, devices, FIFOs: never followed
                    n += 1
                    what = ("symlink" if m.issym() else "hard link" if m.islnk() else "special member")
                    yield make_record(f"{m.name}-link", where, error=(
                        NOT_A_FILE, f"{where}: a {what}{' to ' + safe_text(m.linkname) if m.linkname else ''}; "
                                    f"links and special members in a tar are not followed"))
                    continue
                k, ext = _wds_split(m.name)
                if k != key and key is not None:
                    yield _group(shard, key, members, repeated)
                    members, repeated = {}, []
                key = k
                if ext in members:
                    repeated.append(posixpath.basename(m.name))
                members[ext] = tar.extractfile(m).read()
                n += 1
    except (tarfile.TarError, OSError, EOFError, storage.StorageError) as e:
        if key is not None and members:
            yield _group(shard, key, members, repeated)
        # the rest of the shard cannot be read: one quarantine record says so, with where
        yield make_record(f"{posixpath.basename(shard)}-unreadable", shard,
                          error=(UNREADABLE_TAR, f"{shard}: {type(e).__name__}: {e} "
                                                 f"(after {n} members; the rest is unreadable)"))
        return
    if key is not None:
        yield _group(shard, key, members, repeated)


# ---------------------------------------------------------------- (c) parquet / CSV manifest
def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    low = {c.lower(): c for c in columns}
    return next((low[n] for n in names if n in low), None)


def _manifest_batches(src: str) -> Iterator[list[dict]]:
    low = src.lower()
    if low.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq
        with storage.open_uri(src, "rb") as f:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=1024):
                yield batch.to_pylist()
    else:
        import pandas as pd
        sep = "\t" if low.endswith(".tsv") else ","
        with storage.open_uri(src, "rb") as f:
            # strings throughout: an empty caption stays "" (quarantined as empty), not NaN. A
            # byte that is not UTF-8 stays in its row as a surrogate escape, so that row alone is
            # quarantined ("caption not UTF-8") instead of the whole file failing
            try:
                for chunk in pd.read_csv(f, sep=sep, dtype=str, keep_default_na=False, chunksize=1024,
                                         compression="gzip" if low.endswith(".gz") else None,
                                         encoding_errors="surrogateescape"):
                    yield chunk.to_dict("records")
            except (pd.errors.ParserError, UnicodeError) as e:   # a ragged row: the file is not CSV
                raise ValueError(f"manifest {src} cannot be parsed as {'TSV' if sep == chr(9) else 'CSV'}: "
                                 f"{e}") from None


def read_manifest(src: str, allow_roots: Iterable[str] = ()) -> Iterator[dict]:
    """Rows of a parquet/CSV manifest. An image path must lie (local: after resolving symlinks)
    inside the manifest's own directory or one of `allow_roots` (local directories or s3://
    prefixes): a manifest is data, and a row naming /var/run/secrets/... or another team's
    bucket must not turn what the platform can read into a dataset. URLs are never fetched."""
    if not storage.exists(src):
        raise ValueError(f"manifest {src!r} does not exist")
    base = posixpath.dirname(src) if storage.is_remote(src) else os.path.dirname(
        os.path.abspath(storage.local_path(src)))
    image_col = caption_col = None
    row_no = 0
    roots = [_root(base)] + [_root(str(r)) for r in allow_roots]
    for rows in _manifest_batches(src):
        for row in rows:
            if image_col is None:
                image_col = _pick(list(row), FILE_FIELDS)
                caption_col = _pick(list(row), CAPTION_FIELDS)
                if image_col is None:
                    raise ValueError(f"manifest {src}: no image column; expected one of "
                                     f"{', '.join(FILE_FIELDS)} (columns: {', '.join(row)})")
                if caption_col is None:
                    raise ValueError(f"manifest {src}: no caption column; expected one of "
                                     f"{', '.join(CAPTION_FIELDS)} (columns: {', '.join(row)})")
            row_no += 1
            yield _manifest_record(src, base, row, row_no, image_col, roots)


def _root(uri: str) -> str:
    """A root images may come from, normalised: a local directory's real path, or
    scheme://bucket/prefix without `..` or a trailing slash."""
    if storage.is_remote(uri):
        sch, rest = uri.split("://", 1)
        return f"{'s3' if sch == 's3a' else sch}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(os.path.abspath(storage.local_path(uri)))


def _inside_roots(path: str, roots: list[str]) -> bool:
    """`path` (a local path, symlinks resolved, or an object-store URI) lies in one of `roots`."""
    try:
        real = _root(path)
    except ValueError:   # a NUL byte: no file has that name
        return False
    sep = "/" if storage.is_remote(path) else os.sep
    return any(real == r or real.startswith(r.rstrip(sep) + sep) for r in roots)


def _manifest_record(src: str, base: str, row: dict, row_no: int, image_col: str,
                     roots: list[str] | None = None) -> dict:
    where = f"{src}#row={row_no}"
    value = row[image_col]
    key = _first(row, KEY_FIELDS)
    image = None
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes", "path"}
        image, value = value.get("bytes"), value.get("path")
    if isinstance(value, (bytes, bytearray)):
        image, value = bytes(value), None
    if image is not None:
        return make_record(str(key if key is not None else f"row-{row_no:08d}"), where,
                           image=image, fields=row)
    if value is None or not str(value).strip():
        return make_record(str(key if key is not None else f"row-{row_no:08d}"), where, fields=row,
                           error=(MISSING_IMAGE, f"{where}: empty {image_col!r}"))
    path = str(value).strip()
    stem = posixpath.splitext(posixpath.basename(path))[0]
    rkey = str(key if key is not None else stem)
    if "\x00" in path:
        return make_record(rkey, where, fields=row, error=(BAD_METADATA, f"{where}: the image path {value!r} "
                                                                          f"holds a NUL byte"))
    if path.startswith("file://"):
        path = path[len("file://"):]
    if storage.scheme(path) not in READ_SCHEMES:
        # a manifest is data: a URL in it is never fetched (no request leaves from here), and
        # fsspec's other schemes (local://, memory://, ...) would read around the root checks
        return make_record(rkey, where, fields=row, error=(
            UNSUPPORTED_URI, f"{where}: {value!r}: only local paths, file:// and s3:// images are read, "
                             f"not {storage.scheme(path)}://; download the images first and ingest those"))
    if "://" not in path and not os.path.isabs(path):
        path = storage.join(base, path)
    if storage.is_remote(path):
        path = _root(path)   # s3://b/dir/../x -> s3://b/x: the root check sees where it leads
    if not _inside_roots(path, roots or [_root(base)]):
        where_to = path if storage.is_remote(path) else os.path.realpath(path)
        return make_record(rkey, where, fields=row, error=(
            OUTSIDE_SOURCE, f"{where}: {value!r} resolves to {where_to}, outside the manifest's "
                            f"directory {base}; name the directories (or s3:// prefixes) images may come "
                            f"from with --allow-root DIR (ingest allow_roots=[...])"))
    # a missing file is found by the reader that reads it (load_image), in parallel under ingest
    return make_record(str(key if key is not None else stem), path, ref=("uri", path), fields=row)


# ---------------------------------------------------------------- (d) the Shapes generator
def parse_shapes_uri(src: str) -> dict[str, Any]:
    """shapes://n=1000,size=64,seed=0,curated_fraction=0.1 -> dict (defaults filled in)."""
    if not src.startswith("shapes://"):
        raise ValueError(f"a Shapes source looks like shapes://n=1000,size=64,seed=0; got {src!r}")
    params: dict[str, Any] = {"n": 1000, "size": 64, "seed": 0, "curated_fraction": 0.1}
    body = src[len("shapes://"):].strip("/")
    for part in filter(None, re.split(r"[,&;]", body)):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in params:
            raise ValueError(f"{src}: unknown or malformed field {part!r}; fields: {', '.join(params)}")
        try:
            params[name] = float(value) if name == "curated_fraction" else int(value)
        except ValueError:
            raise ValueError(f"{src}: field {name!r} must be a number, got {value!r}") from None
    if params["n"] < 1:
        raise ValueError(f"{src}: field 'n' must be >= 1")
    if not 8 <= params["size"] <= 4096:
        raise ValueError(f"{src}: field 'size' must be in [8, 4096]")
    if not 0 <= params["curated_fraction"] <= 1:
        raise ValueError(f"{src}: field 'curated_fraction' must be in [0, 1]")
    return params


def read_shapes(src: str) -> Iterator[dict]:
    from model_code.data.synth import shapes_item
    p = parse_shapes_uri(src)
    for i in range(p["n"]):
        row = shapes_item(p["seed"], i, p["size"], p["curated_fraction"])
        yield make_record(row["key"], f"{src}#{i}", ref=("shapes", row["scene"]),
                          fields={k: row[k] for k in ("caption", "curated_caption", "scene", "license")})
