"""Compile every pipeline to YAML for upload in the Kubeflow UI (`easel pipeline compile`)."""
from __future__ import annotations

import os

from kfp import compiler

from pipelines.data import data_pipeline
from pipelines.deploy import deploy_pipeline
from pipelines.lifecycle import lifecycle_pipeline
from pipelines.recaption import recaption_pipeline
from pipelines.release import evaluate_promote_pipeline
from pipelines.tables import table_captions_pipeline, table_guidance_pipeline, table_rerank_pipeline
from pipelines.train import train_multinode_pipeline, train_pipeline

# name -> pipeline; the name is the compiled file (pipelines/compiled/<name>.yaml) and what
# `easel pipeline submit | schedule` take
PIPELINES = {
    "lifecycle": lifecycle_pipeline,
    "data": data_pipeline,
    "recaption": recaption_pipeline,
    "train": train_pipeline,
    "train-multinode": train_multinode_pipeline,
    "evaluate-promote": evaluate_promote_pipeline,
    "deploy": deploy_pipeline,
    "table-captions": table_captions_pipeline,
    "table-rerank": table_rerank_pipeline,
    "table-guidance": table_guidance_pipeline,
}


def compile_one(name: str, path: str) -> str:
    """Compile the pipeline registered as `name` to `path`; ValueError for an unknown name."""
    if name not in PIPELINES:
        raise ValueError(f"pipeline: no pipeline named {name!r} (known: {', '.join(PIPELINES)})")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    compiler.Compiler().compile(PIPELINES[name], path)
    return path


def compile_all(out: str = "pipelines/compiled") -> list[str]:
    os.makedirs(out, exist_ok=True)
    return [compile_one(name, os.path.join(out, f"{name}.yaml")) for name in PIPELINES]
