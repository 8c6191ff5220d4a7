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


def wait_for(read, check, timeout: float, poll_seconds: float, what: str) -> dict:
    """Read an object every `poll_seconds` until check(obj) -> (done, status) says done (check may
    raise, e.g. for a failed job); returns the last object read. TimeoutError after `timeout`
    seconds: "{what} {status}", where "{after}" in status reads "after N s" (else it is appended);
    the object is left as it is."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        current = read()
        done, status = check(current)
        if done:
            return current
        if time.monotonic() >= deadline:
            after = f"after {timeout:.0f}s"
            raise TimeoutError(f"{what} " + (status.replace("{after}", after) if "{after}" in status
                                             else f"{status} {after}"))
        time.sleep(poll_seconds)
