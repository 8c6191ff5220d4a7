"""Deploy a registered model version as a KServe InferenceService (the lifecycle's `deploy` step).

    deploy_model("easel-dalle", "production", service="dalle", namespace="easel-serving",
                 image="REGISTRY/easel-cuda:0.1.0", gpus=1, canary_traffic_percent=10)

What is deployed is always a registered version: its storageUri is the version's artifact location
in the object store (KServe's storage initializer downloads it to /mnt/models, where `easel serve`
finds the bundle), and the version is recorded as annotations, so a served image's lineage reaches
the registry.

- A new service is the InferenceService charts/easel-serving renders (`render_inferenceservice`:
  the chart is the one renderer of the serving manifest, run offline by Helm's engine). The chart
  also makes the predictor's ServiceAccount (`<service>-s3`, S3 endpoint annotations) and a
  NetworkPolicy: install the chart once per service, or name an existing account in
  values.serviceAccount.name.
- An existing service (made by the chart or by an earlier deploy) keeps everything it has; only the
  model (STORAGE_URI, annotations), the canary split and, when given, the image change
  (`update_inferenceservice`). Create, replace and the wait go through KServe's client
  (KServeClient). KServe keeps the previous revision serving the rest of the traffic while a
  canary percentage is set; a deploy without one sends all traffic to the new version.

The pipeline's service account may create, get and update InferenceServices in the serving
namespace and nothing else (charts/easel-platform pipelines-rbac.yaml): no delete, so a rollback is
a deploy of the previous version.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from types import SimpleNamespace
from typing import Any

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER = "kserve-container"
# Where MLflow's proxied artifacts live (charts/easel-platform: MLFLOW_ARTIFACTS_DESTINATION is
# s3://<mlflow bucket>/artifacts); a registered version's `mlflow-artifacts:/` source maps there.
DEFAULT_ARTIFACTS_URI = "s3://easel-mlflow/artifacts"
ANNOTATION_STORAGE = "easel.ai/storage-uri"
ANNOTATION_MODEL = "easel.ai/registered-model"
ANNOTATION_VERSION = "easel.ai/model-version"
KNATIVE_MODES = ("Serverless", "Knative")
# what KServe's storage initializer can download (the chart accepts the same)
FETCHABLE = re.compile(r"^(s3|gs|pvc|https?)://.+")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SERVING_CHART = "easel-serving"
# C2PA signing material: a Secret named easel-c2pa by convention (keys chain.pem, signer.key; docs/deploy.md)
C2PA_SECRET = "easel-c2pa"
# The deploy step's choices where it differs from the chart's values.yaml (the chart is generic;
# a deploy with gpus lands on the GPU pool): the label infra/terraform/gke gives the H100 pool, and its taint
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
def check_canary(canary_traffic_percent: int | None, deployment_mode: str) -> int | None:
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


def check_service(service: str) -> None:
    if not isinstance(service, str) or not _DNS1035.match(service) or len(service) > 45:
        raise ValueError(f"service must be a DNS-1035 label of at most 45 characters (it names the URL "
                         f"and the pods), got {service!r}")


def check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or not _DNS1123.match(namespace) or len(namespace) > 63:
        raise ValueError(f"namespace must be a DNS-1123 label, got {namespace!r}")


def _check_common(service: str, namespace: str, storage_uri: str) -> None:
    check_service(service)
    check_namespace(namespace)
    if not isinstance(storage_uri, str) or not FETCHABLE.match(storage_uri):
        raise ValueError(f"storage_uri={storage_uri!r}: use an s3://, gs://, pvc:// or http(s):// URI")


def _annotations(storage_uri: str, model: str, version: str) -> dict[str, str]:
    out = {ANNOTATION_STORAGE: storage_uri}
    if model:
        out[ANNOTATION_MODEL] = model
    if version:
        out[ANNOTATION_VERSION] = str(version)
    return out


def chart_dir(chart: str = SERVING_CHART) -> str:
    """The Helm chart's folder: $EASEL_CHARTS_DIR/<chart> (the images set it: components/docker),
    else the repository's charts/<chart> beside the package (a source checkout)."""
    root = os.environ.get("EASEL_CHARTS_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "charts")
    path = os.path.join(root, chart)
    if not os.path.isfile(os.path.join(path, "Chart.yaml")):
        raise DeployError(f"the {chart} Helm chart is not at {path}: set EASEL_CHARTS_DIR to the folder "
                          "holding Easel's charts/ (the images set it)")
    return path


def _split_image(image: str) -> tuple[str, str]:
    """REGISTRY/NAME:TAG -> (REGISTRY/NAME, TAG), the chart's image.repository and image.tag."""
    if not isinstance(image, str) or not image or any(ch.isspace() for ch in image) or "@" in image:
        raise ValueError(f"image must be an image reference like REGISTRY/easel-cuda:TAG (the chart takes a "
                         f"repository and a tag, no digest), got {image!r}")
    repo, sep, tag = image.rpartition(":")
    if not sep or not repo or "/" in tag:  # no tag, or the colon was a registry port
        raise ValueError(f"image must name a tag, like REGISTRY/easel-cuda:0.1.0, got {image!r}")
    return repo, tag


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render_inferenceservice(service: str, namespace: str, storage_uri: str, image: str, *,
                            model: str = "", version: str = "", canary_traffic_percent: int | None = None,
                            gpus: int = 0, values: dict | None = None) -> dict:
    """The InferenceService of charts/easel-serving for a release named `service` in `namespace`.

    The chart is the one renderer of the serving manifest, rendered offline by Helm's own engine
    (helm-python-sdk): a deploy step and a `helm install` make the same object, and the chart's
    values schema and checks are the only ones. The arguments set the chart's model.*, image.*,
    predictor.canaryTrafficPercent and predictor.gpus; gpus > 0 also puts the predictor on the
    GPU pool (GPU_NODE_SELECTOR, GPU_TOLERATIONS) unless `values` says otherwise. `values` is any
    other chart value (values.yaml documents them), e.g. {"deploymentMode": "RawDeployment"} (the
    HPA then scales on cpu unless predictor.scaleMetric is given). The C2PA Secret is the
    convention's easel-c2pa (docs/deploy.md) unless values.provenance says otherwise.
    ValueError: the argument or the chart's own message."""
    import helm_python
    import yaml
    values = values or {}
    _check_common(service, namespace, storage_uri)
    repository, tag = _split_image(image)
    mode = values.get("deploymentMode", "Serverless")
    canary = check_canary(canary_traffic_percent, mode)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"gpus must be an integer >= 0, got {gpus!r}")
    ours: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag},
        "model": {"storageUri": storage_uri, "registeredName": model or "", "version": str(version or "")},
        "predictor": {"canaryTrafficPercent": canary, "gpus": gpus},
        "provenance": {"secretName": "" if (values.get("provenance") or {}).get("devChain") else C2PA_SECRET}}
    if gpus:
        ours["predictor"].update(nodeSelector=GPU_NODE_SELECTOR, tolerations=GPU_TOLERATIONS)
    if mode not in KNATIVE_MODES:
        ours["predictor"]["scaleMetric"] = "cpu"  # the HPA's metric; values.yaml's default is Knative's
    try:
        out = helm_python.Chart.load(chart_dir()).render(_merge(ours, values), name=service, namespace=namespace)
    except helm_python.HelmError as e:
        raise ValueError(f"{SERVING_CHART} chart: {_helm_message(e)}") from None
    (obj,) = [d for d in yaml.safe_load_all(out[f"{SERVING_CHART}/templates/inferenceservice.yaml"]) if d]
    # what `helm install` would add: the release namespace; and who made it (no Helm release holds it)
    obj["metadata"]["namespace"] = namespace
    obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "easel-deploy"
    return obj


