"""Multi-node training on a GPU node pool: a Kubeflow Training Operator v1 PyTorchJob (the legacy
launcher; Kubeflow Trainer v2's TrainJob, trainjob.py, is the default), and what both launchers
share: the argument checks, job names, `easel train` arguments, resource scaling, job states and
the create-and-wait loop.

`render_pytorchjob()` fills the template next to this file (pytorchjob.yaml, itself a complete job
for two 8-GPU nodes) for one part, preset and cluster shape, and returns the object as a dict;
`submit_pytorchjob()` creates it through the Kubernetes API and waits for it to finish.

    obj = render_pytorchjob("transformer", "base", "REGISTRY/easel-cuda:0.1.0", nodes=4,
                            gpus_per_node=8, data="s3://easel-data/shapes-256",
                            out="s3://easel-checkpoints/transformer-base", namespace="kubeflow")
    submit_pytorchjob(obj, wait=True, timeout=3 * 24 * 3600)

From a shell: `easel job render transformer --launcher pytorchjob --nodes 4 ... > job.yaml`.
"""
from __future__ import annotations

import copy
import json
import os
import re
from typing import Any, Iterable

import yaml

from model_code import config as _config
from model_code import storage

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
TEMPLATE = os.path.join(os.path.dirname(__file__), "pytorchjob.yaml")

# The parts `easel train` trains (the preset's top-level model sections).
TRAIN_PARTS = ("tokenizer", "dvae", "transformer", "clip", "captioner", "prior", "decoder", "upsampler")
# The template describes one a3-highgpu-8g node per replica; resources scale with gpus_per_node.
TEMPLATE_GPUS = 8

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+)(Mi|Gi|Ti)?$")


class JobFailed(RuntimeError):
    """The training job reached its Failed condition; the message carries the controller's reason."""


class PyTorchJobFailed(JobFailed):
    """A PyTorchJob failed (kept for callers that catch this name)."""


def check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def scale_quantity(quantity: str | int, factor: float) -> str:
    """'1400Gi' * 0.5 -> '700Gi'; '176' * 0.5 -> '88' (whole units, at least 1)."""
    m = _QUANTITY.match(str(quantity))
    if not m:
        raise ValueError(f"cannot scale resource quantity {quantity!r} from the template")
    return f"{max(1, round(int(m.group(1)) * factor))}{m.group(2) or ''}"


def scale_resources(resources: dict, gpus_per_node: int) -> dict:
    """A template's container resources (written for TEMPLATE_GPUS GPUs) for `gpus_per_node`:
    cpu and memory scaled in proportion, the GPU count set."""
    factor = gpus_per_node / TEMPLATE_GPUS
    out = copy.deepcopy(resources)
    for kind in ("requests", "limits"):
        for key in ("cpu", "memory"):
            if key in out.get(kind, {}):
                out[kind][key] = scale_quantity(out[kind][key], factor)
        out.setdefault(kind, {})["nvidia.com/gpu"] = gpus_per_node
    return out


SPEC_ANNOTATION = "easel.ai/spec-sha256"


def spec_digest(obj: dict) -> str:
    """SHA-256 of a job's spec (canonical JSON): what a retried step compares with the job of its
    name before taking it as its own."""
    import hashlib
    import json
    return hashlib.sha256(json.dumps(obj.get("spec"), sort_keys=True, default=str).encode()).hexdigest()


def job_name(part: str, preset: str, out: str) -> str:
    """A job name fixed by what it trains and where: a retried pipeline step finds its own job
    again instead of starting a second one."""
    import hashlib
    return f"easel-{part}-{preset}-{hashlib.sha1(out.encode()).hexdigest()[:8]}"


