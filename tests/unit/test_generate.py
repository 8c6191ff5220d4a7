import os

import pytest
import torch

from model_code.generate import Generator, read_bundle_meta, save_bundle, to_pil, to_tensor
from tests.bundles import build_parts, tiny_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {r: tiny_bundle(str(root), r, candidates=3) for r in ("dalle", "unclip")}


@pytest.mark.parametrize("recipe", ["dalle", "unclip"])
def test_generate_reranks_and_is_deterministic(bundles, recipe):
    g = Generator.load(bundles[recipe])
    assert g.recipe == recipe
    a = g.generate(["a red circle", "two blue squares on a white background"], n=2, seed=7,
                   decoder_steps=3, prior_steps=3)
    b = g.generate(["a red circle", "two blue squares on a white background"], n=2, seed=7,
                   decoder_steps=3, prior_steps=3)
    assert [r.prompt for r in a] == ["a red circle", "two blue squares on a white background"]
    for ra, rb in zip(a, b):
        assert len(ra.images) == 2 and ra.candidates == 3
        assert ra.scores == sorted(ra.scores, reverse=True)  # best first
        assert ra.images[0].size == (g.image_size, g.image_size)
        assert [im.tobytes() for im in ra.images] == [im.tobytes() for im in rb.images]


@pytest.mark.parametrize("recipe", ["dalle", "unclip"])
def test_generator_runs_on_the_device_it_is_loaded_on(bundles, recipe):
    """Every part of a loaded bundle sits on the asked-for device (default: the GPU when there is
    one), and text and images are moved there (the H200 check evaluates on the GPU)."""
    g = Generator.load(bundles[recipe], device="cpu")
    assert g.device == torch.device("cpu")
    parts = [g.clip] + ([g.dvae, g.transformer] if recipe == "dalle" else [g.prior, g.decoder])
    assert {p.device for m in parts for p in m.parameters()} == {torch.device("cpu")}
    ids, mask = g.encode_text(["a red circle"])
    assert ids.device == g.device and mask.device == g.device
    default = Generator.load(bundles[recipe])
    assert default.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("recipe", ["dalle", "unclip"])
def test_kept_images_carry_their_reranking_embeddings(bundles, recipe):
    """Each kept image comes with the CLIP embedding its rank was computed from (unit vectors on
    the CPU), so a later CLIP check of the same image (serving's image safety) need not embed it
    again; they match embedding the delivered image up to its 8-bit rounding."""
    g = Generator.load(bundles[recipe], device="cpu")
    (r,) = g.generate(["a red circle"], n=2, seed=3, decoder_steps=3, prior_steps=3)
    assert r.embeddings.shape == (2, g.clip.config["embed_dim"]) and r.embeddings.device.type == "cpu"
    assert torch.allclose(r.embeddings.norm(dim=-1), torch.ones(2), atol=1e-4)
    again = g.embed_images(r.images)
    assert torch.allclose(r.embeddings, again, atol=0.05)
    scores = (again * g.embed_texts(["a red circle"])).sum(-1)
    assert torch.allclose(scores, torch.tensor(r.scores), atol=0.05)


def test_bad_arguments(bundles):
    g = Generator.load(bundles["dalle"])
    with pytest.raises(ValueError, match="n must be"):
        g.generate(["x"], n=0)
    with pytest.raises(ValueError, match="strings"):
        g.generate([3])
    assert g.generate([]) == []