def _helm_message(e: Exception) -> str:
    """Helm's error without its template position: "execution error at (file:line:col): msg" -> msg."""
    text = str(e).strip()
    m = re.search(r"execution error at \([^)]*\): (.*)", text, re.S)
    return (m.group(1) if m else text).strip()


def update_inferenceservice(existing: dict, storage_uri: str, *, model: str = "", version: str = "",
                            canary_traffic_percent: int | None = None, image: str | None = None) -> dict:
    """A copy of an existing InferenceService serving another model: STORAGE_URI (the predictor's
    and a transformer's) and the lineage annotations, the canary split (set, or removed for all traffic), and the image
    of the model containers when given. Everything else (resources, transformer, finalizers,
    Helm's labels) stays as it is."""
    obj = copy.deepcopy(existing)
    meta = obj.get("metadata") or {}
    _check_common(meta.get("name", ""), meta.get("namespace", ""), storage_uri)
    annotations = meta.setdefault("annotations", {}) or {}
    meta["annotations"] = annotations
    mode = annotations.get("serving.kserve.io/deploymentMode", "Serverless")
    canary = check_canary(canary_traffic_percent, mode)
    predictor = (obj.get("spec") or {}).get("predictor")
    containers = [c for c in (predictor or {}).get("containers") or [] if c.get("name") == CONTAINER]
    if not containers:
        raise DeployError(f"InferenceService {meta.get('namespace')}/{meta.get('name')} has no predictor "
                          f"container {CONTAINER!r}: it was not made by Easel (charts/easel-serving)")
    _set_storage_uri(containers[0], storage_uri, add=True)
    # a transformer in front loads the same bundle (its CLIP and tokenizer: safety, prompt limit)
    for c in ((obj["spec"].get("transformer") or {}).get("containers") or []):
        if c.get("name") == CONTAINER:
            _set_storage_uri(c, storage_uri, add=False)
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


