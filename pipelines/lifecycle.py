"""The lifecycle pipeline: data -> captioner -> recaption -> both recipes -> evaluate ->
register -> gate -> promote -> deploy. `easel run local` runs exactly this through kfp.local
(deploy off; it serves the promoted model itself); the compiled YAML is what users upload to the
Kubeflow UI. The stage functions here are shared with the sub-pipelines users run alone.

Caching: every step whose output is a function of its inputs is cached (the cluster.* default);
those that read or change shared state (dataset version, registry, gate record, promotion,
deployment) never are."""
from kfp import dsl
from kfp.dsl import Dataset

from components.bundle_dalle.component import bundle_dalle
from components.deploy.component import deploy as deploy_op
from components.evaluate.component import evaluate
from components.gate.component import gate
from components.gate_verdict.component import gate_verdict
from components.images import GPU_IMAGE
from components.promote.component import promote
from components.register.component import register
from components.bundle_unclip.component import bundle_unclip
from components.ingest.component import ingest
from components.recaption.component import recaption
from components.recaption_finalize.component import recaption_finalize
from components.shard_groups.component import shard_groups
from components.synth.component import synth
from components.train_captioner.component import train_captioner
from components.train_clip.component import train_clip
from components.train_decoder.component import train_decoder
from components.train_dvae.component import train_dvae
from components.train_prior.component import train_prior
from components.train_tokenizer.component import train_tokenizer
from components.train_transformer.component import train_transformer
from components.train_upsampler.component import train_upsampler
from components.require_valid.component import require_valid
from components.validate.component import validate
from components.version.component import version
from pipelines import cluster
from pipelines.params import documented

# seconds the deploy step waits for the InferenceService to become ready (model download included)
DEPLOY_TIMEOUT = 1800
RECAPTION_GROUPS = 2  # parallel recaption tasks (the lifecycle's and recaption pipeline's default)


def data_stage(preset: str, overrides: str, seed: int, workdir: str, source: str = "",
               dataset_version: str = ""):
    """source (or a synthesized Shapes world) -> ingest -> validate -> version (checked against
    dataset_version when given); returns (ingest task, version task)."""
    raw = cluster.cpu(synth(preset=preset, overrides=overrides, seed=seed, workdir=workdir, source=source)
                      .set_display_name("source"))
    ing = cluster.cpu(ingest(raw=raw.outputs["raw"], preset=preset, overrides=overrides, workdir=workdir),
                      memory="16Gi", cpu="8")
    val = cluster.cpu(validate(dataset=ing.outputs["dataset"], preset=preset, overrides=overrides))
    ok = cluster.cpu(require_valid(validation=val.outputs["Output"]))
    ver = cluster.cpu(version(dataset=ing.outputs["dataset"], expected=dataset_version).after(ok), cache=False)
    return ing, ver


def import_dataset(uri, dataset_version=""):
    """An ingested dataset by URI (s3://...), versioned (and checked against dataset_version when
    given) like the lifecycle's own; returns (importer task, version task)."""
    imp = dsl.importer(artifact_uri=uri, artifact_class=Dataset, reimport=False).set_display_name("dataset")
    ver = cluster.cpu(version(dataset=imp.output, expected=dataset_version), cache=False)
    return imp, ver


def shared_parts(dataset, preset, overrides, workdir):
    """The BPE tokenizer and CLIP every recipe (and the captioner) builds on."""
    tok = cluster.cpu(train_tokenizer(dataset=dataset, preset=preset, overrides=overrides, caption_policy="",
                                      name="tokenizer", workdir=workdir))
    clip = cluster.gpu(train_clip(dataset=dataset, tokenizer=tok.outputs["model"], preset=preset,
                                  overrides=overrides, caption_policy="", name="clip", workdir=workdir))
    return tok, clip


def recaption_stage(dataset, tokenizer, clip, preset: str, overrides: str, workdir: str, groups: int,
                    threads=0):
    """Train the captioner on the curated subset, recaption every shard group in parallel, and
    seal the sidecars as a new dataset version. Returns (finalize task, captioner task): the
    bundles keep the captioner, to rerank with it."""
    cap = cluster.gpu(train_captioner(dataset=dataset, tokenizer=tokenizer, clip=clip, preset=preset,
                                      overrides=overrides, caption_policy="", name="captioner",
                                      workdir=workdir))
    grp = cluster.cpu(shard_groups(dataset=dataset, groups=groups))
    with dsl.ParallelFor(grp.output, name="shard-groups") as shards:
        part = cluster.gpu(recaption(dataset=dataset, captioner=cap.outputs["model"], tokenizer=tokenizer,
                                     clip=clip, shards=shards, preset=preset, overrides=overrides,
                                     workdir=workdir, threads=threads))
    fin = cluster.cpu(recaption_finalize(parent=dataset, parts=dsl.Collected(part.outputs["captions"]),
                                         workdir=workdir))
    return fin, cap


def dalle_stage(dataset, tokenizer, clip, preset, overrides, caption_policy, workdir, suffix: str = ""):
    dvae = cluster.gpu(train_dvae(dataset=dataset, preset=preset, overrides=overrides, caption_policy="",
                                  name="dvae", workdir=workdir))
    tr = cluster.gpu(train_transformer(dataset=dataset, tokenizer=tokenizer, dvae=dvae.outputs["model"],
                                       preset=preset, overrides=overrides, caption_policy=caption_policy,
                                       name="transformer" + suffix, workdir=workdir))
    return dvae, tr


