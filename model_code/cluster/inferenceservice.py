"""Deploy a registered model version as a KServe InferenceService (the lifecycle's `deploy` step).

    deploy_model("easel-dalle", "production", service="dalle", namespace="easel-serving",
                 image="REGISTRY/easel-cuda:0.1.0", gpus=1, canary_traffic_percent=10)

What is deployed is always a registered version: its storageUri is the version's artifact location
in the object store (KServe's storage initializer downloads it to /mnt/models, where `easel serve`
finds the bundle), and the version is recorded as annotations, so a served image's lineage reaches
the registry.

- A new service is created as charts/easel-serving renders it with the same settings
  (`render_inferenceservice`; a test keeps the two identical). The chart also makes the
  predictor's ServiceAccount (`<service>-s3`, S3 endpoint annotations) and a NetworkPolicy: install
  the chart once per service, or name an existing account with `service_account`.
- An existing service (made by the chart or by an earlier deploy) keeps everything it has; only the
  model (STORAGE_URI, annotations), the canary split and, when given, the image change
  (`update_inferenceservice`). KServe keeps the previous revision serving the rest of the traffic
  while a canary percentage is set; a deploy without one sends all traffic to the new version.

The pipeline's service account may create, get and update InferenceServices in the serving
namespace and nothing else (charts/easel-platform pipelines-rbac.yaml): no delete, so a rollback is
a deploy of the previous version.
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER = "kserve-container"
MODEL_MOUNT = "/mnt/models"
# C2PA signing material (the chart's provenance.*): a Secret mounted read-only, by convention named
# easel-c2pa (keys chain.pem, signer.key; docs/deploy.md), or a development chain in an emptyDir
C2PA_SECRET = "easel-c2pa"
C2PA_MOUNT = "/etc/easel/c2pa"
C2PA_DEV_MOUNT = "/var/run/easel/c2pa-dev"
# Where MLflow's proxied artifacts live (charts/easel-platform: MLFLOW_ARTIFACTS_DESTINATION is
# s3://<mlflow bucket>/artifacts); a registered version's `mlflow-artifacts:/` source maps there.
DEFAULT_ARTIFACTS_URI = "s3://easel-mlflow/artifacts"
ANNOTATION_STORAGE = "easel.ai/storage-uri"
ANNOTATION_MODEL = "easel.ai/registered-model"
ANNOTATION_VERSION = "easel.ai/model-version"
KNATIVE_MODES = ("Serverless", "Knative")
RAW_MODES = ("RawDeployment", "Standard")
# what KServe's storage initializer can download (the chart accepts the same)
FETCHABLE = re.compile(r"^(s3|gs|pvc|https?)://.+")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# charts/easel-serving/values.yaml, the parts a deploy sets
DEFAULT_RESOURCES = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}
SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
# the label infra/terraform/gke gives the H100 pool, and its taint
GPU_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class DeployError(RuntimeError):
    """The cluster refused the InferenceService or it did not become ready; the message says why."""


# ---------------------------------------------------------------- the registered version
def kserve_storage_uri(source: str, artifacts_uri: str | None = None) -> str:
    """A registered version's artifact location as a URI KServe's storage initializer downloads.

    MLflow with proxied artifacts (the platform chart) reports `mlflow-artifacts:/<path>` (or
    `mlflow-artifacts://host:port/<path>`); the bytes are at <artifacts_uri>/<path> in the object
    store (artifacts_uri: EASEL_MLFLOW_ARTIFACTS_URI, default s3://easel-mlflow/artifacts).
    s3:// and gs:// sources are already fetchable. Anything else (file://, a local path) lives on
    one machine only: ValueError."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"storage: the registered version has no artifact source ({source!r})")
    if source.startswith("mlflow-artifacts:"):
        root = (artifacts_uri or os.environ.get("EASEL_MLFLOW_ARTIFACTS_URI") or DEFAULT_ARTIFACTS_URI).rstrip("/")
        rest = source[len("mlflow-artifacts:"):]
        if rest.startswith("//"):  # mlflow-artifacts://host:port/path: drop the authority
            rest = rest[2:].partition("/")[2]
        path = rest.lstrip("/")
        if not path:
            raise ValueError(f"storage: {source!r} names no artifact path")
        return f"{root}/{path}"
    if FETCHABLE.match(source) and not source.startswith("pvc://"):
        return source
    raise ValueError(f"storage: the registered version's artifacts are at {source}, which KServe cannot "
                     "download; register into an MLflow server whose artifacts are in the object store "
                     "(MLFLOW_TRACKING_URI of the platform chart)")


def registered_version(name: str, ref: str | int = "production", artifacts_uri: str | None = None) -> dict:
    """{"model", "version", "source", "storage_uri"} of `name` at `ref` (a version number or an
    alias) in the MLflow registry; ValueError when there is no such model, version or alias."""
    from mlflow.exceptions import MlflowException

    from model_code import tracking
    from model_code.registry.registry import _check_name
    _check_name(name)
    ref = str(ref).strip()
    if not ref:
        raise ValueError("ref: a version number or an alias (production, staging) is required")
    c = tracking.client()
    try:
        mv = c.get_model_version(name, ref) if ref.isdigit() else c.get_model_version_by_alias(name, ref)
        source = c.get_model_version_download_uri(name, str(mv.version))
        tags = dict(mv.tags or {})
    except MlflowException as e:
        # a missing alias is INVALID_PARAMETER_VALUE in some stores: go by the message too
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(e):
            what = f"version {ref}" if ref.isdigit() else f"alias {ref!r}"
            detail = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"model: no {what} of {name!r} in the registry ({detail})") from None
        raise
    return {"model": name, "version": str(mv.version), "source": source,
            "storage_uri": kserve_storage_uri(source, artifacts_uri), "tags": tags}


