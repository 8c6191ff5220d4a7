"""The MLflow registry for generation bundles: one pyfunc model version per bundle, lineage tags,
gate records, promotion through aliases with history, rollback. See registry.py.

Importing this package does not import MLflow; the functions do.
"""
from __future__ import annotations

_API = ("register_bundle", "record_gate", "gate_record", "promote", "rollback", "list_versions",
        "history", "load_by_alias", "load_generator", "model_uri", "GateError", "ALIASES")

__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        from model_code.registry import registry
        return getattr(registry, name)
    raise AttributeError(f"module 'model_code.registry' has no attribute {name!r}")
