from kfp import dsl
from kfp.dsl import Model, Output

from components.images import CPU_IMAGE


# A CPU pod: it only submits the training job and waits; the GPUs belong to the job's pods. The
# dataset is a URI, not an artifact: those pods read it from the object store themselves.
@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_multinode(dataset: str, part: str, preset: str, overrides: str, caption_policy: str, deps: dict,
                    image: str, nodes: int, gpus_per_node: int, namespace: str, launcher: str, name: str,
                    workdir: str, model: Output[Model]) -> dict:
    """Train one part on several GPU nodes: a Kubeflow Trainer TrainJob (or a legacy PyTorchJob)."""
    from easel.steps import multinode_train_step, output_location
    return multinode_train_step(part, dataset, output_location(model.path, workdir, name), image, preset,
                                overrides, deps=deps, caption_policy=caption_policy, nodes=nodes,
                                gpus_per_node=gpus_per_node, namespace=namespace, launcher=launcher)
