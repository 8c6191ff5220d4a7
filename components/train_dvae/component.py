from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_dvae(dataset: Input[Dataset], preset: str, overrides: str, caption_policy: str, name: str,
               workdir: str, model: Output[Model], metrics: Output[Metrics]) -> dict:
    """Train the DALL-E 1 discrete VAE (Gumbel-softmax, logit-Laplace, KL to 6.6)."""
    from easel.steps import train_task
    return train_task("dvae", dataset, model, metrics, preset, overrides, caption_policy, name, workdir)
