"""Cluster-side helpers: the multi-node training job for the Kubeflow Training Operator
(pytorchjob.py) and the KServe InferenceService of a registered model version (inferenceservice.py).

Names are imported on first use, so that `python -m model_code.cluster.pytorchjob` runs the module
once (no runpy double-import warning).
"""
_EXPORTS = {"PyTorchJobFailed": "pytorchjob", "job_state": "pytorchjob", "render_pytorchjob": "pytorchjob",
            "submit_pytorchjob": "pytorchjob", "DeployError": "inferenceservice",
            "deploy_model": "inferenceservice", "render_inferenceservice": "inferenceservice",
            "update_inferenceservice": "inferenceservice", "registered_version": "inferenceservice"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"model_code.cluster.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'model_code.cluster' has no attribute {name!r}")