def _set_storage_uri(container: dict, storage_uri: str, add: bool) -> None:
    env = container.setdefault("env", [])
    for var in env:
        if var.get("name") == "STORAGE_URI":
            var.pop("valueFrom", None)
            var["value"] = storage_uri
            return
    if add:
        env.insert(0, {"name": "STORAGE_URI", "value": storage_uri})


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
def kserve_client():
    """KServe's own client (create / get / replace / wait_isvc_ready): in-cluster credentials
    inside a pod, else ~/.kube/config. DeployError when there is neither."""
    from kserve import KServeClient
    from kubernetes.config import ConfigException
    try:
        return KServeClient()
    except (ConfigException, OSError) as e:
        raise DeployError(f"no Kubernetes access: not in a cluster and no usable kubeconfig ({e})") from None


class _Manifest(dict):
    """A rendered manifest (a dict, as Helm renders it) in the shape KServeClient reads.

    KServeClient.create/replace read `.api_version` and `.metadata.namespace/.resource_version`
    from their argument (written for kserve's generated V1beta1InferenceService models), and the
    Kubernetes client sends a dict body as it is; converting Helm's YAML into those models and back
    would only risk dropping fields the models do not know."""

    def __init__(self, obj: dict):
        super().__init__(obj)
        meta = obj.get("metadata") or {}
        self.api_version = obj["apiVersion"]
        self.metadata = SimpleNamespace(name=meta.get("name"), namespace=meta.get("namespace"),
                                        resource_version=meta.get("resourceVersion"))


def _api_exception(e: Exception) -> Exception:
    """The ApiException behind a KServeClient error (it raises a RuntimeError while handling one),
    or `e` itself."""
    return e if hasattr(e, "status") else (e.__cause__ or e.__context__ or e)


def _status(e: Exception) -> int | None:
    return getattr(_api_exception(e), "status", None)


def _api_error(e: Exception, what: str) -> DeployError:
    cause = _api_exception(e)
    body = getattr(cause, "body", None) or ""
    return DeployError(f"{what} failed: {getattr(cause, 'status', '')} {getattr(cause, 'reason', '')}: "
                       f"{str(body or cause)[:500]}".strip())


def apply_inferenceservice(new: dict, *, model: str = "", version: str = "",
                           canary_traffic_percent: int | None = None, image: str | None = None,
                           wait: bool = True, timeout: float = 900.0, poll_seconds: float = 10.0,
                           client=None) -> dict:
    """Create `new` (render_inferenceservice's object) or, when the service exists, replace it with
    update_inferenceservice's copy, through KServe's client (`client`, default kserve_client());
    with wait, KServe's wait_isvc_ready for this generation (TimeoutError otherwise, with KServe's
    last reason). Returns {"action", "object", "url", "ready"}."""
    client = client or kserve_client()
    ns, name = new["metadata"]["namespace"], new["metadata"]["name"]
    storage_uri = new["metadata"]["annotations"][ANNOTATION_STORAGE]
    for attempt in range(5):  # a concurrent writer changes resourceVersion: re-read and retry
        try:
            existing = client.get(name, namespace=ns)
        except RuntimeError as e:
            if _status(e) != 404:
                raise _api_error(e, f"reading InferenceService {ns}/{name}") from None
            existing = None
        if existing is None:
            _check_service_account(client, new)
        try:
            if existing is None:
                action, applied = "created", client.create(_Manifest(new), namespace=ns)
            else:
                obj = update_inferenceservice(existing, storage_uri, model=model, version=version,
                                              canary_traffic_percent=canary_traffic_percent, image=image)
                obj.pop("status", None)
                action, applied = "updated", client.replace(name, _Manifest(obj), namespace=ns)
            break
        except RuntimeError as e:
            if _status(e) == 409 and attempt < 4:
                continue
            raise _api_error(e, f"{'creating' if existing is None else 'updating'} InferenceService "
                                f"{ns}/{name}") from None
    result = {"action": action, "object": applied, "url": (applied.get("status") or {}).get("url"),
              "ready": False}
    if not wait:
        return result
    try:
        client.wait_isvc_ready(name, namespace=ns, timeout_seconds=timeout, polling_interval=poll_seconds,
                               expected_generation=(applied.get("metadata") or {}).get("generation"))
    except RuntimeError as e:
        if _status(e) is not None:
            raise _api_error(e, f"reading InferenceService {ns}/{name}") from None
        reason = ready_state(client.get(name, namespace=ns))[1]  # KServe's timeout message is the whole object
        raise TimeoutError(f"InferenceService {ns}/{name} not ready after {timeout:.0f}s: {reason}") from None
    current = client.get(name, namespace=ns)
    return {**result, "object": current, "url": (current.get("status") or {}).get("url"), "ready": True}


