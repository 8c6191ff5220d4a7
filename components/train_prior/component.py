from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_prior(dataset: Input[Dataset], tokenizer: Input[Model], clip: Input[Model], preset: str,
                overrides: str, caption_policy: str, name: str, workdir: str, model: Output[Model],
                metrics: Output[Metrics]) -> dict:
    """Train the unCLIP diffusion prior (text -> CLIP image embedding)."""
    from easel.steps import train_task
    return train_task("prior", dataset, model, metrics, preset, overrides, caption_policy, name, workdir,
                      tokenizer=tokenizer, clip=clip)
