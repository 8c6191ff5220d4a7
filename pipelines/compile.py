"""Compile every pipeline to YAML for upload in the Kubeflow UI (`easel pipeline compile`)."""
from __future__ import annotations

import os

from kfp import compiler

from pipelines.data import data_pipeline
from pipelines.lifecycle import lifecycle_pipeline
from pipelines.release import evaluate_promote_pipeline

PIPELINES = {
    "lifecycle": lifecycle_pipeline,
    "data": data_pipeline,
    "evaluate-promote": evaluate_promote_pipeline,
}


def compile_all(out: str = "pipelines/compiled") -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = []
    for name, fn in PIPELINES.items():
        path = os.path.join(out, f"{name}.yaml")
        compiler.Compiler().compile(fn, path)
        paths.append(path)
    return paths