# ---------------------------------------------------------------- the object
def _check_canary(canary_traffic_percent: int | None, deployment_mode: str) -> int | None:
    """None and 100 both mean "all traffic to the new version": the field is left out."""
    if canary_traffic_percent is None:
        return None
    p = canary_traffic_percent
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 100:
        raise ValueError(f"canary_traffic_percent must be an integer in [0, 100], got {p!r}")
    if p == 100:
        return None
    if deployment_mode not in KNATIVE_MODES:
        # the same rule as the chart: traffic splits are Knative revisions
        raise ValueError(f"canary_traffic_percent needs deployment_mode Serverless (Knative revisions); "
                         f"it is {deployment_mode}")
    return p


def _check_common(service: str, namespace: str, storage_uri: str) -> None:
    if not isinstance(service, str) or not _DNS1035.match(service) or len(service) > 45:
        raise ValueError(f"service must be a DNS-1035 label of at most 45 characters (it names the URL "
                         f"and the pods), got {service!r}")
    if not isinstance(namespace, str) or not _DNS1123.match(namespace) or len(namespace) > 63:
        raise ValueError(f"namespace must be a DNS-1123 label, got {namespace!r}")
    if not isinstance(storage_uri, str) or not FETCHABLE.match(storage_uri):
        raise ValueError(f"storage_uri={storage_uri!r}: use an s3://, gs://, pvc:// or http(s):// URI")


def _annotations(storage_uri: str, model: str, version: str) -> dict[str, str]:
    out = {ANNOTATION_STORAGE: storage_uri}
    if model:
        out[ANNOTATION_MODEL] = model
    if version:
        out[ANNOTATION_VERSION] = str(version)
    return out


