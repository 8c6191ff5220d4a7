"""Cluster-side helpers: the multi-node training job, a Kubeflow Trainer v2 TrainJob (trainjob.py,
the default) or a legacy Training Operator PyTorchJob (pytorchjob.py, which holds what both
share), and the KServe InferenceService of a registered model version (inferenceservice.py).

Names are imported on first use (importing the package loads neither the Kubernetes client nor
the templates).
"""
_EXPORTS = {"JobFailed": "pytorchjob", "PyTorchJobFailed": "pytorchjob", "job_state": "pytorchjob",
            "render_pytorchjob": "pytorchjob", "submit_pytorchjob": "pytorchjob",
            "render_trainjob": "trainjob", "submit_trainjob": "trainjob",
            "DeployError": "inferenceservice", "deploy_model": "inferenceservice",
            "render_inferenceservice": "inferenceservice", "update_inferenceservice": "inferenceservice",
            "registered_version": "inferenceservice"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"model_code.cluster.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'model_code.cluster' has no attribute {name!r}")
