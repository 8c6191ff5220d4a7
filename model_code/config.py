"""Presets: sizes are data, not code. One YAML file per size in model_code/presets/.

`load_preset("tiny")` returns a plain nested dict; `overrides` (a dict or "a.b=c" strings)
are merged on top. A path to a YAML file works in place of a name, so users can keep their own.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Iterable

import yaml

PRESET_DIR = os.path.join(os.path.dirname(__file__), "presets")
PRESETS = ("tiny", "small", "base", "paper")


class ConfigError(ValueError):
    pass


def preset_path(name: str) -> str:
    if os.path.isfile(name):
        return name
    path = os.path.join(PRESET_DIR, f"{name}.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} or give a YAML path")
    return path


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_overrides(items: Iterable[str]) -> dict:
    """["train.max_steps=10", "dvae.codebook_size=64"] -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, val = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


def load_preset(name: str = "tiny", overrides: dict | Iterable[str] | None = None) -> dict[str, Any]:
    with open(preset_path(name)) as f:
        cfg = yaml.safe_load(f) or {}
    if "extends" in cfg:  # a user preset may extend a built-in one
        parent = cfg.pop("extends")
        cfg = deep_merge(load_preset(parent), cfg)
    cfg.setdefault("name", os.path.splitext(os.path.basename(name))[0])
    if overrides:
        if not isinstance(overrides, dict):
            overrides = parse_overrides(overrides)
        cfg = deep_merge(cfg, overrides)
    return cfg
