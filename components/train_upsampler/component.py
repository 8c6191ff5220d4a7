from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_upsampler(dataset: Input[Dataset], preset: str, overrides: str, caption_policy: str, name: str,
                    workdir: str, model: Output[Model], metrics: Output[Metrics]) -> dict:
    """Train the conv-only diffusion upsampler (4x, blur corruption)."""
    from easel.steps import train_task
    return train_task("upsampler", dataset, model, metrics, preset, overrides, caption_policy, name, workdir)