def train_args(deps: dict[str, str] | None = None, overrides: dict | None = None) -> list[str]:
    """`easel train` arguments for a pod: --dep PART=URI per dependency, --set key=value per leaf
    of `overrides` (values as JSON, which the CLI reads as YAML)."""
    def leaves(tree: dict, prefix: str = ""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={json.dumps(value)}"
    args: list[str] = []
    for dep, uri in sorted((deps or {}).items()):
        if dep not in TRAIN_PARTS:
            raise ValueError(f"dep {dep!r}: not a part (one of {', '.join(TRAIN_PARTS)})")
        if uri and not storage.is_remote(uri):
            raise ValueError(f"dep {dep}={uri}: a trained dependency must be an object-store URI such as "
                             f"s3://bucket/path (the pods on different nodes share no file system)")
        if uri:
            args += ["--dep", f"{dep}={uri}"]
    for item in leaves(overrides or {}):
        args += ["--set", item]
    return args


def check_job_args(part: str, preset: str, image: str, nodes: int, gpus_per_node: int, data: str,
                   out: str, namespace: str, name: str) -> str:
    """The arguments of a multi-node training job, checked (ValueError naming the bad one);
    returns the job name."""
    if part not in TRAIN_PARTS:
        raise ValueError(f"part must be one of {', '.join(TRAIN_PARTS)}, got {part!r}")
    if preset not in _config.PRESETS:
        # a local YAML path would not exist inside the pods: only the packaged presets travel
        raise ValueError(f"preset must be one of {', '.join(_config.PRESETS)}, got {preset!r}")
    _config.preset_path(preset)  # the packaged file is there
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise ValueError(f"image must be an image reference like REGISTRY/easel-cuda:TAG, got {image!r}")
    nodes = check_int("nodes", nodes, 1, 1024)
    gpus_per_node = check_int("gpus_per_node", gpus_per_node, 1, 16)
    for arg, uri in (("data", data), ("out", out)):
        if not isinstance(uri, str) or not storage.is_remote(uri):
            raise ValueError(f"{arg} must be an object-store URI such as s3://bucket/path (the pods on "
                             f"different nodes share no file system), got {uri!r}")
    if not isinstance(namespace, str) or not _DNS1123.match(namespace) or len(namespace) > 63:
        raise ValueError(f"namespace must be a DNS-1123 label, got {namespace!r}")
    # pods are named <name>-worker-<index>, which must stay a valid 63-character label
    if not _DNS1035.match(name) or len(name) > 48:
        raise ValueError(f"name must be a DNS-1035 label of at most 48 characters, got {name!r}")
    return name


def render_pytorchjob(part: str, preset: str, image: str, nodes: int, gpus_per_node: int,
                      data: str, out: str, namespace: str, *, name: str | None = None,
                      s3_secret: str = "easel-s3", client_config: str = "easel-client",
                      node_selector: dict[str, str] | None = None,
                      tolerations: list[dict] | None = None, backoff_limit: int = 6,
                      extra_args: Iterable[str] = ()) -> dict:
    """The PyTorchJob (a dict ready for the API or `yaml.safe_dump`) training `part` of `preset`.

    nodes: pods (one Master + nodes-1 Workers); gpus_per_node: processes and GPUs per pod.
    data / out: object-store URIs (the pods share no file system). node_selector / tolerations
    replace the template's H100-pool ones when given. Raises ValueError naming the bad argument.
    """
    name = check_job_args(part, preset, image, nodes, gpus_per_node, data, out, namespace,
                          name or f"easel-train-{part}-{preset}")
    backoff_limit = check_int("backoff_limit", backoff_limit, 0, 100)
    extra_args = [str(a) for a in extra_args]

    with open(TEMPLATE) as f:
        job = yaml.safe_load(f)  # the YAML anchor gives Worker its own copy of the pod template
    job["metadata"].update(name=name, namespace=namespace)
    job["metadata"]["labels"].update({"easel.ai/part": part, "easel.ai/preset": preset})
    job["spec"]["nprocPerNode"] = str(gpus_per_node)
    job["spec"]["runPolicy"]["backoffLimit"] = backoff_limit

    master = job["spec"]["pytorchReplicaSpecs"]["Master"]
    pod = master["template"]
    pod["metadata"]["labels"].update({"easel.ai/part": part, "easel.ai/preset": preset})
    spec = pod["spec"]
    if node_selector is not None:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations is not None:
        spec["tolerations"] = [dict(t) for t in tolerations]
    (container,) = [c for c in spec["containers"] if c["name"] == "pytorch"]
    container["image"] = image
    launcher = [a for a in container["args"] if a.startswith("--") and "$(" in a] + ["--no-python"]
    container["args"] = launcher + [
        "easel", "train", part, "--preset", preset, "--data", data, "--out", out,
        "--set", f"train.num_nodes={nodes}", "--set", f"train.devices={gpus_per_node}",
        *extra_args]
    container["envFrom"] = [{"configMapRef": {"name": client_config}},
                            {"secretRef": {"name": s3_secret}}]

    # resources: the template's figures are for 8 GPUs per pod
    factor = gpus_per_node / TEMPLATE_GPUS
    container["resources"] = scale_resources(container["resources"], gpus_per_node)
    for vol in spec["volumes"]:
        if vol["name"] == "dshm":
            vol["emptyDir"]["sizeLimit"] = scale_quantity(vol["emptyDir"]["sizeLimit"], factor)

    replicas = job["spec"]["pytorchReplicaSpecs"]
    if nodes == 1:
        del replicas["Worker"]  # a Master-only job is a single-node run
    else:
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": master["restartPolicy"],
                              "template": copy.deepcopy(pod)}
    return job


