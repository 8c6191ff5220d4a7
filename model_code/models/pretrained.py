"""One save / load format for every Easel model: `config.json` + `model.safetensors` under a
directory or object-store prefix (diffusers' and transformers' layout, so a model is rebuilt from
its config and loaded strictly).

A model class mixes in `PretrainedMixin` and sets:
  MODEL_TYPE  the tag written into config.json and checked on load (a dVAE never loads as a prior)
  SECTION     its preset section (`clip`, `dvae`, ...): from_config accepts that section or a
              whole preset holding it, and config errors name `SECTION.key`
  DEFAULTS / REQUIRED / _validate   what `resolve_config` fills in and checks (or the class
              overrides `resolve_config` itself)
and keeps its resolved config in `self.config`.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from model_code import storage


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device inference runs on: the one asked for, else the GPU when there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def positive_ints(cfg: dict, section: str, *keys: str) -> None:
    """Each key must hold a positive integer (not a bool); ValueError naming `section.key`."""
    for key in keys:
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{section}.{key} must be a positive integer (got {v!r})")


def known_keys(cfg: dict, section: str, known: set) -> None:
    """A typo in a model section is an error naming the known keys, not a silently ignored key."""
    unknown = set(cfg) - set(known)
    if unknown:
        raise ValueError(f"unknown {section} config keys {sorted(unknown)}; known: {sorted(known)}")


class PretrainedMixin:
    DEFAULTS: dict[str, Any] = {}
    REQUIRED: tuple[str, ...] = ()
    SECTION = "model"
    MODEL_TYPE = ""

    @classmethod
    def resolve_config(cls, cfg: dict | None) -> dict:
        """Defaults filled in, required keys present, values validated; ValueError names the key."""
        cfg = dict(cfg or {})
        for key in cls.REQUIRED:
            if cfg.get(key) is None:
                raise ValueError(f"{cls.SECTION}.{key} is required (got {cfg.get(key)!r})")
        out = {**cls.DEFAULTS, **cfg}
        cls._validate(out)
        return out

    @classmethod
    def _validate(cls, cfg: dict) -> None:  # pragma: no cover - overridden
        pass

    @classmethod
    def from_config(cls, cfg: dict | None):
        """Build from the model's preset section (a whole preset holding that section also works)."""
        if cfg and isinstance(cfg.get(cls.SECTION), dict):
            cfg = cfg[cls.SECTION]
        return cls(cfg)

    def save_pretrained(self, uri: str) -> None:
        """Write `config.json` (the fully resolved config, tagged with MODEL_TYPE) and
        `model.safetensors` under uri (a directory or s3:// prefix)."""
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump({"model_type": self.MODEL_TYPE, **self.config}, f, indent=2, sort_keys=True)
            # save_model (not save_file) keeps one copy of tied weights (the transformer's
            # shared input/output embedding) and makes every tensor contiguous
            save_model(self, os.path.join(tmp, "model.safetensors"))
            storage.put_dir(tmp, uri)

    @classmethod
    def from_pretrained(cls, uri: str, map_location: str | torch.device = "cpu"):
        with tempfile.TemporaryDirectory() as tmp:
            local = storage.get_dir(uri, tmp) if storage.is_remote(uri) else storage.local_path(uri)
            path = os.path.join(local, "config.json")
            if not os.path.isfile(path):
                raise ValueError(f"{uri}: no {cls.SECTION} model here (config.json missing)")
            with open(path) as f:
                cfg = json.load(f)
            kind = cfg.pop("model_type", None)
            if kind != cls.MODEL_TYPE:
                raise ValueError(f"{uri}/config.json holds a {kind!r} model, not {cls.MODEL_TYPE!r}"
                                 + ("" if kind else " (no model_type: not written by save_pretrained)"))
            model = cls(cfg)
            # save_model's layout: tied weights (the transformer's shared embedding) stored once
            load_model(model, os.path.join(local, "model.safetensors"), strict=True, device=str(map_location))
        return model.to(map_location)
        return model
