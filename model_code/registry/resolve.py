"""Model lookup for serving: a model URI (models:/NAME@ALIAS, models:/NAME/VERSION, a local
directory, file://, s3:// or /mnt/models) -> the local Easel bundle it holds, with the
registry version and its gate state."""
from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from model_code import storage

@dataclass
class ResolvedModel:
    bundle: str                       # local dir or s3:// prefix with bundle.json
    name: str | None = None           # registered model name
    version: str | None = None        # registered model version
    tags: dict = field(default_factory=dict)
    tmp: Any = None                   # keeps a download directory alive
    gated: bool | None = None         # registry versions: passed gate on record (None: not a registry URI)


def find_bundle(local_dir: str) -> str:
    """The bundle inside a directory: the directory itself, the `bundle` artifact of an MLflow
    pyfunc model (model_code.registry.pyfunc), or a single bundle one or two levels down."""
    if os.path.isfile(os.path.join(local_dir, "bundle.json")):
        return local_dir
    mlmodel = os.path.join(local_dir, "MLmodel")
    if os.path.isfile(mlmodel):
        import yaml
        with open(mlmodel) as f:
            spec = yaml.safe_load(f) or {}
        from model_code.registry.pyfunc import BUNDLE_ARTIFACT
        rel = (((spec.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}) \
            .get(BUNDLE_ARTIFACT, {}).get("path")
        if rel and os.path.isfile(os.path.join(local_dir, rel, "bundle.json")):
            return os.path.join(local_dir, rel)
    found = sorted({os.path.dirname(p) for depth in ("*", os.path.join("*", "*"))
                    for p in glob.glob(os.path.join(local_dir, depth, "bundle.json"))})
    if len(found) == 1:
        return found[0]
    raise ValueError(f"model: no Easel bundle (bundle.json) in {local_dir}"
                     + (f"; several candidates: {found}" if found else ""))


def resolve_model(uri: str, allow_ungated: bool = False) -> ResolvedModel:
    """models:/NAME@ALIAS | models:/NAME/VERSION | a local dir | file:// | s3://prefix |
    /mnt/models (KServe's storage initializer) -> the bundle it holds. A registry version must
    have a passed gate on record (registry.check_gated) unless allow_ungated."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("model: a model URI is required (models:/NAME@ALIAS, a directory or s3://...)")
    if uri.startswith("models:/"):
        import mlflow
        from model_code import tracking
        tracking.configure()
        from model_code.registry.registry import check_gated
        name, version, tags = _registry_version(uri)
        gated = check_gated(name, version, tags, allow_ungated)
        tmp = tempfile.TemporaryDirectory(prefix="easel-model-")
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp.name)
        return ResolvedModel(find_bundle(local), name, version, tags, tmp, gated)
    if storage.is_remote(uri):
        if storage.exists(storage.join(uri, "bundle.json")):
            return ResolvedModel(uri)   # Generator.load reads s3:// bundles itself
        tmp = tempfile.TemporaryDirectory(prefix="easel-model-")
        local = storage.get_dir(uri, tmp.name)
        return ResolvedModel(find_bundle(local), tmp=tmp)
    path = storage.local_path(uri)
    if not os.path.isdir(path):
        raise ValueError(f"model: {uri} is not a directory, a models:/ URI or an s3:// prefix")
    return ResolvedModel(find_bundle(path))


def _registry_version(uri: str) -> tuple[str, str, dict]:
    from model_code import tracking
    rest = uri[len("models:/"):]
    c = tracking.client()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = c.get_model_version_by_alias(name, alias)
    else:
        name, _, version = rest.partition("/")
        mv = c.get_model_version(name, version)
    return name, str(mv.version), dict(mv.tags or {})
