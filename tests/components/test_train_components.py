"""The training components run through kfp.local: tokenizer, CLIP, dVAE, transformer, prior,
decoder and upsampler, two optimizer steps each on the shared tiny dataset. Each must leave a
loadable model, a completed train state and an MLflow run in the session's store."""
import json
import math
import os

import pytest

from model_code import tracking
from tests.components.tiny import GENERATOR_POLICY, STEPS, location

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")]


def check_network(outputs: dict, part: str, dataset) -> dict:
    """A trained network: the summary, the saved files, the state and the MLflow run agree."""
    from model_code.train.parts import get_part
    s, model = outputs["Output"], location(outputs["model"])
    assert s["part"] == part and s["steps"] == s["max_steps"] == STEPS
    assert s["out"] == model and s["dataset"] == location(dataset)
    assert s["preempted"] is False and s["reused"] is False
    assert s["metrics"] and all(math.isfinite(v) for v in s["metrics"].values())
    assert any(k.endswith("loss") for k in s["metrics"])
    for name in ("config.json", "model.safetensors"):
        assert os.path.getsize(os.path.join(model, name)) > 0
    state = json.load(open(os.path.join(model, "train_state.json")))
    assert state["completed"] is True and state["summary"]["steps"] == STEPS
    run = tracking.client().get_run(s["mlflow_run_id"])  # logged to the session's store
    assert run.info.status == "FINISHED"
    get_part(part).load(model)  # what a dependent step or a bundle does with it
    return s


def test_train_tokenizer(tokenizer, dataset):
    from model_code.text.tokenizer import TextTokenizer
    s = tokenizer["Output"]
    assert s["part"] == "tokenizer" and s["samples_seen"] > 0 and s["dataset"] == location(dataset)
    tok = TextTokenizer.load(location(tokenizer["model"]))
    ids = tok.encode("a red circle to the left of a blue square")
    assert ids and all(0 <= i < tok.vocab_size for i in ids)


def test_train_clip(clip, dataset):
    check_network(clip, "clip", dataset)


def test_train_dvae(generators, recaptioned):
    check_network(generators["dvae"], "dvae", recaptioned["dataset"])


def test_train_transformer(generators, recaptioned):
    s = check_network(generators["transformer"], "transformer", recaptioned["dataset"])
    run = tracking.client().get_run(s["mlflow_run_id"])
    # the generator trained on the caption policy it was given (the lifecycle's blend)
    assert run.data.params["train.caption_policy"] == GENERATOR_POLICY


def test_train_prior(generators, recaptioned):
    check_network(generators["prior"], "prior", recaptioned["dataset"])


def test_train_decoder(generators, recaptioned):
    check_network(generators["decoder"], "decoder", recaptioned["dataset"])


def test_train_upsampler(generators, recaptioned):
    check_network(generators["upsampler"], "upsampler", recaptioned["dataset"])
