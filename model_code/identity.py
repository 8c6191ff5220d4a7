"""What an input holds, not where it is: the identities that decide whether earlier work in an
output directory may be reused or resumed (train_part's finished runs and checkpoints, recaption's
shard sidecars). A pipeline that re-ingests, recaptions or retrains in place keeps every path, so a
path alone would let work done on the old contents pass for this run's."""
from __future__ import annotations

import hashlib

from model_code import storage
from model_code.data.dataset import content_id, read_meta

STATE_FILE = "train_state.json"   # what model_code.train.run writes at the end of a run


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def dataset_identity(data: str) -> str:
    """Ingest's content hash (every record's key, pixels and caption) or a recaption's version
    (its parent's content and every caption), from dataset.json; else the manifest's bytes."""
    return str(content_id(read_meta(data)) or _sha(storage.read_bytes(storage.join(data, "manifest.parquet"))))


def part_identity(uri: str) -> str:
    """A trained part: its train_state.json (config hash and run summary, so a part retrained in
    place differs); a part trained elsewhere: the bytes of its files (checkpoints and samples aside)."""
    state = storage.join(uri, STATE_FILE)
    if storage.exists(state):
        return _sha(storage.read_bytes(state))
    h = hashlib.sha256()
    for rel, f in storage.files_under(uri, skip=("checkpoints", "samples")):
        h.update(rel.encode() + b"\0" + storage.read_bytes(f))
    return h.hexdigest()[:16]


def changed(old: dict | None, new: dict) -> list[str]:
    """The top-level keys (one level down for dicts) whose recorded identity differs; keys the old
    record lacks are not counted (it was written before they were recorded)."""
    out = []
    for k, v in new.items():
        if not old or k not in old:
            continue
        if isinstance(v, dict) and isinstance(old[k], dict):
            out += [f"{k}.{j}" for j, w in v.items() if j in old[k] and old[k][j] != w]
        elif old[k] != v:
            out.append(k)
    return out
