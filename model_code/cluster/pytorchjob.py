"""Multi-node training on a GPU node pool: a Kubeflow Training Operator v1 PyTorchJob.

`render_pytorchjob()` fills the template next to this file (pytorchjob.yaml, itself a complete job
for two 8-GPU nodes) for one part, preset and cluster shape, and returns the object as a dict;
`submit_pytorchjob()` creates it through the Kubernetes API and waits for it to finish.

    obj = render_pytorchjob("transformer", "base", "REGISTRY/easel-cuda:0.1.0", nodes=4,
                            gpus_per_node=8, data="s3://easel-data/shapes-256",
                            out="s3://easel-checkpoints/transformer-base", namespace="kubeflow")
    submit_pytorchjob(obj, wait=True, timeout=3 * 24 * 3600)

From a shell: `python -m model_code.cluster.pytorchjob render transformer --nodes 4 ... > job.yaml`.
"""
from __future__ import annotations

import copy
import json
import os
import re
import time
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


class PyTorchJobFailed(RuntimeError):
    """The job reached the Failed condition; the message carries the operator's reason."""


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _scale_quantity(quantity: str | int, factor: float) -> str:
    """'1400Gi' * 0.5 -> '700Gi'; '176' * 0.5 -> '88' (whole units, at least 1)."""
    m = _QUANTITY.match(str(quantity))
    if not m:
        raise ValueError(f"cannot scale resource quantity {quantity!r} from the template")
    return f"{max(1, round(int(m.group(1)) * factor))}{m.group(2) or ''}"


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
        if uri:
            args += ["--dep", f"{dep}={uri}"]
    for item in leaves(overrides or {}):
        args += ["--set", item]
    return args


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
    if part not in TRAIN_PARTS:
        raise ValueError(f"part must be one of {', '.join(TRAIN_PARTS)}, got {part!r}")
    if preset not in _config.PRESETS:
        # a local YAML path would not exist inside the pods: only the packaged presets travel
        raise ValueError(f"preset must be one of {', '.join(_config.PRESETS)}, got {preset!r}")
    _config.preset_path(preset)  # the packaged file is there
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise ValueError(f"image must be an image reference like REGISTRY/easel-cuda:TAG, got {image!r}")
    nodes = _check_int("nodes", nodes, 1, 1024)
    gpus_per_node = _check_int("gpus_per_node", gpus_per_node, 1, 16)
    backoff_limit = _check_int("backoff_limit", backoff_limit, 0, 100)
    for arg, uri in (("data", data), ("out", out)):
        if not isinstance(uri, str) or not storage.is_remote(uri):
            raise ValueError(f"{arg} must be an object-store URI such as s3://bucket/path (the pods on "
                             f"different nodes share no file system), got {uri!r}")
    if not isinstance(namespace, str) or not _DNS1123.match(namespace) or len(namespace) > 63:
        raise ValueError(f"namespace must be a DNS-1123 label, got {namespace!r}")
    name = name or f"easel-train-{part}-{preset}"
    # pods are named <name>-worker-<index>, which must stay a valid 63-character label
    if not _DNS1035.match(name) or len(name) > 48:
        raise ValueError(f"name must be a DNS-1035 label of at most 48 characters, got {name!r}")
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
    res = container["resources"]
    for kind in ("requests", "limits"):
        for key in ("cpu", "memory"):
            if key in res[kind]:
                res[kind][key] = _scale_quantity(res[kind][key], factor)
        res[kind]["nvidia.com/gpu"] = gpus_per_node
    for vol in spec["volumes"]:
        if vol["name"] == "dshm":
            vol["emptyDir"]["sizeLimit"] = _scale_quantity(vol["emptyDir"]["sizeLimit"], factor)

    replicas = job["spec"]["pytorchReplicaSpecs"]
    if nodes == 1:
        del replicas["Worker"]  # a Master-only job is a single-node run
    else:
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": master["restartPolicy"],
                              "template": copy.deepcopy(pod)}
    return job


def job_state(obj: dict) -> tuple[str, str]:
    """(state, message) of a PyTorchJob from its status conditions.

    state is Succeeded or Failed once the job is finished, else the latest true condition
    (Created, Running, Restarting), or Pending before the operator has written any.
    """
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or []
                  if str(c.get("status")) == "True"]
    for terminal in ("Failed", "Succeeded"):
        for c in conditions:
            if c.get("type") == terminal:
                return terminal, c.get("message") or c.get("reason") or ""
    if conditions:
        last = conditions[-1]
        return last.get("type", "Unknown"), last.get("message") or ""
    return "Pending", ""


def submit_pytorchjob(obj: dict, wait: bool = True, timeout: float = 7 * 24 * 3600,
                      poll_seconds: float = 15.0, exists_ok: bool = False) -> dict:
    """Create the job (in-cluster credentials, else ~/.kube/config) and, with wait, poll its
    conditions until it succeeds (returns the final object), fails (PyTorchJobFailed) or the
    timeout passes (TimeoutError; the job keeps running). exists_ok: a job of the same name is
    taken as this one (a retried pipeline step waits for the job it submitted before)."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    if obj.get("kind") != "PyTorchJob" or not (obj.get("metadata") or {}).get("namespace"):
        raise ValueError("obj must be a PyTorchJob with metadata.namespace (use render_pytorchjob)")
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, obj)
    except ApiException as e:
        if e.status == 409 and exists_ok:
            created = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            if wait and job_state(created)[0] == "Failed":
                raise PyTorchJobFailed(f"PyTorchJob {ns}/{name} exists and has failed: "
                                       f"{job_state(created)[1] or 'no message'}; delete it to train again "
                                       f"(kubectl -n {ns} delete pytorchjob {name})") from None
        else:
            raise RuntimeError(f"creating PyTorchJob {ns}/{name} failed: {e.status} {e.reason}: "
                               f"{(e.body or '')[:500]}") from e
    if not wait:
        return created
    deadline = time.monotonic() + timeout
    state = "Pending"
    while True:
        current = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        state, message = job_state(current)
        if state == "Succeeded":
            return current
        if state == "Failed":
            raise PyTorchJobFailed(f"PyTorchJob {ns}/{name} failed: {message or 'no message'}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"PyTorchJob {ns}/{name} still {state} after {timeout:.0f}s")
        time.sleep(poll_seconds)


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(prog="python -m model_code.cluster.pytorchjob",
                                description="Render or submit the multi-node training PyTorchJob.")
    p.add_argument("action", choices=["render", "submit"])
    p.add_argument("part", choices=TRAIN_PARTS)
    p.add_argument("--preset", default="base", choices=_config.PRESETS)
    p.add_argument("--image", required=True)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--data", required=True, help="s3:// URI of the ingested dataset")
    p.add_argument("--out", required=True, help="s3:// URI for checkpoints and the trained part")
    p.add_argument("--namespace", default="kubeflow")
    p.add_argument("--name", default=None)
    p.add_argument("--no-wait", action="store_true", help="submit: return once created")
    args = p.parse_args(argv)
    try:
        obj = render_pytorchjob(args.part, args.preset, args.image, args.nodes, args.gpus_per_node,
                                args.data, args.out, args.namespace, name=args.name)
        if args.action == "render":
            sys.stdout.write(yaml.safe_dump(obj, sort_keys=False))
            return 0
        final = submit_pytorchjob(obj, wait=not args.no_wait)
        print(json.dumps({"name": obj["metadata"]["name"], "state": job_state(final)[0]}))
        return 0
    except (ValueError, RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(_main())