def _check_service_account(client, new: dict) -> None:
    """A new service runs as the chart's `<service>-s3` account (the storage initializer's S3
    endpoint and credentials): without it KServe would wait out the whole timeout on pods that
    cannot start, so say what to install instead."""
    ns, name = new["metadata"]["namespace"], new["metadata"]["name"]
    account = new["spec"]["predictor"].get("serviceAccountName")
    if not account:
        return
    try:
        client.core_api.read_namespaced_service_account(account, ns)
    except Exception as e:  # noqa: BLE001 (kubernetes' ApiException; anything else is reported as is)
        if getattr(e, "status", None) != 404:
            raise _api_error(e, f"reading ServiceAccount {ns}/{account}") from None
        raise DeployError(f"ServiceAccount {ns}/{account} not found: a new service {name!r} runs as the "
                          f"serving chart's account (the model store's endpoint and credentials); install "
                          f"the chart for it once: helm install {name} charts/easel-serving -n {ns} "
                          f"(docs/deploy.md), or deploy to a service that exists") from None


def deploy_model(model: str, ref: str | int = "production", *, service: str, namespace: str, image: str,
                 canary_traffic_percent: int | None = None, gpus: int = 0, wait: bool = True,
                 timeout: float = 900.0, dry_run: bool = False, storage_uri: str | None = None,
                 artifacts_uri: str | None = None, allow_ungated: bool = False, poll_seconds: float = 10.0,
                 **render: Any) -> dict[str, Any]:
    """Serve version `ref` (number or alias) of registered model `model` as InferenceService
    `service` in `namespace`. dry_run: render only (what a new service would look like), no
    cluster. storage_uri: serve these artifacts without the registry (no version or gate is
    checked or claimed: needs allow_ungated, recorded on the service).
    Returns {"model", "version", "storage_uri", "service", "namespace", "canary_traffic_percent",
    "action" (created | updated | rendered), "url", "ready", "object"}."""
    if storage_uri:
        # artifacts named directly: no registry version and no gate record was checked, so the
        # service claims neither (a version number here would be lineage nobody verified)
        if not (allow_ungated or dry_run):
            raise DeployError("storage_uri= skips the registry, and with it the promotion gate: deploy a "
                              "registered version (its name and --ref), or pass allow_ungated "
                              "(--allow-ungated; recorded on the InferenceService)")
        info = {"model": model, "version": "", "storage_uri": storage_uri}
        gated = False
    else:
        from model_code.registry.registry import check_gated
        info = registered_version(model, ref, artifacts_uri)
        gated = check_gated(model, info["version"], info["tags"], allow_ungated)
    obj = render_inferenceservice(service, namespace, info["storage_uri"], image, model=model,
                                  version=info["version"], canary_traffic_percent=canary_traffic_percent,
                                  gpus=gpus, **render)
    if gated is False:   # recorded where the cluster shows it
        obj["metadata"].setdefault("annotations", {})["easel.ai/gate"] = (
            "ungated (--storage-uri: not looked up in the registry)" if storage_uri else "ungated (--allow-ungated)")
    summary = {"model": model, "version": info["version"], "storage_uri": info["storage_uri"],
               "service": service, "namespace": namespace,
               "canary_traffic_percent": obj["spec"]["predictor"].get("canaryTrafficPercent", 100)}
    if dry_run:
        return {**summary, "action": "rendered", "url": None, "ready": False, "object": obj}
    applied = apply_inferenceservice(obj, model=model, version=info["version"],
                                     canary_traffic_percent=canary_traffic_percent, image=image,
                                     wait=wait, timeout=timeout, poll_seconds=poll_seconds)
    if applied["action"] == "updated":
        # an update switches the model, not the resources: say so when the GPUs asked for differ
        kept = _predictor_gpus(applied["object"])
        if kept != int(gpus or 0):
            summary["note"] = (f"{namespace}/{service} kept its {kept} GPU(s) per replica; gpus={gpus} "
                               f"applies to a new service (helm upgrade --set predictor.gpus=N changes it)")
            logging.getLogger(__name__).warning(summary["note"])
    return {**summary, **applied}


def _predictor_gpus(obj: dict) -> int:
    for c in ((obj.get("spec") or {}).get("predictor") or {}).get("containers") or []:
        if c.get("name") == CONTAINER:
            return int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
    return 0
