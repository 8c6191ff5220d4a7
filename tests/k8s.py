"""Offline validation of Kubernetes objects: kubernetes-validate's strict schemas for built-in
kinds, and tests/schemas/<name>.json for custom resources (InferenceService, PyTorchJob), whose
core-type $refs resolve into the same definitions. Each validator is built once (the definitions
are several megabytes)."""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache

import jsonschema
import kubernetes_validate
import referencing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_VERSION = "1.32"  # what kind/config and the pinned KServe 0.15 / Knative 1.17 target
K8S_SCHEMAS = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema",
                           f"v{K8S_VERSION}.0-local-strict")


@lru_cache(maxsize=None)
def _k8s_definitions() -> referencing.Registry:
    with open(os.path.join(K8S_SCHEMAS, "_definitions.json")) as f:
        return referencing.Resource.from_contents(json.load(f)) @ referencing.Registry()


@lru_cache(maxsize=None)
def k8s_validator(kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    """kubernetes-validate's strict schema for a built-in kind (its validate() re-reads the
    definitions for every object). Same file naming as the library:
    rbac.authorization.k8s.io/v1 -> role-rbac-v1.json."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = os.path.join(K8S_SCHEMAS, f"{kind.lower()}-{group_version}.json")
    assert os.path.exists(path), f"Kubernetes {K8S_VERSION} has no {kind} in {api_version}"
    with open(path) as f:
        schema = json.load(f)
    return jsonschema.Draft202012Validator(
        schema, registry=referencing.Resource.from_contents(schema) @ _k8s_definitions())


def validate_builtin(obj: dict) -> None:
    k8s_validator(obj["kind"], obj["apiVersion"]).validate(obj)


@lru_cache(maxsize=None)
def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for tests/schemas/<name>.json (a custom resource)."""
    with open(os.path.join(ROOT, "tests", "schemas", f"{name}.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=_k8s_definitions())


def _strip_none(x):
    if isinstance(x, dict):
        return {k: _strip_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_strip_none(v) for v in x]
    return x


def _diff(a, b, path: str = "") -> list[str]:
    """Paths where b (what the model kept) differs from a (what was rendered)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}" for k in a if k not in b]
        return out + [p for k in a if k in b for p in _diff(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def trainer_model(kind: str, obj: dict):
    """Parse a Kubeflow Trainer object (TrainJob, ClusterTrainingRuntime) with kubeflow_trainer_api's
    models (types and required fields checked) and fail on anything the model drops: its pydantic
    models ignore unknown fields, which the API server would reject."""
    import importlib
    import re as _re
    snake = _re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
    mod = importlib.import_module(f"kubeflow_trainer_api.models.trainer_v1alpha1_{snake}")
    model = getattr(mod, f"TrainerV1alpha1{kind}").from_dict(obj)
    dropped = _diff(_strip_none(obj), _strip_none(model.to_dict()))
    assert not dropped, f"{kind}: fields the Trainer API does not know: {dropped}"
    return model