def render_inferenceservice(service: str, namespace: str, storage_uri: str, image: str, *,
                            model: str = "", version: str = "", canary_traffic_percent: int | None = None,
                            deployment_mode: str = "Serverless", gpus: int = 0,
                            min_replicas: int = 1, max_replicas: int = 3, scale_metric: str | None = None,
                            scale_target: int = 2, container_concurrency: int = 4, timeout: int = 600,
                            resources: dict | None = None, node_selector: dict[str, str] | None = None,
                            tolerations: list[dict] | None = None, service_account: str | None = None,
                            image_pull_policy: str = "IfNotPresent", c2pa_secret: str | None = C2PA_SECRET,
                            c2pa_dev_chain: bool = False) -> dict:
    """The InferenceService charts/easel-serving renders for a release named `service` with these
    values (defaults: the chart's values.yaml). gpus > 0 puts the predictor on the GPU pool (its
    node selector and toleration) unless node_selector / tolerations are given. ValueError names
    the bad argument."""
    _check_common(service, namespace, storage_uri)
    if not isinstance(image, str) or not image or any(ch.isspace() for ch in image):
        raise ValueError(f"image must be an image reference like REGISTRY/easel-cuda:TAG, got {image!r}")
    if deployment_mode not in KNATIVE_MODES + RAW_MODES:
        raise ValueError(f"deployment_mode must be one of {', '.join(KNATIVE_MODES + RAW_MODES)}, "
                         f"got {deployment_mode!r}")
    knative = deployment_mode in KNATIVE_MODES
    canary = _check_canary(canary_traffic_percent, deployment_mode)
    metric = scale_metric or ("concurrency" if knative else "cpu")
    allowed = ("concurrency", "rps") if knative else ("cpu", "memory")
    if metric not in allowed:
        raise ValueError(f"scale_metric={metric}: with deployment_mode={deployment_mode} use "
                         f"{' or '.join(allowed)}")
    for arg, value, low in (("gpus", gpus, 0), ("min_replicas", min_replicas, 0 if knative else 1),
                            ("max_replicas", max_replicas, 1), ("scale_target", scale_target, 1),
                            ("container_concurrency", container_concurrency, 0), ("timeout", timeout, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
    if min_replicas > max_replicas:
        raise ValueError(f"min_replicas ({min_replicas}) is larger than max_replicas ({max_replicas})")

    if not c2pa_secret and not c2pa_dev_chain:
        raise ValueError("c2pa_secret: name the Secret holding the C2PA signing chain (chain.pem) and key "
                         "(signer.key), or set c2pa_dev_chain for a development chain no verifier trusts")
    res = copy.deepcopy(resources or DEFAULT_RESOURCES)
    if gpus:
        res.setdefault("limits", {})["nvidia.com/gpu"] = gpus
        node_selector = GPU_NODE_SELECTOR if node_selector is None else node_selector
        tolerations = GPU_TOLERATIONS if tolerations is None else tolerations
    annotations = {"serving.kserve.io/deploymentMode": deployment_mode}
    if not knative:
        annotations["serving.kserve.io/autoscalerClass"] = "hpa"
    annotations.update(_annotations(storage_uri, model, version))
    predictor: dict[str, Any] = {
        "serviceAccountName": service_account or f"{service}-s3",
        "minReplicas": min_replicas, "maxReplicas": max_replicas,
        "scaleMetric": metric, "scaleTarget": scale_target, "timeout": timeout}
    if container_concurrency:
        predictor["containerConcurrency"] = container_concurrency
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    if node_selector:
        predictor["nodeSelector"] = dict(node_selector)
    if tolerations:
        predictor["tolerations"] = [dict(t) for t in tolerations]
    predictor["containers"] = [{
        "name": CONTAINER, "image": image, "imagePullPolicy": image_pull_policy,
        "args": ["serve", "--model", MODEL_MOUNT, "--model-name", service, "--host", "0.0.0.0",
                 "--port", "8080"],
        # STORAGE_URI is how a custom container asks KServe's storage initializer for the model
        "env": [{"name": "STORAGE_URI", "value": storage_uri},
                # the root file system is read-only: caches and temporary files go to /tmp
                {"name": "HOME", "value": "/tmp"}, {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
                # weights come from /mnt/models only, never from a hub
                {"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                *_c2pa_env(c2pa_secret)],
        "resources": res,
        "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 10,
                           "failureThreshold": 3},
        "securityContext": copy.deepcopy(SECURITY_CONTEXT),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "c2pa", "mountPath": C2PA_MOUNT, "readOnly": True} if c2pa_secret
                         else {"name": "c2pa-dev", "mountPath": C2PA_DEV_MOUNT}]}]
    predictor["volumes"] = [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                            {"name": "c2pa", "secret": {"secretName": c2pa_secret, "defaultMode": 0o400}}
                            if c2pa_secret else {"name": "c2pa-dev", "emptyDir": {"sizeLimit": "1Mi"}}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": service, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "easel-serving",
                                    "app.kubernetes.io/instance": service,
                                    "app.kubernetes.io/part-of": "easel",
                                    "app.kubernetes.io/managed-by": "easel-deploy"},
                         "annotations": annotations},
            "spec": {"predictor": predictor}}


