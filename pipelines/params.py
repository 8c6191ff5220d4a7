"""What each pipeline parameter means, in one place: the Kubeflow Pipelines UI shows these
descriptions beside the run form's fields (KFP reads them from the pipeline function's docstring
`Args:` section, which `documented` writes from this table).

Shared names mean the same in every pipeline; a pipeline that uses a name differently passes its
own text to `documented(name=...)`.
"""
from __future__ import annotations

import inspect
from typing import Callable

from model_code.config import PRESETS

PARAMS: dict[str, str] = {
    "preset": (f"Model and data sizes, one of {', '.join(PRESETS)}. tiny: 32 px, minutes on a CPU "
               "(trying the pipeline out, CI); laptop: 32 px, about an hour per recipe on a CPU; "
               "small: 64 px on one GPU; base: 256 px on a GPU node pool; paper: the seeds' sizes. "
               "The default is tiny so that a first run is cheap: on a GPU pool choose small or base."),
    "overrides": ('Preset overrides as a JSON object, nested like the preset YAML, e.g. '
                  '{"train": {"steps": {"transformer": 5000}}, "transformer": {"d_model": 256}}; '
                  'unknown keys are an error naming them. "" for none.'),
    "gate_config": ('Gate settings merged over the preset\'s evaluate: section, as a JSON object: '
                    '{"gates": {METRIC: {"min": X} | {"max": Y} | {"better": "higher"}}, "margin": M, '
                    '"tolerance": T}; a rule may add "relative": false and "recipes": ["dalle"]. '
                    '{} keeps the preset\'s gates.'),
    "source": ('Raw data to ingest: an image folder with captions, WebDataset tars, a parquet/CSV '
               'manifest (s3:// or a path the pods can read), or shapes://n=...,size=...; "" '
               'synthesizes the preset\'s Shapes world.'),
    "dataset_version": ('The dataset version id the data must have (dvc:HASH@git:REV or its DVC '
                        'hash); the run stops before training on other content. "" accepts any.'),
    "dataset_uri": "An ingested (or recaptioned) dataset: its directory or s3:// prefix.",
    "bundle_uri": "A generation bundle (easel bundle step output): its directory or s3:// prefix.",
    "recipe": "Which generator to build: dalle (dVAE + transformer), unclip (prior + decoder) or all.",
    "caption_policy": ("The captions the generators train on: blend (DALL-E 3: 95% synthetic long, "
                       "5% original), long, short or original."),
    "deploy": "Serve each promoted model as the KServe InferenceService named after it.",
    "seed": "Seed of the synthesized Shapes world (used when source is empty).",
    "recaption_groups": "Parallel recaption tasks, each over a share of the shards.",
    "recaption_threads": ("Torch threads of each recaption task; 0 uses every core of its pod. Tasks "
                          "that share one machine (a local run) take a share each."),
    "dalle_model": "Registered MLflow model name of the DALL-E recipe.",
    "unclip_model": "Registered MLflow model name of the unCLIP recipe.",
    "model_name": "Registered MLflow model name the bundle becomes a version of.",
    "serving_namespace": "Kubernetes namespace of the InferenceServices (deploy=true).",
    "serving_image": "Container image the InferenceServices run (deploy=true).",
    "serving_gpus": "GPUs per serving replica (deploy=true); 0 serves on CPU.",
    "canary_traffic_percent": ("Share of traffic for the new version while KServe keeps the previous "
                               "one; 100 sends all of it (a later deploy with 100 promotes a canary, "
                               "a deploy of the previous version rolls back)."),
    "workdir": ('Stable place for the steps\' outputs (a directory or s3:// prefix): a re-run after a '
                'failure finds and resumes each step\'s partial work there. "" keeps outputs in '
                'KFP\'s artifact store (no resume across runs).'),
    "model": "Registered MLflow model name.",
    "ref": "The version to serve: a number or an alias such as production.",
    "service": 'InferenceService name ("" the model\'s name).',
    "namespace": "Kubernetes namespace.",
    "image": "Container image.",
    "gpus": "GPUs per replica; 0 serves on CPU.",
    "budgets": "Reranking budgets N: each row draws N candidates per image and keeps the CLIP-best.",
    "scales": "Classifier-free guidance scales, one row each.",
    "text_decoder_overrides": ("Preset overrides (JSON object) of the text-conditioned decoder, not "
                               "merged with overrides: keep decoder.conditioning = text in it."),
    "part": "The part to train: tokenizer, dvae, transformer, clip, captioner, prior, decoder or upsampler.",
    "deps": ('Trained parts it needs, by name, as object-store URIs: {"tokenizer": "s3://..."}.'),
    "nodes": "Pods (one per node): one master and nodes-1 workers.",
    "gpus_per_node": "GPUs, and training processes, per pod.",
}


def documented(**own: str) -> Callable:
    """Give a pipeline function a docstring `Args:` section for every parameter, from PARAMS (or
    `own` where this pipeline means something else by a name). Apply below @dsl.pipeline. A
    parameter with no description is an error here, at import."""
    def wrap(fn: Callable) -> Callable:
        names = list(inspect.signature(fn).parameters)
        missing = [n for n in names if n not in own and n not in PARAMS]
        if missing:
            raise ValueError(f"{fn.__name__}: no description for parameter(s) {missing}: add them to "
                             f"pipelines/params.py PARAMS or pass them to documented()")
        # KFP's docstring parser reads Args: only after a summary line
        summary = inspect.cleandoc(fn.__doc__ or "").strip() or f"The {fn.__name__.replace('_', ' ')}."
        args = "\n".join(f"    {n}: {' '.join(own.get(n, PARAMS.get(n, '')).split())}" for n in names)
        fn.__doc__ = summary + "\n\nArgs:\n" + args + "\n"
        return fn
    return wrap
