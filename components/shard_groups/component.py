from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def shard_groups(dataset: Input[Dataset], groups: int) -> List[list]:
    """Split the dataset's shards into groups: the recaption fan-out's items."""
    from easel.steps import input_location, shard_groups_step
    return shard_groups_step(input_location(dataset.path), groups)