def test_bundle_validation(tmp_path):
    with pytest.raises(ValueError, match="needs parts"):
        save_bundle(str(tmp_path / "b"), "dalle", {"tokenizer": "x"})
    with pytest.raises(ValueError, match="unknown recipe"):
        save_bundle(str(tmp_path / "b"), "gan", {})
    with pytest.raises(FileNotFoundError, match="not an Easel bundle"):
        read_bundle_meta(str(tmp_path))
    missing = {p: str(tmp_path / "never-trained" / p) for p in ("tokenizer", "clip", "dvae", "transformer")}
    with pytest.raises(ValueError, match=r"part tokenizer: .* holds no trained tokenizer \(no tokenizer.json\)"):
        save_bundle(str(tmp_path / "b"), "dalle", missing)
    assert not (tmp_path / "b").exists()
    trained = build_parts(str(tmp_path / "parts"), "dalle")
    with pytest.raises(ValueError, match="part transformer: .* holds no trained transformer"):
        save_bundle(str(tmp_path / "b"), "dalle", {**trained, "transformer": missing["transformer"]})
    assert not (tmp_path / "b").exists()   # checked before anything was copied


def test_a_bundle_holds_the_weights_not_the_training_checkpoints(tmp_path):
    parts = build_parts(str(tmp_path / "parts"), "dalle")
    for src in parts.values():   # what a training run leaves beside the model
        os.makedirs(os.path.join(src, "checkpoints"), exist_ok=True)
        open(os.path.join(src, "checkpoints", "step-00000010.ckpt"), "wb").write(b"optimizer state")
    out = save_bundle(str(tmp_path / "b"), "dalle", parts)
    for name, src in parts.items():
        kept = sorted(os.listdir(os.path.join(out, name)))
        assert "checkpoints" not in kept and kept == sorted(set(os.listdir(src)) - {"checkpoints"})
    assert Generator.load(out).recipe == "dalle"


def test_pil_round_trip():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    y = to_tensor(to_pil(x))
    assert torch.allclose(x, y, atol=1 / 127.5)


def test_bundle_sampling_comes_from_the_preset_and_bad_keys_are_named(tmp_path):
    """bundle_step writes the preset's `sampling.<recipe>` over the recipe defaults; a key that is
    not a setting of the recipe is an error naming it (not a silently ignored setting)."""
    from model_code.config import load_preset
    from model_code.generate import DEFAULT_SAMPLING
    from easel.steps import bundle_step
    parts = build_parts(str(tmp_path / "parts"), "unclip")
    preset = load_preset("tiny").get("sampling", {}).get("unclip", {})
    bundle_step("unclip", parts, str(tmp_path / "b1"), "tiny")
    assert read_bundle_meta(str(tmp_path / "b1"))["sampling"] == {**DEFAULT_SAMPLING["unclip"], **preset}
    bundle_step("unclip", parts, str(tmp_path / "b2"), "tiny", overrides={"sampling": {"unclip": {"candidates": 3}}})
    assert read_bundle_meta(str(tmp_path / "b2"))["sampling"]["candidates"] == 3
    with pytest.raises(ValueError, match=r"'temprature'.*not unclip settings"):
        bundle_step("unclip", parts, str(tmp_path / "b3"), "tiny", overrides={"sampling": {"unclip": {"temprature": 0.5}}})


def test_an_unclip_generator_without_a_prior_decodes_embeddings_and_names_what_it_lacks(bundles):
    """A prior-less generator (a decoder judged on true CLIP embeddings before any prior is
    trained) decodes given embeddings; asked to sample from text with an image-conditioned
    decoder it says so instead of failing on None."""
    from model_code.generate import UnclipGenerator
    g = Generator.load(bundles["unclip"], device="cpu")
    bare = UnclipGenerator(g.tokenizer, g.clip, None, g.decoder)
    emb, tokens, mask = bare.text_condition(["a red circle"])
    x = bare.decode_embeddings(emb, tokens, mask, torch.Generator().manual_seed(0), {"decoder_steps": 2})
    assert x.shape == (1, 3, g.decoder.config["image_size"], g.decoder.config["image_size"])
    with pytest.raises(ValueError, match="no prior"):
        bare.generate(["a red circle"], n=1, seed=0, decoder_steps=2)


