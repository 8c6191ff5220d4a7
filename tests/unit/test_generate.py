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
