"""Gates that reject noise: an untrained bundle, a bundle that draws noise and one that draws blank
canvases fail the gates of every preset that trains models (tiny, laptop, small, base; `paper` is built on
the meta device only and has none). The drawings go through the real evaluation: generation with
CLIP reranking, the oracle, the judge, the metrics; only what the sampler returns is replaced."""
import pytest
import torch

from tests.bundles import evaluation_env, tiny_bundle

PRESETS_WITH_GATES = ("tiny", "laptop", "small", "base")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("gates-reject")
    with evaluation_env(root) as ds:
        yield {"root": root, "ds": ds,
               "bundles": {r: tiny_bundle(str(root / r), r) for r in ("dalle", "unclip")}}


def _drawing(kind: str):
    """A sampler that draws `kind` (None: the bundle's own, untrained, sampler)."""
    if kind is None:
        return None

    def sample(self, prompts, cand, gen, settings):
        n, s = len(prompts) * cand, 32
        if kind == "noise":
            return torch.rand(n, 3, s, s, generator=gen) * 2 - 1
        return torch.full((n, 3, s, s), 248 / 127.5 - 1)   # the white background, nothing on it
    return sample


@pytest.mark.parametrize("recipe", ["dalle", "unclip"])
@pytest.mark.parametrize("drawing", [None, "noise", "blank"])
def test_untrained_noise_and_blank_fail_every_presets_gates(env, recipe, drawing, monkeypatch):
    from model_code.evaluate.evaluate import evaluate
    from model_code.evaluate.gates import gate
    from model_code.generate import Generator
    bundle = env["bundles"][recipe]
    if drawing:
        cls = type(Generator.load(bundle))
        monkeypatch.setattr(cls, "sample", _drawing(drawing))
    out = str(env["root"] / f"eval-{recipe}-{drawing}")
    r = evaluate(bundle, env["ds"], out, n_per_category=1, samples_per_prompt=2, candidates=2, mlflow=False)
    m = r["metrics"]
    if drawing:   # nothing a noise or blank image shows meets a constraint
        assert m["pf.exact"] == 0.0 and m["pf.constraint"] == 0.0 and m["pf.geneval"] == 0.0
        assert m["pf.invalid"] == 1.0
    for preset in PRESETS_WITH_GATES:
        rec = gate(m, preset, inputs={"recipe": recipe})
        assert rec["verdict"] == "failed", (preset, recipe, drawing, rec["reasons"])
