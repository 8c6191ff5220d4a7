"""The seeds' three results as pipelines: each trains what its table compares on an existing
(recaptioned) dataset, then measures the table, logs it to MLflow (experiment easel-tables) and
shows it as the run's Markdown artifact. The numbers behind docs/results.md."""
from kfp import dsl

from components.bundle_dalle.component import bundle_dalle
from components.bundle_unclip.component import bundle_unclip
from components.table_captions.component import table_captions
from components.table_guidance.component import table_guidance
from components.table_rerank.component import table_rerank
from components.train_decoder.component import train_decoder
from components.train_dvae.component import train_dvae
from components.train_transformer.component import train_transformer
from pipelines import cluster
from pipelines.lifecycle import dalle_stage, import_dataset, shared_parts, unclip_stage
from pipelines.params import documented

# DALL-E 3's three caption mixes -> the training caption policy (model_code/text/blend.py)
CAPTION_POLICIES = {"original": "original", "synthetic": "long", "blend": "blend"}


@dsl.pipeline(name="easel-table-captions",
              description="DALL-E 3: DALL-E 1 generators trained with the same compute on original, 100% synthetic "
                          "and 95/5 blended captions; prompt following on short and long prompts")
@documented()
def table_captions_pipeline(dataset_uri: str, dataset_version: str = "", preset: str = "tiny",
                            overrides: str = "", workdir: str = "") -> dict:
    imp, ver = import_dataset(dataset_uri, dataset_version)
    data = imp.output
    tok, clip = shared_parts(data, preset, overrides, workdir)
    # one dVAE for all three: it reads images only, so the captions cannot matter to it
    dvae = cluster.gpu(train_dvae(dataset=data, preset=preset, overrides=overrides, caption_policy="",
                                  name="dvae", workdir=workdir))
    bundles = {}
    for role, policy in CAPTION_POLICIES.items():
        tr = cluster.gpu(train_transformer(dataset=data, tokenizer=tok.outputs["model"], dvae=dvae.outputs["model"],
                                           preset=preset, overrides=overrides, caption_policy=policy,
                                           name=f"transformer-{role}", workdir=workdir)
                         .set_display_name(f"train-transformer-{role}"))
        bundles[role] = cluster.cpu(bundle_dalle(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                                 dvae=dvae.outputs["model"], transformer=tr.outputs["model"],
                                                 preset=preset, dataset=ver.output, name=f"bundle-{role}",
                                                 workdir=workdir).set_display_name(f"bundle-{role}"))
    table = cluster.gpu(table_captions(original=bundles["original"].outputs["bundle"],
                                       synthetic=bundles["synthetic"].outputs["bundle"],
                                       blend=bundles["blend"].outputs["bundle"], dataset=data, preset=preset,
                                       overrides=overrides, name="table-captions", workdir=workdir))
    return table.outputs["Output"]


@dsl.pipeline(name="easel-table-rerank",
              description="DALL-E 1: prompt following and CLIP score of the CLIP-best of N candidates, "
                          "for each reranking budget N")
@documented()
def table_rerank_pipeline(dataset_uri: str, dataset_version: str = "",
                          budgets: list = [1, 2, 4, 8, 16, 32],  # noqa: B006 (a KFP default, never mutated)
                          caption_policy: str = "blend", preset: str = "tiny", overrides: str = "",
                          workdir: str = "") -> dict:
    imp, ver = import_dataset(dataset_uri, dataset_version)
    data = imp.output
    tok, clip = shared_parts(data, preset, overrides, workdir)
    dvae, tr = dalle_stage(data, tok.outputs["model"], clip.outputs["model"], preset, overrides, caption_policy,
                           workdir)
    bd = cluster.cpu(bundle_dalle(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                  dvae=dvae.outputs["model"], transformer=tr.outputs["model"], preset=preset,
                                  dataset=ver.output, name="bundle-dalle", workdir=workdir))
    table = cluster.gpu(table_rerank(bundle=bd.outputs["bundle"], dataset=data, budgets=budgets, preset=preset,
                                     overrides=overrides, name="table-rerank", workdir=workdir))
    return table.outputs["Output"]


@dsl.pipeline(name="easel-table-guidance",
              description="DALL-E 2: diversity and prompt following against guidance scale, unCLIP (prior + "
                          "decoder) versus a decoder conditioned on text directly")
@documented()
def table_guidance_pipeline(dataset_uri: str, dataset_version: str = "",
                            scales: list = [1.0, 2.0, 3.0, 4.0],  # noqa: B006 (a KFP default, never mutated)
                            caption_policy: str = "blend", preset: str = "tiny", overrides: str = "",
                            text_decoder_overrides: str = '{"decoder": {"conditioning": "text"}}',
                            workdir: str = "") -> dict:
    imp, ver = import_dataset(dataset_uri, dataset_version)
    data = imp.output
    tok, clip = shared_parts(data, preset, overrides, workdir)
    prior, dec, up = unclip_stage(data, tok.outputs["model"], clip.outputs["model"], preset, overrides,
                                  caption_policy, workdir)
    text_dec = cluster.gpu(train_decoder(dataset=data, tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                         preset=preset, overrides=text_decoder_overrides,
                                         caption_policy=caption_policy, name="decoder-text", workdir=workdir)
                           .set_display_name("train-decoder-text"))
    bundles = {}
    for role, decoder in (("unclip", dec), ("text", text_dec)):
        bundles[role] = cluster.cpu(bundle_unclip(tokenizer=tok.outputs["model"], clip=clip.outputs["model"],
                                                  prior=prior.outputs["model"], decoder=decoder.outputs["model"],
                                                  upsampler=up.outputs["model"], preset=preset, dataset=ver.output,
                                                  name=f"bundle-{role}", workdir=workdir)
                                    .set_display_name(f"bundle-{role}"))
    table = cluster.gpu(table_guidance(unclip=bundles["unclip"].outputs["bundle"],
                                       text_decoder=bundles["text"].outputs["bundle"], dataset=data, scales=scales,
                                       preset=preset, overrides=overrides, name="table-guidance", workdir=workdir))
    return table.outputs["Output"]
