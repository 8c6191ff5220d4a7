"""Evaluation: held-out prompt sets (prompts.py), metrics (metrics.py), the evaluation run
(evaluate.py), promotion gates (gates.py) and the seeds' tables (tables.py).

Importing this package imports none of them (nor MLflow); the names below load on first use.
The evaluation entry point is `from model_code.evaluate.evaluate import evaluate` (the submodule
and the function share a name, so the package does not re-export it).
"""
from __future__ import annotations

_API = {"eval_config": "evaluate", "heldout_prompts": "prompts",
        "prompt_set": "prompts", "read_prompts": "prompts", "CATEGORIES": "prompts",
        "gate": "gates", "run_gate": "gates", "gate_config": "gates",
        "table_captions": "tables", "table_rerank": "tables", "table_guidance": "tables"}

__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(f"model_code.evaluate.{_API[name]}"), name)
    raise AttributeError(f"module 'model_code.evaluate' has no attribute {name!r}")
