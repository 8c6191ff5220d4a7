from kfp import dsl
from kfp.dsl import Dataset, Input

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def version(dataset: Input[Dataset], expected: str = "") -> dict:
    """The dataset's version id (DVC content hash + git revision) and lineage; with `expected`, a
    dataset of other content stops the run."""
    from easel.steps import input_location, version_step
    return version_step(input_location(dataset.path), expected)
