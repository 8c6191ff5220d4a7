"""Cluster-side helpers: the multi-node training job for the Kubeflow Training Operator.

Names are imported on first use, so that `python -m model_code.cluster.pytorchjob` runs the module
once (no runpy double-import warning).
"""
_EXPORTS = ("PyTorchJobFailed", "job_state", "render_pytorchjob", "submit_pytorchjob")
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from model_code.cluster import pytorchjob
        return getattr(pytorchjob, name)
    raise AttributeError(f"module 'model_code.cluster' has no attribute {name!r}")
