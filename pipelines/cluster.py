"""How pipeline tasks meet the cluster: credentials from Secrets, client settings from the
platform chart's ConfigMap, and GPU steps on the GPU node pool. All of it compiles into the
YAML and is ignored (with a warning) by kfp.local, so one definition serves both.

Names follow charts/easel-platform for a release called EASEL_RELEASE (default "easel"):
Secret `<release>-s3` (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and ConfigMap
`<release>-client` (MLFLOW_TRACKING_URI, EASEL_S3_ENDPOINT_URL, ...).
"""
import inspect
import os
import sys
import types

from kfp import kubernetes
from kfp.dsl import pipeline_task as _pipeline_task


def _caller_names(context: int = 1) -> list[tuple]:
    """inspect.stack() reduced to what kfp reads from it (the function name of each frame)."""
    frames, f = [], sys._getframe(1)
    while f is not None:
        frames.append((f, f.f_code.co_filename, f.f_lineno, f.f_code.co_name, None, None))
        f = f.f_back
    return frames


# kfp's task setters (set_cpu_request, set_accelerator_type, ...) call inspect.stack() on every
# call only to name themselves in an error message; that reads source lines for the whole stack and
# costs ~0.4 s a call on these machines, most of the time it takes to import and compile the
# pipelines. Its module gets a stack() that returns the same names without reading any source.
if getattr(_pipeline_task, "inspect", None) is inspect:
    class _Inspect(types.ModuleType):
        stack = staticmethod(_caller_names)

        def __getattr__(self, name):  # everything else is the real inspect
            return getattr(inspect, name)

    _pipeline_task.inspect = _Inspect("inspect")

RELEASE = os.environ.get("EASEL_RELEASE", "easel")
S3_SECRET = f"{RELEASE}-s3"
CLIENT_CONFIG = f"{RELEASE}-client"
GPU_RESOURCE = "nvidia.com/gpu"
# GPU steps run on spot nodes: a preempted step exits 143 (train.run.Preempted) after writing its
# checkpoint, KFP retries it, and the retry resumes from the checkpoint. 5 tries with exponential
# backoff from 1 min (capped at 30 min) ride out a reclaim wave without retrying a real bug forever.
PREEMPTION_RETRIES = 5
PREEMPTION_BACKOFF = {"backoff_duration": "60s", "backoff_factor": 2.0, "backoff_max_duration": "1800s"}
# the label infra/terraform/gke gives the H100 pool
GPU_POOL_LABEL = ("cloud.google.com/gke-accelerator", os.environ.get("EASEL_GPU_ACCELERATOR", "nvidia-h100-80gb"))
CLIENT_KEYS = ("MLFLOW_TRACKING_URI", "EASEL_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_REGION",
               "AWS_DEFAULT_REGION", "EASEL_DATA_URI", "EASEL_CHECKPOINT_URI", "EASEL_DVC_REMOTE_URI")


def platform(task, cache: bool = True):
    """Every task: object-store credentials and MLflow settings, never as parameters."""
    kubernetes.use_secret_as_env(task, S3_SECRET, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                                   "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    kubernetes.use_config_map_as_env(task, CLIENT_CONFIG, {k: k for k in CLIENT_KEYS})
    task.set_caching_options(cache)
    return task


def gpu(task, count: int = 1, memory: str = "64Gi", cpu: str = "8"):
    """A GPU step: accelerator request, the GPU pool's node selector and taint toleration, a
    memory-backed /dev/shm for data-loader workers, and retries for spot preemption."""
    platform(task)
    task.set_retry(PREEMPTION_RETRIES, **PREEMPTION_BACKOFF)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(count)
    task.set_cpu_request(cpu).set_memory_request(memory)
    kubernetes.add_node_selector(task, *GPU_POOL_LABEL)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit="16Gi")
    return task


def cpu(task, memory: str = "8Gi", cpu: str = "2", cache: bool = True):
    platform(task, cache=cache)
    task.set_cpu_request(cpu).set_memory_request(memory)
    return task
