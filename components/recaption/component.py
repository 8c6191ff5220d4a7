from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def recaption(dataset: Input[Dataset], captioner: Input[Model], tokenizer: Input[Model], clip: Input[Model],
              shards: list, preset: str, overrides: str, workdir: str, captions: Output[Dataset],
              threads: int = 0) -> dict:
    """Write short and long synthetic captions for a group of shards (filtered, with fallback);
    threads: torch threads of this task (0: every core its machine or pod has)."""
    from easel.steps import input_location, output_location, recaption_step
    return recaption_step(input_location(dataset.path), output_location(captions.path, workdir, "recaptioned"),
                          input_location(captioner.path), input_location(tokenizer.path),
                          input_location(clip.path), shards=shards, preset=preset, overrides=overrides,
                          threads=threads)
