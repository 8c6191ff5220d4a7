"""Presets: sizes are data, not code. One YAML file per size in model_code/presets/.

`load_preset("tiny")` returns a plain nested dict; `overrides` (a dict or "a.b=c" strings)
are merged on top. A path to a YAML file works in place of a name, so users can keep their own.
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Iterable, Mapping

import yaml

PRESET_DIR = os.path.join(os.path.dirname(__file__), "presets")
PRESETS = ("tiny", "laptop", "small", "base", "paper")


class ConfigError(ValueError):
    pass


# A preset's top-level sections (each owner module checks the keys inside its own: the models
# their config, train/module.py `train:`, serve/config.py `serve:`, evaluate.py `evaluate:`,
# recaption/job.py `recaption:`, generate.py `sampling:`), and the data: section's keys, which the
# data faces (easel data, the KFP data steps, dvc.yaml) read.
SECTIONS = ("name", "data", "tokenizer", "dvae", "transformer", "clip", "captioner", "prior", "decoder",
            "upsampler", "upsampler2", "train", "recaption", "evaluate", "serve", "sampling")
DATA_KEYS = ("n", "size", "seed", "curated_fraction", "shard_size", "heldout_fraction", "validate",
             "allow_roots", "caption_control")
TOKENIZER_KEYS = ("vocab_size", "max_text_tokens")


def check_sections(cfg: dict) -> dict:
    """An unknown section, data: key or tokenizer: key is an error naming the known ones (a typo
    is never silently ignored)."""
    for key, known, where in ((set(cfg), SECTIONS, "preset section"),
                              (set(cfg.get("data") or {}), DATA_KEYS, "data: key"),
                              (set(cfg.get("tokenizer") or {}), TOKENIZER_KEYS, "tokenizer: key")):
        unknown = sorted(key - set(known))
        if unknown:
            raise ConfigError(f"unknown {where} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return cfg


class _Loader(yaml.SafeLoader):
    """PyYAML is YAML 1.1, where `2e-3` (no dot) is a string; YAML 1.2 and every user read it as a
    number. This loader adds the 1.2 float forms, so presets and `a.b=2e-3` overrides agree."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text_or_stream) -> Any:
    """YAML as Easel reads it everywhere (presets, overrides): 1.2-style numbers."""
    return yaml.load(text_or_stream, Loader=_Loader)


def preset_path(name: str, near: str | None = None) -> str:
    """A preset file: `name` itself if it is a file, else `<near>/<name>.yaml` (the directory of
    the preset that extends it: a copy of the presets, e.g. a DVC experiment's, extends its own
    siblings), else the built-in model_code/presets/<name>.yaml."""
    if os.path.isfile(name):
        return name
    if near and os.path.isfile(os.path.join(near, f"{name}.yaml")):
        return os.path.join(near, f"{name}.yaml")
    path = os.path.join(PRESET_DIR, f"{name}.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} or give a YAML path")
    return path


def deep_merge(base: dict, over: Mapping) -> dict:
    """A copy of `base` with `over` merged in: mappings merge key by key, anything else replaces.
    The one deep merge (presets, overrides, serving settings)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
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
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key in {key!r}")
        try:
            node[parts[-1]] = load_yaml(val)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot read value {val!r}: {e}") from None
    return out


def _check_types(base: dict, over: dict, path: str = "") -> None:
    """An override must keep the kind of value the preset has there: a number stays a number
    (bool is not a number), a mapping a mapping. The error names the key."""
    _check_no_dropped_sections(base, over, path)
    for k, v in over.items():
        key = f"{path}{k}"
        if k not in base or base[k] is None or v is None:
            continue
        b = base[k]
        if isinstance(b, dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a mapping, got {v!r}")
            _check_types(b, v, key + ".")
        elif isinstance(b, (int, float)) and not isinstance(b, bool):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key}: expected a number (like {b!r}), got {v!r}")
        elif isinstance(b, bool) and not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")


def _check_no_dropped_sections(base: dict, over: Mapping, path: str = "") -> None:
    """A null over a section (`--set dvae=null`, `dvae: null` in a preset extending another) would
    drop every key of it, and the part would silently fall back to its paper-scale defaults."""
    for k, v in over.items():
        if v is None and isinstance(base.get(k), dict) and base[k]:
            raise ConfigError(f"{path}{k}: null would drop the whole section (its part would fall back to "
                              f"the paper-scale defaults); set or override its keys one by one")
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _check_no_dropped_sections(base[k], v, f"{path}{k}.")


def _load_raw(name: str, near: str | None = None, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = preset_path(name, near)
    real = os.path.realpath(path)
    if real in seen:
        raise ConfigError(f"preset {path} extends itself (through {' -> '.join(seen + (real,))})")
    with open(path) as f:
        try:
            cfg = load_yaml(f) or {}
        except yaml.YAMLError as e:   # the parser's message names a line, not the file
            raise ConfigError(f"preset {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"preset {path}: expected a mapping of sections (data:, dvae:, train: ...), "
                          f"got a {type(cfg).__name__}")
    if "extends" in cfg:  # a user preset may extend a built-in one (or a sibling file)
        parent = _load_raw(cfg.pop("extends"), os.path.dirname(os.path.abspath(path)), seen + (real,))
        _check_no_dropped_sections(parent, cfg)
        cfg = deep_merge(parent, cfg)
    return cfg


def derive(cfg: dict) -> dict:
    """Fill in the keys one part takes from another, so that a preset writes each only once:
    transformer.codebook_size (= dvae.codebook_size), transformer.image_grid (= dvae.image_size /
    dvae.downsample) and transformer.text_len (= tokenizer.max_text_tokens; a preset may set a
    shorter one). A trained dependency still has the last word (train/parts.py)."""
    t, d, tok = cfg.get("transformer"), cfg.get("dvae") or {}, cfg.get("tokenizer") or {}
    if isinstance(t, dict):
        if "codebook_size" in d:
            t.setdefault("codebook_size", d["codebook_size"])
        if "image_size" in d and "downsample" in d:
            t.setdefault("image_grid", int(d["image_size"]) // int(d["downsample"]))
        if "max_text_tokens" in tok:
            t.setdefault("text_len", tok["max_text_tokens"])
    return cfg


def load_preset(name: str = "tiny", overrides: dict | None = None) -> dict[str, Any]:
    """A preset (a name in PRESETS or a YAML path), its parent first (`extends`), then
    `overrides` (a nested dict: `a.b=c` strings are parsed at the CLI edge, parse_overrides),
    then the derived keys (derive)."""
    cfg = _load_raw(name)
    cfg.setdefault("name", os.path.splitext(os.path.basename(name))[0])
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError(f"overrides: a nested mapping like {{'train': {{'lr': 0.001}}}} expected, got "
                              f"{type(overrides).__name__} (parse KEY=VALUE strings with parse_overrides)")
        _check_types(cfg, overrides)
        cfg = deep_merge(cfg, overrides)
    return derive(check_sections(cfg))
