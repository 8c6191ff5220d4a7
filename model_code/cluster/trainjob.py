"""Multi-node training on a GPU node pool: a Kubeflow Trainer v2 TrainJob (the default launcher;
the Training Operator's PyTorchJob, pytorchjob.py, is the legacy one).

The pod is the ClusterTrainingRuntime `easel-torch` (easel-torch-runtime.yaml beside this file,
installed by infra/kustomize/kubeflow-trainer); `render_trainjob()` returns the TrainJob that
names it and sets what varies per job: the image, `torchrun --no-python easel train PART ...`,
nodes, one process per GPU, resources per node, and the node pool when asked (a runtime patch).
`submit_trainjob()` creates it through the Kubernetes API and waits for it to finish.

    obj = render_trainjob("transformer", "base", "REGISTRY/easel-cuda:0.1.0", nodes=4, gpus_per_node=8,
                          data="s3://easel-data/shapes-256", out="s3://easel-checkpoints/transformer-base",
                          namespace="kubeflow")
    submit_trainjob(obj, wait=True)

From a shell: `easel job render transformer --nodes 4 ... > job.yaml` (`--launcher pytorchjob` for
the legacy operator).
"""
from __future__ import annotations

import os
from typing import Iterable

import yaml

from model_code.cluster.pytorchjob import check_job_args, scale_resources, submit_custom_object

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "easel-torch"
RUNTIME_FILE = os.path.join(os.path.dirname(__file__), "easel-torch-runtime.yaml")
PATCH_MANAGER = "easel.ai/render"   # who owns the node-pool patch (Trainer's runtimePatches)


def runtime() -> dict:
    """The ClusterTrainingRuntime the TrainJobs refer to (what infra installs)."""
    with open(RUNTIME_FILE) as f:
        return yaml.safe_load(f)


def render_trainjob(part: str, preset: str, image: str, nodes: int, gpus_per_node: int,
                    data: str, out: str, namespace: str, *, name: str | None = None,
                    runtime_name: str = RUNTIME, node_selector: dict[str, str] | None = None,
                    tolerations: list[dict] | None = None, extra_args: Iterable[str] = ()) -> dict:
    """The TrainJob (a dict ready for the API or `yaml.safe_dump`) training `part` of `preset`.

    nodes: training nodes (pods); gpus_per_node: processes and GPUs per pod. data / out:
    object-store URIs (the pods share no file system). node_selector / tolerations replace the
    runtime's H100-pool ones when given. Raises ValueError naming the bad argument."""
    name = check_job_args(part, preset, image, nodes, gpus_per_node, data, out, namespace,
                          name or f"easel-train-{part}-{preset}")
    pod = runtime()["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # the runtime's figures are one 8-GPU node's; the same scaling as the PyTorchJob's
    resources = scale_resources(container["resources"], gpus_per_node)
    job = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "easel", "app.kubernetes.io/component": "train",
                                "easel.ai/part": part, "easel.ai/preset": preset}},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime_name},
            "trainer": {
                "image": image,
                "command": ["torchrun", "--no-python", "easel", "train", part, "--preset", preset,
                            "--data", data, "--out", out, "--set", f"train.num_nodes={nodes}",
                            "--set", f"train.devices={gpus_per_node}", *[str(a) for a in extra_args]],
                "numNodes": nodes,
                "numProcPerNode": gpus_per_node,
                "resourcesPerNode": resources,
            },
        },
    }
    if node_selector is not None or tolerations is not None:
        patch = {}
        if node_selector is not None:
            patch["nodeSelector"] = dict(node_selector)
        if tolerations is not None:
            patch["tolerations"] = [dict(t) for t in tolerations]
        job["spec"]["runtimePatches"] = [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": patch}}}}]}}}}]
    return job


def submit_trainjob(obj: dict, wait: bool = True, timeout: float = 7 * 24 * 3600,
                    poll_seconds: float = 15.0, exists_ok: bool = False, api=None) -> dict:
    """Create the TrainJob and, with wait, poll its conditions until it completes (returns the
    final object), fails (JobFailed) or the timeout passes (TimeoutError; the job keeps running).
    exists_ok: a job of the same name is taken as this one (a retried pipeline step)."""
    if obj.get("kind") != "TrainJob" or not (obj.get("metadata") or {}).get("namespace"):
        raise ValueError("obj must be a TrainJob with metadata.namespace (use render_trainjob)")
    return submit_custom_object(obj, GROUP, VERSION, PLURAL, wait=wait, timeout=timeout,
                                poll_seconds=poll_seconds, exists_ok=exists_ok, api=api)