def job_state(obj: dict) -> tuple[str, str]:
    """(state, message) of a training job (PyTorchJob or TrainJob) from its status conditions.

    state is Succeeded (a PyTorchJob's Succeeded, a TrainJob's Complete) or Failed once the job is
    finished, else the latest true condition (Created, Running, Restarting, Suspended), or Pending
    before the controller has written any."""
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or []
                  if str(c.get("status")) == "True"]
    for terminal, types in (("Failed", ("Failed",)), ("Succeeded", ("Succeeded", "Complete"))):
        for c in conditions:
            if c.get("type") in types:
                return terminal, c.get("message") or c.get("reason") or ""
    if conditions:
        last = conditions[-1]
        return last.get("type", "Unknown"), last.get("message") or ""
    return "Pending", ""


def submit_custom_object(obj: dict, group: str, version: str, plural: str, wait: bool = True,
                         timeout: float = 7 * 24 * 3600, poll_seconds: float = 15.0,
                         exists_ok: bool = False, api=None) -> dict:
    """Create a training job (in-cluster credentials, else ~/.kube/config) and, with wait, poll
    its conditions until it succeeds (returns the final object), fails (JobFailed; PyTorchJobFailed
    for a PyTorchJob) or the timeout passes (TimeoutError; the job keeps running). exists_ok: a job
    of the same name and spec is taken as this one (a retried pipeline step waits for the job it
    submitted before); one of another spec is an error. api: a CustomObjectsApi (default: kube.custom_objects_api())."""
    from kubernetes.client.rest import ApiException

    from model_code.cluster.kube import custom_objects_api, wait_for
    kind = obj.get("kind", "job")
    failed = PyTorchJobFailed if kind == "PyTorchJob" else JobFailed
    api = api or custom_objects_api()
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    digest = spec_digest(obj)
    obj["metadata"].setdefault("annotations", {})[SPEC_ANNOTATION] = digest
    try:
        created = api.create_namespaced_custom_object(group, version, ns, plural, obj)
    except ApiException as e:
        if e.status == 409 and exists_ok:
            created = api.get_namespaced_custom_object(group, version, ns, plural, name)
            theirs = ((created.get("metadata") or {}).get("annotations") or {}).get(SPEC_ANNOTATION)
            # the name is fixed by part, preset and --out only: a job that trained other data, image,
            # shape or settings into the same place is not this one (jobs from before the record:
            # their spec as it was sent)
            if (theirs != digest) if theirs else (created.get("spec") != obj.get("spec")):
                raise RuntimeError(f"{kind} {ns}/{name} exists with another spec (data, image, nodes or "
                                   f"settings differ) for the same output; give this run another out, or "
                                   f"delete the old job (kubectl -n {ns} delete {kind.lower()} {name})")
            if wait and job_state(created)[0] == "Failed":
                raise failed(f"{kind} {ns}/{name} exists and has failed: "
                             f"{job_state(created)[1] or 'no message'}; delete it to train again "
                             f"(kubectl -n {ns} delete {kind.lower()} {name})") from None
        else:
            raise RuntimeError(f"creating {kind} {ns}/{name} failed: {e.status} {e.reason}: "
                               f"{(e.body or '')[:500]}") from e
    if not wait:
        return created
    def check(obj: dict) -> tuple[bool, str]:
        state, message = job_state(obj)
        if state == "Failed":
            raise failed(f"{kind} {ns}/{name} failed: {message or 'no message'}")
        return state == "Succeeded", f"still {state}"
    return wait_for(lambda: api.get_namespaced_custom_object(group, version, ns, plural, name), check,
                    timeout, poll_seconds, f"{kind} {ns}/{name}")


def submit_pytorchjob(obj: dict, wait: bool = True, timeout: float = 7 * 24 * 3600,
                      poll_seconds: float = 15.0, exists_ok: bool = False, api=None) -> dict:
    """submit_custom_object for a PyTorchJob (render_pytorchjob's output)."""
    if obj.get("kind") != "PyTorchJob" or not (obj.get("metadata") or {}).get("namespace"):
        raise ValueError("obj must be a PyTorchJob with metadata.namespace (use render_pytorchjob)")
    return submit_custom_object(obj, GROUP, VERSION, PLURAL, wait=wait, timeout=timeout,
                                poll_seconds=poll_seconds, exists_ok=exists_ok, api=api)