def _c2pa_env(secret: str | None) -> list[dict]:
    """Where the server finds its signing material (charts/easel-serving/templates/_helpers.tpl)."""
    if secret:
        return [{"name": "EASEL_C2PA_CERT_CHAIN", "value": f"{C2PA_MOUNT}/chain.pem"},
                {"name": "EASEL_C2PA_KEY", "value": f"{C2PA_MOUNT}/signer.key"}]
    return [{"name": "EASEL_C2PA_DEV_DIR", "value": C2PA_DEV_MOUNT}]


def update_inferenceservice(existing: dict, storage_uri: str, *, model: str = "", version: str = "",
                            canary_traffic_percent: int | None = None, image: str | None = None) -> dict:
    """A copy of an existing InferenceService serving another model: STORAGE_URI and the lineage
    annotations of the predictor, the canary split (set, or removed for all traffic), and the image
    of the model containers when given. Everything else (resources, transformer, finalizers,
    Helm's labels) stays as it is."""
    obj = copy.deepcopy(existing)
    meta = obj.get("metadata") or {}
    _check_common(meta.get("name", ""), meta.get("namespace", ""), storage_uri)
    annotations = meta.setdefault("annotations", {}) or {}
    meta["annotations"] = annotations
    mode = annotations.get("serving.kserve.io/deploymentMode", "Serverless")
    canary = _check_canary(canary_traffic_percent, mode)
    predictor = (obj.get("spec") or {}).get("predictor")
    containers = [c for c in (predictor or {}).get("containers") or [] if c.get("name") == CONTAINER]
    if not containers:
        raise DeployError(f"InferenceService {meta.get('namespace')}/{meta.get('name')} has no predictor "
                          f"container {CONTAINER!r}: it was not made by Easel (charts/easel-serving)")
    env = containers[0].setdefault("env", [])
    for var in env:
        if var.get("name") == "STORAGE_URI":
            var.pop("valueFrom", None)
            var["value"] = storage_uri
            break
    else:
        env.insert(0, {"name": "STORAGE_URI", "value": storage_uri})
    annotations.pop(ANNOTATION_MODEL, None)
    annotations.pop(ANNOTATION_VERSION, None)
    annotations.update(_annotations(storage_uri, model, version))
    if canary is None:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = canary
    if image:
        for part in ("predictor", "transformer"):  # one image serves both roles
            for c in (obj["spec"].get(part) or {}).get("containers") or []:
                if c.get("name") == CONTAINER:
                    c["image"] = image
    return obj


