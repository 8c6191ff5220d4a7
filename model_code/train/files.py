"""How a training run writes and reads its state files (train_state.json, checkpoints/latest.json,
history.csv): whole or not at all, and a damaged one is an error that names it.

A kill (SIGKILL, a node lost, a full disk) during a plain write leaves an empty or cut file that
the next run cannot read; so a local file is written beside itself and renamed over the old one
(os.replace is atomic), and an object-store PUT is already all-or-nothing. No Lightning import
here: the tokenizer's run uses these too.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from model_code import storage


def write_text_atomic(uri: str, text: str) -> None:
    """Write `text` to `uri` so that a reader sees the old file or the new one, never a part."""
    if storage.is_remote(uri):
        storage.write_text(uri, text)   # an object is replaced whole by its PUT
        return
    path = storage.local_path(uri)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp makes it 0600: the file it replaces was an ordinary one
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(uri: str, obj: Any) -> None:
    write_text_atomic(uri, json.dumps(obj, indent=2, default=str))


class DamagedFile(ValueError):
    """A state file that exists but cannot be read (empty, cut short, not JSON)."""


def read_json(uri: str, fix: str) -> Any:
    """The JSON in `uri`; a damaged file is a DamagedFile naming it and `fix`, what to do about it
    (json's own "Expecting value: line 1 column 1" names neither)."""
    data = storage.read_bytes(uri)
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError
        what = "is empty" if not data.strip() else f"is damaged ({e})"
        raise DamagedFile(f"{uri} {what}: {fix}") from None
