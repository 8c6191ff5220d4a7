"""Serving settings: limits, batching, safety policy, prompt rewriting, provenance.

    cfg = serve_config("tiny", overrides={"max_n": 2})

Layers, later wins:
    DEFAULTS (below)  <-  the preset's `serve:` section (model_code/presets/<preset>.yaml, the
    preset the bundle was built with)  <-  the YAML/JSON file named by EASEL_SERVE_CONFIG  <-
    environment variables (ENV below)  <-  `overrides` (a dict, from Python callers and tests).

Secrets and key material never come from code or presets: the C2PA certificate chain and key
are paths from the environment (EASEL_C2PA_CERT_CHAIN / EASEL_C2PA_KEY, typically a mounted
Kubernetes Secret) or from the EASEL_SERVE_CONFIG file. Without them `easel serve` signs with
an ephemeral development chain under EASEL_HOME and logs a warning (provenance.py).

The result is a plain dict (the convention of every preset section); `check()` raises a
ValueError naming the key for every bad value, so a typo stops the server at start-up, not at
the first request.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping


from model_code.config import deep_merge, load_yaml

# DALL-E 3's API accepts prompts up to 4000 characters; longer is refused, never truncated (as is
# a prompt of more tokens than the model reads: generate.TextLimit).
DEFAULTS: dict[str, Any] = {
    "max_prompt_chars": 4000,
    "max_n": 4,                      # images returned per prompt
    "max_instances": 16,             # prompts per V1/V2 request
    "sizes": ["32x32", "64x64", "128x128", "256x256"],   # what a client may ask for (square)
    "default_size": None,            # None: the bundle's own image size
    "candidates": None,              # images sampled per prompt before CLIP keeps the best n;
                                     # None: the bundle's default; always raised to >= n
    "sampling": {},                  # Generator.generate overrides (e.g. decoder_steps)
    "batch_window_ms": 10.0,         # how long the batcher waits for more requests when idle
    "max_batch": 16,                 # prompts in one Generator.generate call
    "queue_size": 64,                # requests waiting for the generator; more -> 503
    "max_body_bytes": 1_000_000,     # larger request bodies -> 413
    "seed_max": 2**31 - 1,           # seeds accepted from clients: 0..seed_max
    "allow_ungated": False,          # serve a registry version without a passed gate record
                                     # (registry.check_gated); recorded in the model's metadata
    "torch_threads": None,           # intra-op threads (None: torch's default); set by `easel serve`,
                                     # which owns its process (in-thread servers leave it alone)
    "rewrite": {
        "enabled": True,             # clients opt out per request ("rewrite": false)
        "url": None,                 # an OpenAI-compatible chat endpoint (else the built-in one)
        "model": None,
        "timeout_s": 10.0,
    },
    "safety": None,                  # safety_policy.yaml beside this module (data, not code)
    "provenance": {
        "enabled": True,
        "cert_chain": None,          # PEM: signing certificate first, then its CA(s)
        "key": None,                 # PEM private key of the signing certificate
        "alg": "es256",
        "dev_dir": None,             # where the ephemeral dev chain goes (default EASEL_HOME/c2pa-dev)
    },
}

SAFETY_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "safety_policy.yaml")
with open(SAFETY_POLICY, encoding="utf-8") as _f:
    DEFAULTS["safety"] = load_yaml(_f.read())

# environment variable -> dotted key (the values are parsed as YAML: "8", "true", "[a, b]")
ENV = {
    "EASEL_C2PA_CERT_CHAIN": "provenance.cert_chain",
    "EASEL_C2PA_KEY": "provenance.key",
    "EASEL_C2PA_ALG": "provenance.alg",
    "EASEL_C2PA_DEV_DIR": "provenance.dev_dir",
    "EASEL_REWRITE_URL": "rewrite.url",
    "EASEL_REWRITE_MODEL": "rewrite.model",
    "EASEL_SERVE_MAX_N": "max_n",
    "EASEL_SERVE_ALLOW_UNGATED": "allow_ungated",
    "EASEL_SERVE_QUEUE_SIZE": "queue_size",
    "EASEL_SERVE_MAX_BATCH": "max_batch",
    "EASEL_SERVE_BATCH_WINDOW_MS": "batch_window_ms",
    "EASEL_SERVE_CANDIDATES": "candidates",
    "EASEL_SERVE_TORCH_THREADS": "torch_threads",
}
CONFIG_FILE_ENV = "EASEL_SERVE_CONFIG"
# keys that are strings as given (a path or URL is never re-typed by YAML parsing)
_STRING_KEYS = {"provenance.cert_chain", "provenance.key", "provenance.alg", "provenance.dev_dir",
                "rewrite.url", "rewrite.model"}
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_ALGS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")


def _set(d: dict, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for p in path:
        d = d.setdefault(p, {})
    d[last] = value


def _preset_section(preset: str | None) -> dict:
    """A preset's `serve:` section; an unknown preset is an error naming the known ones (bundles
    carry their own resolved section, so serving one never needs the preset file)."""
    if not preset:
        return {}
    from model_code.config import load_preset
    return dict(load_preset(preset).get("serve") or {})


def _file_section(path: str) -> dict:
    from model_code import storage
    try:
        text = storage.read_text(path)
    except Exception as e:
        raise ValueError(f"{CONFIG_FILE_ENV}: cannot read {path}: {e}") from e
    data = json.loads(text) if path.endswith(".json") else load_yaml(text)
    if data is None:
        return {}
    if isinstance(data, dict) and isinstance(data.get("serve"), dict):  # a whole preset file
        data = data["serve"]
    if not isinstance(data, dict):
        raise ValueError(f"{CONFIG_FILE_ENV}: {path} must hold a mapping of serve settings")
    return data


def _env_section(env: Mapping[str, str]) -> dict:
    out: dict = {}
    for var, key in ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        _set(out, key, raw if key in _STRING_KEYS else load_yaml(raw))
    return out


def serve_config(preset: str | None = None, overrides: Mapping | None = None,
                 env: Mapping[str, str] | None = None, section: Mapping | None = None) -> dict[str, Any]:
    """DEFAULTS <- `section` (a bundle's resolved `serve:`), else the preset's `serve:` <-
    EASEL_SERVE_CONFIG file <- environment <- overrides; checked."""
    env = os.environ if env is None else env
    cfg = deep_merge(DEFAULTS, section if section is not None else _preset_section(preset))
    if env.get(CONFIG_FILE_ENV):
        cfg = deep_merge(cfg, _file_section(env[CONFIG_FILE_ENV]))
    cfg = deep_merge(cfg, _env_section(env))
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return check(cfg)


# ---------------------------------------------------------------- validation
def parse_size(size: str) -> int:
    """"64x64" -> 64 (square only); ValueError otherwise."""
    m = _SIZE.match(size) if isinstance(size, str) else None
    if not m or m.group(1) != m.group(2) or int(m.group(1)) < 1:
        raise ValueError(f"size: expected a square 'NxN' like '64x64', got {size!r}")
    return int(m.group(1))


def _int(cfg: dict, key: str, lo: int, hi: int | None = None, optional: bool = False) -> None:
    v = cfg.get(key)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"serve.{key}: must be an integer {rng}, got {v!r}")


def _number(cfg: dict, key: str, lo: float, hi: float, where: str = "serve") -> None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
        raise ValueError(f"{where}.{key}: must be a number in [{lo}, {hi}], got {v!r}")
    cfg[key] = float(v)


def _strings(d: dict, key: str, where: str) -> list[str]:
    v = d.get(key) or []
    if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
        raise ValueError(f"{where}.{key}: must be a list of non-empty strings, got {v!r}")
    return v


def check(cfg: dict) -> dict:
    """Validate a merged config in place (and normalise a few values); returns it."""
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"serve: unknown setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    _int(cfg, "max_prompt_chars", 1, 1_000_000)
    _int(cfg, "max_n", 1, 512)
    _int(cfg, "max_instances", 1, 4096)
    _int(cfg, "candidates", 1, 512, optional=True)
    _int(cfg, "max_batch", 1, 4096)
    _int(cfg, "queue_size", 1, 1_000_000)
    if cfg["max_instances"] > cfg["queue_size"]:   # each prompt of a request takes a place in the queue
        raise ValueError(f"serve.max_instances ({cfg['max_instances']}) is larger than serve.queue_size "
                         f"({cfg['queue_size']}): a request of max_instances prompts could never be queued; "
                         f"raise queue_size or lower max_instances")
    _int(cfg, "max_body_bytes", 1024)
    _int(cfg, "seed_max", 0, 2**63 - 1)
    _int(cfg, "torch_threads", 1, 1024, optional=True)
    _number(cfg, "batch_window_ms", 0.0, 10_000.0)
    sizes = _strings(cfg, "sizes", "serve")
    if not sizes:
        raise ValueError("serve.sizes: at least one size is needed")
    for s in sizes:
        parse_size(s)  # raises with the offending value
    if cfg["default_size"] is not None and cfg["default_size"] not in sizes:
        raise ValueError(f"serve.default_size: {cfg['default_size']!r} is not one of serve.sizes {sizes}")
    if not isinstance(cfg["sampling"], dict):
        raise ValueError(f"serve.sampling: must be a mapping of Generator sampling settings, got {cfg['sampling']!r}")

    rw = cfg["rewrite"]
    if not isinstance(rw, dict) or set(rw) - set(DEFAULTS["rewrite"]):
        raise ValueError(f"serve.rewrite: expected keys {sorted(DEFAULTS['rewrite'])}, got {rw!r}")
    if not isinstance(rw["enabled"], bool):
        raise ValueError(f"serve.rewrite.enabled: must be true or false, got {rw['enabled']!r}")
    if rw["url"] is not None and not (isinstance(rw["url"], str) and re.match(r"^https?://", rw["url"])):
        raise ValueError(f"serve.rewrite.url: must be an http(s) URL, got {rw['url']!r}")
    if rw["url"] and not rw["model"]:
        raise ValueError("serve.rewrite.model: a chat endpoint (rewrite.url) needs a model name (EASEL_REWRITE_MODEL)")
    _number(rw, "timeout_s", 0.1, 600.0, "serve.rewrite")

    sf = cfg["safety"]
    if not isinstance(sf, dict) or set(sf) - set(DEFAULTS["safety"]):
        raise ValueError(f"serve.safety: expected keys {sorted(DEFAULTS['safety'])}, got {sf!r}")
    _strings(sf, "blocklist", "serve.safety")
    _strings(sf, "prompt_concepts", "serve.safety")
    _strings(sf, "image_concepts", "serve.safety")
    for key in ("prompt_threshold", "image_threshold"):
        if sf.get(key) != "auto":
            _number(sf, key, -1.0, 1.01, "serve.safety")   # > 1: concept matching off
    _number(sf, "calibration_margin", 0.0, 1.0, "serve.safety")
    pats = sf.get("patterns") or []
    if not isinstance(pats, list):
        raise ValueError(f"serve.safety.patterns: must be a list, got {pats!r}")
    norm = []
    for i, p in enumerate(pats):
        p = {"pattern": p, "reason": None} if isinstance(p, str) else p
        if not isinstance(p, dict) or not isinstance(p.get("pattern"), str) or set(p) - {"pattern", "reason"}:
            raise ValueError(f"serve.safety.patterns[{i}]: must be a regex string or "
                             f"{{pattern, reason}}, got {p!r}")
        try:
            re.compile(p["pattern"])
        except re.error as e:
            raise ValueError(f"serve.safety.patterns[{i}]: bad regular expression {p['pattern']!r}: {e}") from e
        norm.append({"pattern": p["pattern"], "reason": p.get("reason") or f"matches pattern {p['pattern']!r}"})
    sf["patterns"] = norm

    pv = cfg["provenance"]
    if not isinstance(pv, dict) or set(pv) - set(DEFAULTS["provenance"]):
        raise ValueError(f"serve.provenance: expected keys {sorted(DEFAULTS['provenance'])}, got {pv!r}")
    if not isinstance(pv["enabled"], bool):
        raise ValueError(f"serve.provenance.enabled: must be true or false, got {pv['enabled']!r}")
    if str(pv["alg"]).lower() not in _ALGS:
        raise ValueError(f"serve.provenance.alg: one of {_ALGS}, got {pv['alg']!r}")
    pv["alg"] = str(pv["alg"]).lower()
    if bool(pv["cert_chain"]) != bool(pv["key"]):
        raise ValueError("serve.provenance: cert_chain and key go together (EASEL_C2PA_CERT_CHAIN and "
                         "EASEL_C2PA_KEY): set both or neither")
    for key in ("cert_chain", "key"):
        if pv[key] and not os.path.isfile(pv[key]):
            raise ValueError(f"serve.provenance.{key}: no such file {pv[key]!r}")
    return cfg
