from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def table_guidance(unclip: Input[Model], text_decoder: Input[Model], dataset: Input[Dataset], scales: list,
                   preset: str, overrides: str, name: str, workdir: str, table: Output[Markdown]) -> dict:
    """DALL-E 2's table: diversity and prompt following against guidance scale, unCLIP versus a
    text-conditioned decoder."""
    from easel.steps import input_location as at, output_location, table_guidance_step
    return table_guidance_step(at(unclip.path), at(text_decoder.path), at(dataset.path),
                               output_location(table.path + ".d", workdir, name), scales, preset, overrides,
                               markdown_path=table.path)
