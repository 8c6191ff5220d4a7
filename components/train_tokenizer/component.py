from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_tokenizer(dataset: Input[Dataset], preset: str, overrides: str, caption_policy: str, name: str,
                    workdir: str, model: Output[Model], metrics: Output[Metrics]) -> dict:
    """Train the byte-level BPE tokenizer on the dataset's captions."""
    from easel.steps import train_task
    return train_task("tokenizer", dataset, model, metrics, preset, overrides, caption_policy, name, workdir)
