"""Training on an existing dataset: one recipe (or both) into generation bundles, on one GPU pod per
part; and one part on several GPU nodes through the Kubeflow Training Operator (a PyTorchJob)."""
from kfp import dsl

from components.bundle_dalle.component import bundle_dalle
from components.bundle_unclip.component import bundle_unclip
from components.images import GPU_IMAGE
from components.train_multinode.component import train_multinode
from pipelines import cluster
from pipelines.lifecycle import dalle_stage, import_dataset, shared_parts, unclip_stage
from pipelines.params import documented


@dsl.pipeline(name="easel-train",
              description="Tokenizer and CLIP, then DALL-E 1 (dVAE, transformer) and/or unCLIP (prior, decoder, "
                          "upsampler) on an ingested (or recaptioned) dataset -> generation bundles")
@documented()
def train_pipeline(dataset_uri: str, dataset_version: str = "", recipe: str = "all", preset: str = "tiny",
                   caption_policy: str = "blend", overrides: str = "", workdir: str = ""):
    imp, ver = import_dataset(dataset_uri, dataset_version)
    data = imp.output
    tok, clip = shared_parts(data, preset, overrides, workdir)
    with dsl.If(recipe != "unclip", name="dalle"):
        dvae, tr = dalle_stage(data, tok.outputs["model"], clip.outputs["model"], preset, overrides,
                               caption_policy, workdir)
        cluster.cpu(bundle_dalle(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                 dvae=dvae.outputs["model"], transformer=tr.outputs["model"], preset=preset,
                                 dataset=ver.output, name="bundle-dalle", workdir=workdir,
                                 overrides=overrides))
    with dsl.If(recipe != "dalle", name="unclip"):
        prior, dec, up = unclip_stage(data, tok.outputs["model"], clip.outputs["model"], preset, overrides,
                                      caption_policy, workdir)
        cluster.cpu(bundle_unclip(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                  prior=prior.outputs["model"], decoder=dec.outputs["model"],
                                  upsampler=up.outputs["model"], preset=preset, dataset=ver.output,
                                  name="bundle-unclip", workdir=workdir,
                                  overrides=overrides))


@dsl.pipeline(name="easel-train-multinode",
              description="One part of the base preset on several GPU nodes: a Kubeflow Trainer TrainJob (or "
                          "a legacy Training Operator PyTorchJob; torchrun, one `easel train` process per GPU), "
                          "submitted and waited for")
@documented(dataset_uri="The dataset as an object-store URI (s3://...): the job's pods share no file system.",
            workdir="Object-store prefix; the trained part goes to WORKDIR/PART with its checkpoints, so a "
                    "resubmitted job resumes.",
            namespace="Kubernetes namespace of the training job.",
            launcher="trainjob: a Kubeflow Trainer v2 TrainJob on the ClusterTrainingRuntime easel-torch "
                     "(infra/kustomize/kubeflow-trainer); pytorchjob: the legacy Training Operator's PyTorchJob.",
            image="Training container image (the CUDA image).",
            preset="Model and data sizes: base (256 px on a GPU node pool) or paper; the smaller presets "
                   "fit on one GPU and need no multi-node job.")
def train_multinode_pipeline(part: str, dataset_uri: str, workdir: str, deps: dict = {},  # noqa: B006 (KFP default)
                             preset: str = "base", caption_policy: str = "", overrides: str = "",
                             nodes: int = 2, gpus_per_node: int = 8, namespace: str = "kubeflow",
                             launcher: str = "trainjob", image: str = GPU_IMAGE) -> dict:
    # never cached: the trained part lives in the object store, outside what KFP's cache can see
    job = cluster.cpu(train_multinode(dataset=dataset_uri, part=part, preset=preset, overrides=overrides,
                                      caption_policy=caption_policy, deps=deps, image=image, nodes=nodes,
                                      gpus_per_node=gpus_per_node, namespace=namespace, launcher=launcher,
                                      name=part,
                                      workdir=workdir), cache=False)
    return job.outputs["Output"]