def unclip_stage(dataset, tokenizer, clip, preset, overrides, caption_policy, workdir):
    prior = cluster.gpu(train_prior(dataset=dataset, tokenizer=tokenizer, clip=clip, preset=preset,
                                    overrides=overrides, caption_policy=caption_policy, name="prior",
                                    workdir=workdir))
    dec = cluster.gpu(train_decoder(dataset=dataset, tokenizer=tokenizer, clip=clip, preset=preset,
                                    overrides=overrides, caption_policy=caption_policy, name="decoder",
                                    workdir=workdir))
    up = cluster.gpu(train_upsampler(dataset=dataset, preset=preset, overrides=overrides, caption_policy="",
                                     name="upsampler", workdir=workdir))
    return prior, dec, up


def release_stage(bundle, dataset, preset, overrides, model_name, workdir, recipe: str, gate_config=None,
                  after_promote=None):
    """evaluate -> register (lineage) -> gate (thresholds + relative rule) -> promote, only when
    the gate passed: a rejected model is registered with its failed gate record and the run
    finishes (it did its job), without promoting it. after_promote(promote_task) adds tasks that
    need the promotion (inside the same condition)."""
    ev = cluster.gpu(evaluate(bundle=bundle, dataset=dataset, preset=preset, overrides=overrides,
                              name="evaluation-" + recipe, workdir=workdir))
    reg = cluster.cpu(register(bundle=bundle, name=model_name, evaluation=ev.outputs["Output"]), cache=False)
    gt = cluster.cpu(gate(registered=reg.output, evaluation=ev.outputs["Output"], preset=preset, overrides=overrides,
                          gate_config=gate_config if gate_config is not None else {}), cache=False)
    verdict = cluster.cpu(gate_verdict(record=gt.outputs["Output"]), cache=False)
    with dsl.If(verdict.output == "passed", name="gate-passed-" + recipe):
        pro = cluster.cpu(promote(registered=reg.output, alias="production").after(gt), cache=False)
        if after_promote is not None:
            after_promote(pro)
    return ev, reg, gt, pro


def deploy_stage(model_name, ref, service, namespace, image, canary_traffic_percent, gpus):
    """The registered version behind `ref` as a KServe InferenceService; never cached (it changes
    the cluster, and the version an alias names changes over time)."""
    return cluster.cpu(deploy_op(model=model_name, ref=ref, service=service, namespace=namespace, image=image,
                                 canary_traffic_percent=canary_traffic_percent, gpus=gpus,
                                 timeout=DEPLOY_TIMEOUT), cache=False)


@dsl.pipeline(name="easel-lifecycle",
              description="source (or the Shapes world) -> ingest -> validate -> version -> captioner -> recaption -> "
                          "DALL-E 1 and unCLIP -> evaluate -> register -> gate -> promote -> deploy (optional)")
@documented()
def lifecycle_pipeline(source: str = "", dataset_version: str = "", recipe: str = "all", preset: str = "tiny",
                       caption_policy: str = "blend", gate_config: dict = {},  # noqa: B006 (KFP default)
                       deploy: bool = False,
                       overrides: str = "", seed: int = 0, recaption_groups: int = RECAPTION_GROUPS,
                       recaption_threads: int = 0,
                       dalle_model: str = "easel-dalle", unclip_model: str = "easel-unclip",
                       serving_namespace: str = "easel-serving", serving_image: str = GPU_IMAGE,
                       serving_gpus: int = 1, canary_traffic_percent: int = 100, workdir: str = ""):
    ing, ver = data_stage(preset, overrides, seed, workdir, source, dataset_version)
    data = ing.outputs["dataset"]
    tok, clip = shared_parts(data, preset, overrides, workdir)
    rec, cap = recaption_stage(data, tok.outputs["model"], clip.outputs["model"], preset, overrides, workdir,
                               recaption_groups, recaption_threads)
    recaptioned = rec.outputs["dataset"]
    with dsl.If(recipe != "unclip", name="dalle"):
        dvae, tr = dalle_stage(recaptioned, tok.outputs["model"], clip.outputs["model"], preset, overrides,
                               caption_policy, workdir)
        bd = cluster.cpu(bundle_dalle(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                      dvae=dvae.outputs["model"], transformer=tr.outputs["model"], preset=preset,
                                      dataset=ver.output, name="bundle-dalle", workdir=workdir,
                                      overrides=overrides, captioner=cap.outputs["model"]))
        def deploy_dalle(pro):
            with dsl.If(deploy == True, name="deploy-dalle"):  # noqa: E712 (a KFP condition, not Python)
                deploy_stage(dalle_model, "production", dalle_model, serving_namespace, serving_image,
                             canary_traffic_percent, serving_gpus).after(pro)
        release_stage(bd.outputs["bundle"], recaptioned, preset, overrides, dalle_model, workdir,
                      "dalle", gate_config, after_promote=deploy_dalle)
    with dsl.If(recipe != "dalle", name="unclip"):
        prior, dec, up = unclip_stage(recaptioned, tok.outputs["model"], clip.outputs["model"], preset, overrides,
                                      caption_policy, workdir)
        bu = cluster.cpu(bundle_unclip(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                       prior=prior.outputs["model"], decoder=dec.outputs["model"],
                                       upsampler=up.outputs["model"], preset=preset, dataset=ver.output,
                                       name="bundle-unclip", workdir=workdir,
                                       overrides=overrides, captioner=cap.outputs["model"]))
        def deploy_unclip(pro):
            with dsl.If(deploy == True, name="deploy-unclip"):  # noqa: E712
                deploy_stage(unclip_model, "production", unclip_model, serving_namespace, serving_image,
                             canary_traffic_percent, serving_gpus).after(pro)
        release_stage(bu.outputs["bundle"], recaptioned, preset, overrides, unclip_model, workdir,
                      "unclip", gate_config, after_promote=deploy_unclip)
