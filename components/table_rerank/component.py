from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def table_rerank(bundle: Input[Model], dataset: Input[Dataset], budgets: list, preset: str, overrides: str,
                 name: str, workdir: str, table: Output[Markdown]) -> dict:
    """DALL-E 1's table: prompt following and CLIP score against the CLIP reranking budget N."""
    from easel.steps import input_location as at, output_location, table_rerank_step
    return table_rerank_step(at(bundle.path), at(dataset.path), output_location(table.path + ".d", workdir, name),
                             budgets, preset, overrides, markdown_path=table.path)
