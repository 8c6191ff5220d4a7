"""The deploy pipeline: a registered model version as a KServe InferenceService."""
from kfp import dsl

from components.images import GPU_IMAGE
from pipelines.lifecycle import deploy_stage
from pipelines.params import documented


@dsl.pipeline(name="easel-deploy",
              description="Serve a registered model version (number or alias) as a KServe InferenceService, "
                          "optionally as a canary with part of the traffic; waits until it is ready")
@documented(image="Container image the InferenceService runs (the CUDA image for gpus > 0).")
def deploy_pipeline(model: str = "easel-dalle", ref: str = "production", service: str = "",
                    namespace: str = "easel-serving", canary_traffic_percent: int = 100,
                    image: str = GPU_IMAGE, gpus: int = 1) -> dict:
    return deploy_stage(model, ref, service, namespace, image, canary_traffic_percent, gpus).output
