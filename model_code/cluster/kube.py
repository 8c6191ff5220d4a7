"""The Kubernetes API client every cluster helper uses: in-cluster credentials, else ~/.kube/config."""
from __future__ import annotations


class NoClusterAccess(RuntimeError):
    """Neither in a cluster nor a usable kubeconfig."""


def custom_objects_api():
    """kubernetes' CustomObjectsApi (InferenceServices, TrainJobs, PyTorchJobs)."""
    from kubernetes import client, config
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise NoClusterAccess(f"no Kubernetes access: not in a cluster and no usable kubeconfig ({e})") from None
    return client.CustomObjectsApi()
