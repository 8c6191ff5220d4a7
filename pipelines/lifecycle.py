"""The lifecycle pipeline: data -> captioner -> recaption -> both recipes -> evaluate ->
register -> gate -> promote -> serve. `easel run local` runs exactly this through kfp.local;
the compiled YAML is what users upload to the Kubeflow UI."""
from kfp import dsl

from components.bundle_dalle.component import bundle_dalle
from components.evaluate.component import evaluate
from components.gate.component import gate
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
from components.validate.component import validate
from components.version.component import version
from pipelines import cluster


def data_stage(preset: str, overrides: str, seed: int, workdir: str):
    """synthesize -> ingest -> validate -> version; returns (ingest task, version task)."""
    raw = cluster.cpu(synth(preset=preset, overrides=overrides, seed=seed, workdir=workdir)
                      .set_display_name("synthesize"))
    ing = cluster.cpu(ingest(raw=raw.outputs["raw"], preset=preset, overrides=overrides, workdir=workdir),
                      memory="16Gi", cpu="8")
    val = cluster.cpu(validate(dataset=ing.outputs["dataset"], preset=preset, overrides=overrides))
    ver = cluster.cpu(version(dataset=ing.outputs["dataset"]).after(val), cache=False)
    return ing, ver


def recaption_stage(dataset, tokenizer, clip, preset: str, overrides: str, workdir: str, groups: int):
    """Train the captioner on the curated subset, recaption every shard group in parallel, and
    seal the sidecars as a new dataset version."""
    cap = cluster.gpu(train_captioner(dataset=dataset, tokenizer=tokenizer, clip=clip, preset=preset,
                                      overrides=overrides, caption_policy="", name="captioner",
                                      workdir=workdir))
    grp = cluster.cpu(shard_groups(dataset=dataset, groups=groups))
    with dsl.ParallelFor(grp.output, name="shard-groups") as shards:
        part = cluster.gpu(recaption(dataset=dataset, captioner=cap.outputs["model"], tokenizer=tokenizer,
                                     clip=clip, shards=shards, preset=preset, overrides=overrides,
                                     workdir=workdir))
    fin = cluster.cpu(recaption_finalize(parent=dataset, parts=dsl.Collected(part.outputs["captions"]),
                                         workdir=workdir))
    return fin


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


def release_stage(bundle, dataset, preset, overrides, model_name, workdir, recipe: str):
    """evaluate -> register (lineage) -> gate (thresholds + relative rule) -> promote."""
    ev = cluster.gpu(evaluate(bundle=bundle, dataset=dataset, preset=preset, overrides=overrides,
                              name="evaluation-" + recipe, workdir=workdir))
    reg = cluster.cpu(register(bundle=bundle, name=model_name, evaluation=ev.outputs["Output"]), cache=False)
    gt = cluster.cpu(gate(registered=reg.output, evaluation=ev.outputs["Output"], preset=preset, overrides=overrides),
                     cache=False)
    pro = cluster.cpu(promote(registered=reg.output, alias="production").after(gt), cache=False)
    return ev, reg, gt, pro


@dsl.pipeline(name="easel-lifecycle",
              description="Shapes world -> ingest -> validate -> version -> captioner -> recaption -> "
                          "DALL-E 1 and unCLIP -> evaluate -> register -> gate -> promote")
def lifecycle_pipeline(preset: str = "tiny", recipe: str = "all", caption_policy: str = "blend",
                       overrides: str = "", seed: int = 0, recaption_groups: int = 2,
                       dalle_model: str = "easel-dalle", unclip_model: str = "easel-unclip",
                       workdir: str = ""):
    ing, ver = data_stage(preset, overrides, seed, workdir)
    data = ing.outputs["dataset"]
    tok = cluster.cpu(train_tokenizer(dataset=data, preset=preset, overrides=overrides, caption_policy="",
                                      name="tokenizer", workdir=workdir))
    clip = cluster.gpu(train_clip(dataset=data, tokenizer=tok.outputs["model"], preset=preset, overrides=overrides,
                                  caption_policy="", name="clip", workdir=workdir))
    rec = recaption_stage(data, tok.outputs["model"], clip.outputs["model"], preset, overrides, workdir,
                          recaption_groups)
    recaptioned = rec.outputs["dataset"]
    with dsl.If(recipe != "unclip", name="dalle"):
        dvae, tr = dalle_stage(recaptioned, tok.outputs["model"], clip.outputs["model"], preset, overrides,
                               caption_policy, workdir)
        bd = cluster.cpu(bundle_dalle(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                      dvae=dvae.outputs["model"], transformer=tr.outputs["model"], preset=preset,
                                      dataset=ver.output, name="bundle-dalle", workdir=workdir))
        release_stage(bd.outputs["bundle"], recaptioned, preset, overrides, dalle_model, workdir,
                      "dalle")
    with dsl.If(recipe != "dalle", name="unclip"):
        prior, dec, up = unclip_stage(recaptioned, tok.outputs["model"], clip.outputs["model"], preset, overrides,
                                      caption_policy, workdir)
        bu = cluster.cpu(bundle_unclip(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                       prior=prior.outputs["model"], decoder=dec.outputs["model"],
                                       upsampler=up.outputs["model"], preset=preset, dataset=ver.output,
                                       name="bundle-unclip", workdir=workdir))
        release_stage(bu.outputs["bundle"], recaptioned, preset, overrides, unclip_model, workdir,
                      "unclip")
