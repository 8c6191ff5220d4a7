"""Serving: the KServe model server with prompt safety, prompt rewriting, dynamic batching,
C2PA provenance and an OpenAI-compatible image route.

    from model_code.serve import serve, start_in_thread
    serve("models:/easel-dalle@production", port=8080)          # `easel serve`

Modules: config (settings), safety, rewrite, provenance, batching, model (the kserve.Model
subclasses and the request path), openai_route, metrics, server.

Importing this package imports neither KServe nor torch (importing kserve parses sys.argv);
the names below load their module on first use.
"""
from __future__ import annotations

_API = {"serve": "server", "start_in_thread": "server", "build_app": "server", "make_model": "server",
        "RunningServer": "server", "EaselModel": "model", "EaselTransformer": "model",
        "resolve_model": "model", "ServeError": "model", "serve_config": "config",
        "verify": "provenance", "make_dev_chain": "provenance", "BuiltinRewriter": "rewrite",
        "Safety": "safety", "Batcher": "batching"}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(f"model_code.serve.{_API[name]}"), name)
    raise AttributeError(f"module 'model_code.serve' has no attribute {name!r}")
