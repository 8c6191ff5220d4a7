from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_tokenizer(dataset: Input[Dataset], preset: str, overrides: str, caption_policy: str,
          name: str, workdir: str, model: Output[Model], metrics: Output[Metrics]) -> dict:
    """Train the byte-level BPE tokenizer on the dataset's captions."""
    from easel.steps import input_location, output_location, train_step
    return train_step("tokenizer", input_location(dataset.path), output_location(model.path, workdir, name),
                      preset, overrides, deps={}, caption_policy=caption_policy,
                      metrics=metrics, model=model)
