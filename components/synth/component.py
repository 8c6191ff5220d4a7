from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def synth(preset: str, overrides: str, seed: int, workdir: str, raw: Output[Dataset], source: str = "") -> dict:
    """The raw data to ingest: `source` (image folder, WebDataset, manifest, shapes://) as it is,
    or, when empty, a freshly written Shapes-world source (images, scene graphs, alt-text, curated captions)."""
    from easel.steps import source_step
    summary = source_step(raw.path, source, workdir, preset, overrides, seed=seed)
    raw.metadata.update({k: summary[k] for k in ("n", "size", "source") if k in summary})
    return summary
