from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_clip(dataset: Input[Dataset], tokenizer: Input[Model], preset: str, overrides: str, caption_policy: str,
          name: str, workdir: str, model: Output[Model], metrics: Output[Metrics]) -> dict:
    """Train CLIP contrastively: the shared judge (reranking, unCLIP latents, safety)."""
    from easel.steps import input_location, output_location, train_step
    return train_step("clip", input_location(dataset.path), output_location(model.path, workdir, name),
                      preset, overrides, deps={"tokenizer": input_location(tokenizer.path)}, caption_policy=caption_policy,
                      metrics=metrics, model=model)