@pytest.mark.parametrize("recipe", ["dalle", "unclip"])
def test_rerank_by_captioner_keeps_what_the_captioner_finds_likeliest(tmp_path, recipe):
    """`rerank: captioner` keeps the candidates with the highest log p(prompt | image) under the
    bundle's captioner (either caption kind); the scores stay CLIP's, the ranking's own are in
    extra. Asking for it without a captioner part is an error when the bundle is made and when a
    request asks for it; an unknown reranker is named."""
    bundle = tiny_bundle(str(tmp_path), recipe, captioner=True, candidates=4, rerank="captioner")
    g = Generator.load(bundle, device="cpu")
    assert g.captioner is not None
    prompts = ["a red circle", "One shape on a white background: a small blue square in the centre."]
    kw = {"decoder_steps": 2, "prior_steps": 2} if recipe == "unclip" else {}
    got = g.generate(prompts, n=2, seed=5, **kw)
    # the same candidates, sampled again, judged directly
    images = g.sample(prompts, 4, torch.Generator().manual_seed(5), {**g.sampling, **kw})
    lp = g.caption_logprobs(images, [p for p in prompts for _ in range(4)]).view(2, 4)
    for i, r in enumerate(got):
        best = torch.argsort(lp[i], descending=True)[:2]
        assert r.extra["caption_logprob"] == pytest.approx([float(lp[i, j]) for j in best], rel=1e-5)
        assert [im.tobytes() for im in r.images] == [im.tobytes() for im in to_pil(images[i * 4 + best])]
        clip = g.clip_scores(to_pil(images[i * 4 + best]), [prompts[i]] * 2)
        assert r.scores == pytest.approx(clip.tolist(), abs=0.05)
    by_clip = g.generate(prompts, n=1, seed=5, rerank="clip", **kw)
    assert "caption_logprob" not in by_clip[0].extra

    parts = build_parts(str(tmp_path / "plain"), recipe)
    with pytest.raises(ValueError, match="rerank is 'captioner' but the bundle is given no captioner"):
        save_bundle(str(tmp_path / "b"), recipe, parts, sampling={"rerank": "captioner"})
    plain = Generator.load(save_bundle(str(tmp_path / "b"), recipe, parts), device="cpu")
    with pytest.raises(ValueError, match="needs a bundle with a captioner part"):
        plain.generate(["a red circle"], n=1, rerank="captioner", **kw)
    with pytest.raises(ValueError, match="'siglip' is not a reranker"):
        save_bundle(str(tmp_path / "c"), recipe, parts, sampling={"rerank": "siglip"})
    with pytest.raises(ValueError, match="'siglip' is not a reranker"):
        plain.generate(["a red circle"], n=1, rerank="siglip", **kw)


