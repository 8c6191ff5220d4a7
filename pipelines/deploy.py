"""The deploy pipeline: a registered model version as a KServe InferenceService."""
from kfp import dsl

from components.images import GPU_IMAGE
from pipelines.lifecycle import deploy_stage


@dsl.pipeline(name="easel-deploy",
              description="Serve a registered model version (number or alias) as a KServe InferenceService, "
                          "optionally as a canary with part of the traffic; waits until it is ready")
def deploy_pipeline(model: str = "easel-dalle", ref: str = "production", service: str = "",
                    namespace: str = "easel-serving", canary_traffic_percent: int = 100,
                    image: str = GPU_IMAGE, gpus: int = 1) -> dict:
    """service: the InferenceService name ("" the model's name); canary_traffic_percent: the share
    of traffic for this version while KServe keeps the previous one (100: all; a later deploy of
    the same version with 100 promotes it, and a deploy of the previous version rolls back)."""
    return deploy_stage(model, ref, service, namespace, image, canary_traffic_percent, gpus).output
