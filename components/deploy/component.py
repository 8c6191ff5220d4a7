from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def deploy(model: str, ref: str, service: str, namespace: str, image: str, canary_traffic_percent: int,
           gpus: int, timeout: int, allow_ungated: bool = False) -> dict:
    """Serve a registered version (number or alias) as a KServe InferenceService, with an optional
    canary split, and wait until it is ready. A version without a passed gate record is refused
    unless allow_ungated (then the InferenceService is annotated as ungated)."""
    from easel.steps import deploy_step
    return deploy_step(model, ref, service=service, namespace=namespace, image=image,
                       canary_traffic_percent=canary_traffic_percent, gpus=gpus, timeout=timeout,
                       allow_ungated=allow_ungated)