# ---------------------------------------------------------------- parts that belong together
SMALL_PARTS = {"dvae": {"n_hid": 16, "codebook_size": 32, "n_blk_per_group": 1, "n_init": 16},
               "transformer": {"n_layer": 1, "n_head": 2, "d_model": 32},
               "clip": {"width": 32, "layers": 1, "text_width": 32, "text_layers": 1, "heads": 2, "text_heads": 2,
                        "embed_dim": 32},
               "train": {"batch_size": 4, "progress": "none", "ckpt_every": 1,
                         "steps": {"dvae": 1, "transformer": 1, "clip": 1}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Parts trained by train_part (one step each: what they record of their dependencies is what
    matters here): a dalle stack, a second dVAE of the same configuration (another seed), a second
    tokenizer of the same vocabulary (other settings) and one of another vocabulary."""
    from model_code.train.run import train_part
    from tests.unit.data.test_loader import shapes_data
    data = shapes_data(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("trained-parts")
    p = {k: str(root / k) for k in ("tokenizer", "tokenizer2", "tokenizer300", "dvae", "dvae2", "transformer", "clip")}
    train_part("tokenizer", "tiny", data=data, out=p["tokenizer"], mlflow=False)
    train_part("tokenizer", "tiny", data=data, out=p["tokenizer2"], mlflow=False,
               overrides={"tokenizer": {"max_text_tokens": 90}})
    train_part("tokenizer", "tiny", data=data, out=p["tokenizer300"], mlflow=False,
               overrides={"tokenizer": {"vocab_size": 300}})
    train_part("dvae", "tiny", data=data, out=p["dvae"], overrides=SMALL_PARTS, mlflow=False)
    train_part("dvae", "tiny", data=data, out=p["dvae2"], mlflow=False,
               overrides={**SMALL_PARTS, "train": {**SMALL_PARTS["train"], "seed": 1}})
    train_part("transformer", "tiny", data=data, out=p["transformer"], overrides=SMALL_PARTS, mlflow=False,
               deps={"tokenizer": p["tokenizer"], "dvae": p["dvae"]})
    train_part("clip", "tiny", data=data, out=p["clip"], overrides=SMALL_PARTS, mlflow=False,
               deps={"tokenizer": p["tokenizer"]})
    return p


def _dalle(p, **swap):
    return {**{k: p[k] for k in ("tokenizer", "clip", "dvae", "transformer")}, **swap}


def test_parts_trained_together_are_bundled_and_others_are_refused(trained, tmp_path):
    """Found by a tester: a bundle of a transformer with another tokenizer or dVAE than it was
    trained with, or of a dVAE in the CLIP's place, was built, registered and evaluated (noise, or
    an error at evaluation). What each part's train_state.json records of its dependencies must be
    what the bundle's other parts hold, each part must be of its role's kind, and a part trained
    elsewhere (no train_state.json) is held to what its config says of its dependencies."""
    import shutil
    out = save_bundle(str(tmp_path / "good"), "dalle", _dalle(trained))
    assert read_bundle_meta(out)["recipe"] == "dalle" and Generator.load(out, device="cpu").recipe == "dalle"
    refused = [
        # same configuration, another seed: every shape fits, the codes mean other pictures
        (_dalle(trained, dvae=trained["dvae2"]),
         r"parts transformer and dvae do not belong together: the transformer \(.*\) was trained with the dvae "
         r".*dvae \(identity \w+\), not with .*dvae2"),
        # the same vocabulary size, another tokenizer: refused for CLIP (listed first) and the transformer
        (_dalle(trained, tokenizer=trained["tokenizer2"]), r"parts (clip|transformer) and tokenizer do not belong"),
        (_dalle(trained, clip=trained["dvae"]), r"part clip: .*dvae holds a 'easel-dvae' model, not 'easel-clip'"),
    ]
    for parts, match in refused:
        with pytest.raises(ValueError, match=match):
            save_bundle(str(tmp_path / "bad"), "dalle", parts)
        assert not (tmp_path / "bad").exists()   # refused before anything was copied

    # parts trained elsewhere record no dependencies: their configs are checked against the parts given
    imported = {}
    for k in ("transformer", "clip"):
        imported[k] = str(tmp_path / f"imported-{k}")
        shutil.copytree(trained[k], imported[k], ignore=shutil.ignore_patterns("train_state.json", "checkpoints"))
    save_bundle(str(tmp_path / "imported"), "dalle", _dalle(trained, **imported))   # they do fit
    with pytest.raises(ValueError, match=r"parts clip and tokenizer do not belong together: .* has vocab_size=\d+ "
                                         r"where the tokenizer gives 300"):
        save_bundle(str(tmp_path / "bad"), "dalle", _dalle(trained, tokenizer=trained["tokenizer300"], **imported))
    with pytest.raises(ValueError, match=r"parts transformer and dvae .* codebook_size=32 where the dvae gives 128"):
        other = build_parts(str(tmp_path / "untrained"), "dalle")   # the tiny preset's 128-code dVAE
        save_bundle(str(tmp_path / "bad"), "dalle", _dalle(trained, dvae=other["dvae"], **imported))


def test_a_bundle_whose_parts_do_not_belong_together_is_refused_at_registration(trained, tmp_path):
    """A bundle edited after it was made (or made before parts were checked) is refused where a
    bundle is read: registration (before anything is uploaded) and loading."""
    import shutil

    from model_code.registry.registry import register_bundle
    good = save_bundle(str(tmp_path / "good"), "dalle", _dalle(trained))
    for part, src, match in [("clip", trained["dvae"], "holds a 'easel-dvae' model, not 'easel-clip'"),
                             ("dvae", trained["dvae2"], "parts transformer and dvae do not belong together")]:
        bad = tmp_path / f"bad-{part}"
        shutil.copytree(good, bad)
        shutil.rmtree(bad / part)
        shutil.copytree(src, bad / part, ignore=shutil.ignore_patterns("checkpoints"))
        for read in (read_bundle_meta, Generator.load, lambda b: register_bundle(b, "easel-never-registered")):
            with pytest.raises(ValueError, match=rf"bundle.json: .*{match}"):
                read(str(bad))


def test_a_bundle_is_written_beside_its_parts_never_into_or_around_one(trained, tmp_path):
    import shutil
    parts = {k: str(tmp_path / "parts" / k) for k in ("tokenizer", "clip", "dvae", "transformer")}
    for k, d in parts.items():
        shutil.copytree(trained[k], d, ignore=shutil.ignore_patterns("checkpoints"))
    for out, where in [(parts["dvae"], "is"), (os.path.join(parts["dvae"], "bundle"), "is inside"),
                       (str(tmp_path / "parts"), "contains")]:
        before = sorted(os.listdir(parts["dvae"]))
        with pytest.raises(ValueError, match=rf"out {out} {where} the \w+ part .*: write the bundle to a directory"):
            save_bundle(out, "dalle", parts)
        assert sorted(os.listdir(parts["dvae"])) == before and not os.path.exists(os.path.join(out, "bundle.json"))
    save_bundle(str(tmp_path / "parts-bundle"), "dalle", parts)   # a sibling whose name extends a part's path is fine


@pytest.mark.parametrize("recipe, setting, value", [
    ("dalle", "temperature", float("nan")), ("dalle", "temperature", float("inf")), ("dalle", "temperature", -0.5),
    ("dalle", "guidance_scale", float("nan")), ("dalle", "top_p", 1.5), ("dalle", "top_p", 0.0),
    ("dalle", "top_k", 0), ("dalle", "top_k", 2.5), ("dalle", "candidates", 0), ("dalle", "candidates", True),
    ("unclip", "decoder_guidance", float("nan")), ("unclip", "prior_guidance", -1.0),
    ("unclip", "decoder_steps", 0), ("unclip", "upsample", "yes"), ("unclip", "candidates", "4")])
def test_sampling_values_must_be_finite_and_in_range(recipe, setting, value):
    """Found by a tester: `--set sampling.dalle.temperature=.nan` built a bundle, and NaN guidance
    scales made a table of identical rows: every sampling value is checked where the settings are."""
    from model_code.generate import check_sampling
    with pytest.raises(ValueError, match=rf"sampling\.{setting}: must be"):
        check_sampling(recipe, {setting: value})


def test_sampling_values_in_range_pass():
    from model_code.generate import check_sampling
    ok = {"temperature": 0.0, "top_k": 8, "top_p": 1.0, "guidance_scale": 3, "candidates": 2}
    assert check_sampling("dalle", ok) == ok
    assert check_sampling("dalle", {"top_k": None, "top_p": None}) == {"top_k": None, "top_p": None}
    assert check_sampling("unclip", {"decoder_guidance": None, "decoder_steps": 3, "upsample": False})


def test_a_bundle_with_a_nan_sampling_setting_is_refused(trained, tmp_path):
    with pytest.raises(ValueError, match=r"sampling.temperature: must be a finite number >= 0, got nan"):
        save_bundle(str(tmp_path / "b"), "dalle", _dalle(trained), sampling={"temperature": float("nan")})
    assert not (tmp_path / "b").exists()
