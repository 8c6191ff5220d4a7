"""The release components run through kfp.local: bundle_dalle, bundle_unclip, evaluate (both
recipes), register, gate and promote. The unCLIP version meets an impossible gate, which must
fail and block its promotion; the DALL-E version meets a gate that it can pass, and is promoted."""
import json
import math
import os

import pytest

from components.gate.component import gate
from components.gate_verdict.component import gate_verdict
from components.promote.component import promote
from components.register.component import register
from model_code import tracking
from tests.components.kfp_local import run
from tests.components.tiny import PRESET, location, with_overrides

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")]

PARTS = {"dalle": {"tokenizer", "clip", "dvae", "transformer", "captioner"},
         "unclip": {"tokenizer", "clip", "prior", "decoder", "upsampler"}}
MODEL = {"dalle": "components-dalle", "unclip": "components-unclip"}


@pytest.fixture(scope="module")
def registered(releases):
    """Both bundles registered, each with its evaluation's MLflow run (one after the other: they
    write to one SQLite registry)."""
    return {r: run(register, bundle=releases[r]["bundle"]["bundle"], name=MODEL[r],
                   evaluation=releases[r]["evaluation"]["Output"])["Output"] for r in MODEL}


@pytest.mark.parametrize("recipe", ["dalle", "unclip"])
def test_bundle_assembles_the_recipe_with_lineage(recipe, releases, versioned, generators):
    from model_code.generate import read_bundle_meta
    s = releases[recipe]["bundle"]["Output"]
    bundle = location(releases[recipe]["bundle"]["bundle"])
    assert s["bundle"] == bundle and s["recipe"] == recipe and set(s["parts"]) == PARTS[recipe]
    assert read_bundle_meta(bundle)["recipe"] == recipe
    assert all(os.path.isdir(os.path.join(bundle, p)) for p in s["parts"].values())
    lineage = s["lineage"]
    assert lineage["dataset_version"] == versioned["Output"]["version"]
    # every network names the MLflow run that trained it
    for part in PARTS[recipe] & set(generators):
        assert lineage["train_run_ids"][part] == generators[part]["Output"]["mlflow_run_id"]
    assert "clip" in lineage["train_run_ids"]


@pytest.mark.parametrize("recipe", ["dalle", "unclip"])
def test_evaluate_logs_metrics_and_a_report(recipe, releases):
    ev = releases[recipe]["evaluation"]
    s, metrics = ev["Output"], ev["Output"]["metrics"]
    for key in ("clip_score", "fd_clip", "diversity", "pf.constraint", "pf.short.constraint"):
        assert math.isfinite(metrics[key]), key
    assert -1.0 <= metrics["clip_score"] <= 1.0 and 0.0 <= metrics["pf.constraint"] <= 1.0
    assert metrics["n_prompts"] == 9 and metrics["n_images"] == 18  # 9 categories x 1 prompt x 2
    assert ("dvae.psnr" in metrics) == (recipe == "dalle")
    assert any(k.startswith("captioner.") for k in metrics)  # the dataset carries recaption sidecars
    # the Metrics artifact carries the same numbers, for the KFP UI
    assert ev["metrics"].metadata["clip_score"] == pytest.approx(metrics["clip_score"])
    report = open(ev["report"].path).read()
    assert report.startswith("#") and "clip_score" in report
    # the sample grids are inside the page (the UI's Markdown view has no files beside it)
    assert "](data:image/png;base64," in report and "](samples-" not in report
    assert tracking.client().get_run(s["run_id"]).info.status == "FINISHED"


def test_register_creates_a_version_per_bundle(registered, releases):
    for recipe, reg in registered.items():
        assert reg["name"] == MODEL[recipe] and reg["version"] == "1" and reg["recipe"] == recipe
        assert reg["uri"] == f"models:/{MODEL[recipe]}/1"
        # the model was logged into the evaluation's run: one run holds the numbers and the model
        assert reg["run_id"] == releases[recipe]["evaluation"]["Output"]["run_id"]
        mv = tracking.client().get_model_version(MODEL[recipe], "1")
        assert json.loads(mv.tags["easel.lineage"])["dataset_version"].startswith("dvc:")


def test_failed_gate_blocks_promotion(registered, releases, capsys):
    from model_code.registry.registry import gate_record, list_versions
    reg, ev = registered["unclip"], releases["unclip"]["evaluation"]["Output"]
    impossible = with_overrides(evaluate={"gates": {"clip_score": {"min": 1.5, "relative": False}}})
    record = run(gate, registered=reg, evaluation=ev, preset=PRESET, overrides=impossible)["Output"]
    assert record["verdict"] == "failed"
    assert any("clip_score" in r for r in record["reasons"])
    assert gate_record(reg["name"], reg["version"])["verdict"] == "failed"  # on the version
    # what the pipeline's dsl.If reads: a rejected model is not promoted, and the run goes on
    assert run(gate_verdict, record=record)["Output"] == "failed"
    with pytest.raises(RuntimeError, match="promote"):
        run(promote, registered=reg, alias="production")
    assert "GateError" in capsys.readouterr().out
    assert all("production" not in v["aliases"] for v in list_versions(reg["name"]))


def test_passed_gate_allows_promotion(registered, releases):
    from model_code.registry.registry import list_versions
    reg, ev = registered["dalle"], releases["dalle"]["evaluation"]["Output"]
    # thresholds a two-step model can meet; the recipe-specific dvae.psnr gate applies to dalle
    reachable = with_overrides(evaluate={"gates": {"clip_score": {"min": -1.0}, "dvae.psnr": {"min": 0.0},
                                                   "pf.invalid": {"max": 1.0}}})
    record = run(gate, registered=reg, evaluation=ev, preset=PRESET, overrides=reachable)["Output"]
    assert record["verdict"] == "passed"
    assert run(gate_verdict, record=record)["Output"] == "passed"
    assert "dvae.psnr" in record["thresholds"] and record["inputs"]["recipe"] == "dalle"
    promoted = run(promote, registered=reg, alias="production")["Output"]
    assert promoted["alias"] == "production" and promoted["current"] == reg["version"]
    assert promoted["changed"] is True and promoted["gate"] == "passed"
    prod = [v for v in list_versions(reg["name"]) if "production" in v["aliases"]]
    assert [v["version"] for v in prod] == [reg["version"]]
