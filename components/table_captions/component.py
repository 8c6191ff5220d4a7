from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def table_captions(original: Input[Model], synthetic: Input[Model], blend: Input[Model], dataset: Input[Dataset],
                   preset: str, overrides: str, name: str, workdir: str, table: Output[Markdown]) -> dict:
    """DALL-E 3's table: prompt following of generators trained on original / synthetic / blended captions."""
    from easel.steps import input_location as at, output_location, table_captions_step
    return table_captions_step(at(original.path), at(synthetic.path), at(blend.path), at(dataset.path),
                               output_location(table.path + ".d", workdir, name), preset, overrides,
                               markdown_path=table.path)