def ready_state(obj: dict) -> tuple[bool, str]:
    """(ready, message): ready once KServe has reconciled this generation of the object and its
    Ready condition is True; the message is the latest reason it is not."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready") or {}
    if generation is not None and (observed is None or observed < generation):
        return False, "KServe has not reconciled the new spec yet"
    if str(ready.get("status")) == "True":
        return True, ""
    failing = [c for c in conditions.values() if str(c.get("status")) == "False"]
    return False, "; ".join(f"{c.get('type')}: {c.get('message') or c.get('reason') or 'not ready'}"
                            for c in failing) or "no Ready condition yet"


# ---------------------------------------------------------------- the cluster
def _api():
    from model_code.cluster.kube import NoClusterAccess, custom_objects_api
    try:
        return custom_objects_api()
    except NoClusterAccess as e:
        raise DeployError(str(e)) from None


def _api_error(e, what: str) -> DeployError:
    body = (getattr(e, "body", None) or "")
    return DeployError(f"{what} failed: {getattr(e, 'status', '')} {getattr(e, 'reason', '')}: "
                       f"{str(body)[:500]}".strip())


def apply_inferenceservice(new: dict, *, model: str = "", version: str = "",
                           canary_traffic_percent: int | None = None, image: str | None = None,
                           wait: bool = True, timeout: float = 900.0, poll_seconds: float = 10.0,
                           api=None) -> dict:
    """Create `new` (render_inferenceservice's object) or, when the service exists, update it with
    update_inferenceservice; with wait, poll until it is ready (TimeoutError otherwise: KServe's
    last reason in the message). Returns {"action", "object", "url", "ready"}."""
    from kubernetes.client.rest import ApiException
    api = api or _api()
    ns, name = new["metadata"]["namespace"], new["metadata"]["name"]
    storage_uri = new["metadata"]["annotations"][ANNOTATION_STORAGE]
    for attempt in range(5):  # a concurrent writer changes resourceVersion: re-read and retry
        try:
            existing = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise _api_error(e, f"reading InferenceService {ns}/{name}") from None
            existing = None
        try:
            if existing is None:
                action, applied = "created", api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, new)
            else:
                obj = update_inferenceservice(existing, storage_uri, model=model, version=version,
                                              canary_traffic_percent=canary_traffic_percent, image=image)
                obj.pop("status", None)
                action = "updated"
                applied = api.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, obj)
            break
        except ApiException as e:
            if e.status == 409 and attempt < 4:
                continue
            raise _api_error(e, f"{'creating' if existing is None else 'updating'} InferenceService "
                                f"{ns}/{name}") from None
    result = {"action": action, "object": applied, "url": (applied.get("status") or {}).get("url"),
              "ready": False}
    if not wait:
        return result
    from model_code.cluster.kube import wait_for
    current = wait_for(lambda: api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name),
                       lambda obj: (ready_state(obj)[0], "not ready {after}: " + ready_state(obj)[1]),
                       timeout, poll_seconds, f"InferenceService {ns}/{name}")
    return {**result, "object": current, "url": (current.get("status") or {}).get("url"), "ready": True}


def deploy_model(model: str, ref: str | int = "production", *, service: str, namespace: str, image: str,
                 canary_traffic_percent: int | None = None, gpus: int = 0, wait: bool = True,
                 timeout: float = 900.0, dry_run: bool = False, storage_uri: str | None = None,
                 artifacts_uri: str | None = None, allow_ungated: bool = False, **render: Any) -> dict[str, Any]:
    """Serve version `ref` (number or alias) of registered model `model` as InferenceService
    `service` in `namespace`. dry_run: render only (what a new service would look like), no
    cluster. storage_uri: skip the registry lookup (the version's artifacts are known).
    Returns {"model", "version", "storage_uri", "service", "namespace", "canary_traffic_percent",
    "action" (created | updated | rendered), "url", "ready", "object"}."""
    if storage_uri:
        info = {"model": model, "version": str(ref) if str(ref).isdigit() else "", "storage_uri": storage_uri}
        gated = None   # artifacts named directly: no registry version to check
    else:
        from model_code.registry.registry import check_gated
        info = registered_version(model, ref, artifacts_uri)
        gated = check_gated(model, info["version"], info["tags"], allow_ungated)
    obj = render_inferenceservice(service, namespace, info["storage_uri"], image, model=model,
                                  version=info["version"], canary_traffic_percent=canary_traffic_percent,
                                  gpus=gpus, **render)
    if gated is False:   # recorded where the cluster shows it
        obj["metadata"].setdefault("annotations", {})["easel.ai/gate"] = "ungated (--allow-ungated)"
    summary = {"model": model, "version": info["version"], "storage_uri": info["storage_uri"],
               "service": service, "namespace": namespace,
               "canary_traffic_percent": obj["spec"]["predictor"].get("canaryTrafficPercent", 100)}
    if dry_run:
        return {**summary, "action": "rendered", "url": None, "ready": False, "object": obj}
    applied = apply_inferenceservice(obj, model=model, version=info["version"],
                                     canary_traffic_percent=canary_traffic_percent, image=image,
                                     wait=wait, timeout=timeout)
    return {**summary, **applied}
