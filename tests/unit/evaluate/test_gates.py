"""Gate verdicts: thresholds, the relative margin against production, and the registry record."""
import pytest

from model_code.config import load_preset
from model_code.evaluate import gates as G

CFG = {"margin": 0.1, "gates": {"pf.short.constraint": {"min": 0.3},
                                "fd_clip": {"max": 1.0},
                                "clip_score": {"min": 0.0, "margin": 0.5}}}
GOOD = {"pf.short.constraint": 0.5, "fd_clip": 0.4, "clip_score": 0.2, "other": 3.0}


def test_pass_with_reasons():
    r = G.gate(GOOD, CFG, inputs={"bundle": "b"})
    assert r["verdict"] == "passed"
    assert r["reasons"] == ["all 3 checks passed (3 thresholds, 0 against production)"]
    assert r["inputs"] == {"bundle": "b"} and r["metrics"] == GOOD and r["production"] is None
    assert r["thresholds"]["fd_clip"] == {"max": 1.0, "better": "lower", "margin": 0.1, "tolerance": 0.0,
                                          "relative": True}


def test_threshold_failures_name_metric_and_limit():
    r = G.gate({**GOOD, "pf.short.constraint": 0.1, "fd_clip": 2.5}, CFG)
    assert r["verdict"] == "failed"
    assert r["reasons"] == ["pf.short.constraint = 0.1 is below the minimum 0.3",
                            "fd_clip = 2.5 is above the maximum 1"]


def test_missing_or_nan_metric_fails():
    r = G.gate({"pf.short.constraint": 0.5, "fd_clip": float("nan")}, CFG)
    assert r["verdict"] == "failed"
    assert any("fd_clip is missing" in x for x in r["reasons"])
    assert any("clip_score is missing" in x for x in r["reasons"])


def test_relative_margin_against_production():
    prod = {"pf.short.constraint": 0.6, "fd_clip": 0.3, "clip_score": 0.3}
    # 0.5 < 0.6 - 10% of 0.6 = 0.54: worse than production by more than the margin
    # fd 0.4 > 0.3 + 10% = 0.33 (lower is better); clip 0.2 >= 0.3 - 50% = 0.15 passes (own margin)
    r = G.gate(GOOD, CFG, production_metrics=prod)
    assert r["verdict"] == "failed"
    assert len(r["reasons"]) == 2
    assert r["reasons"][0] == ("pf.short.constraint = 0.5 is below production's 0.6 by more than the margin "
                            "(10%, at least 0; limit 0.54)")
    assert r["reasons"][1].startswith("fd_clip = 0.4 is above production's 0.3")
    rel = [c for c in r["checks"] if c["rule"] == "vs_production"]
    assert [c["ok"] for c in rel] == [False, False, True]
    assert rel[0]["limit"] == pytest.approx(0.54) and rel[1]["limit"] == pytest.approx(0.33)
    assert r["production"] == {"metrics": prod}
    # within the margin: passes
    ok = G.gate({**GOOD, "pf.short.constraint": 0.55, "fd_clip": 0.32}, CFG, production_metrics=prod)
    assert ok["verdict"] == "passed" and "3 against production" in ok["reasons"][0]
    # production without a gated metric: noted, not silently passed as compared
    part = G.gate(GOOD, CFG, production_metrics={"clip_score": 0.1})
    assert any("production has no fd_clip" in n for n in part["notes"])


def test_tolerance_covers_noise_near_zero_and_relative_only_gates():
    cfg = {"margin": 0.1, "gates": {"pf.constraint": {"better": "higher", "tolerance": 0.03}}}
    # production 0.01: 10% of it is 0.001, far below the evaluation's noise; the tolerance rules
    assert G.gate({"pf.constraint": 0.0}, cfg, production_metrics={"pf.constraint": 0.01})["verdict"] == "passed"
    r = G.gate({"pf.constraint": 0.1}, cfg, production_metrics={"pf.constraint": 0.5})
    assert r["verdict"] == "failed" and "limit 0.45" in r["reasons"][0]     # 10% of 0.5 > 0.03
    # relative only: without production nothing but presence is checked
    assert G.gate({"pf.constraint": 0.0}, cfg)["verdict"] == "passed"
    assert G.gate({}, cfg)["verdict"] == "failed"


def test_relative_false_keeps_a_metric_to_its_threshold():
    cfg = {"margin": 0.0, "gates": {"clip_score": {"min": 0.0, "relative": False}}}
    r = G.gate({"clip_score": 0.1}, cfg, production_metrics={"clip_score": 0.9})
    assert r["verdict"] == "passed" and [c["rule"] for c in r["checks"]] == ["min"]


def test_recipe_specific_gates():
    cfg = {"gates": {"dvae.psnr": {"min": 12.0, "recipes": ["dalle"]}, "clip_score": {"min": 0.0}}}
    assert G.gate({"dvae.psnr": 9.0, "clip_score": 0.1}, cfg, inputs={"recipe": "dalle"})["verdict"] == "failed"
    r = G.gate({"clip_score": 0.1}, cfg, inputs={"recipe": "unclip"})
    assert r["verdict"] == "passed" and r["notes"] == ["dvae.psnr: gate for dalle only, not unclip"]
    with pytest.raises(ValueError, match="inputs.recipe"):
        G.gate({"clip_score": 0.1}, cfg)


@pytest.mark.parametrize("bad, field", [
    ({"gates": {}}, "evaluate.gates"),
    ({"gates": {"m": {"min": "high"}}}, "evaluate.gates.m.min"),
    ({"gates": {"m": {"minimum": 1}}}, "evaluate.gates.m: unknown keys"),
    ({"gates": {"m": {"min": 0, "max": 1}}}, "better: higher"),
    ({"gates": {"m": {"min": 2, "max": 1, "better": "higher"}}}, "above max"),
    ({"gates": {"m": {"min": 0}}, "margin": -1}, "evaluate.margin"),
    ({"gates": {"m": {"min": 0, "tolerance": -0.1}}}, "evaluate.gates.m.tolerance"),
    ({"gates": {"m": 0.5}}, "evaluate.gates.m"),
    ({"gates": {"m": {"min": 0, "relative": "no"}}}, "evaluate.gates.m.relative"),
    ({"gates": {"m": {"min": 0, "recipes": "dalle"}}}, "evaluate.gates.m.recipes"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        G.gate({"m": 1.0}, bad)


def test_preset_gates_are_well_formed():
    for name in ("tiny", "small", "base"):
        cfg = G.gate_config(load_preset(name))
        assert cfg["gates"], name
    # an untrained tiny model must not pass the tiny gates: blank-image level metrics fail
    zeros = {k: 0.0 for k in G.gate_config("tiny")["gates"]}
    for recipe in ("dalle", "unclip"):
        assert G.gate(zeros, "tiny", inputs={"recipe": recipe})["verdict"] == "failed"


def test_run_gate_records_on_the_model_version(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    import mlflow
    from mlflow import MlflowClient

    from model_code import tracking
    from model_code.registry import registry
    tracking.configure()
    exp = tracking.ensure_experiment("t")
    c = MlflowClient()
    c.create_registered_model("m")
    versions = []
    for _ in range(2):
        run = c.create_run(exp)
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / "f.txt").write_text("x")
        c.log_artifacts(run.info.run_id, str(tmp_path / "a"), "model")
        versions.append(c.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id).version)

    # no production yet: thresholds only
    r1 = G.run_gate("m", versions[0], GOOD, CFG, inputs={"run_id": "eval-1"})
    assert r1["verdict"] == "passed" and any("no production version" in n for n in r1["notes"])
    assert registry.gate_record("m", versions[0])["run_id"] == r1["run_id"]
    registry.promote("m", versions[0])
    # the candidate is worse than production by more than the margin: failed, recorded
    r2 = G.run_gate("m", versions[1], {**GOOD, "pf.short.constraint": 0.35}, CFG)
    assert r2["verdict"] == "failed" and r2["production"]["version"] == str(versions[0])
    mv = c.get_model_version("m", versions[1])
    assert mv.tags["easel.gate.verdict"] == "failed" and mv.tags["easel.gate.run_id"] == r2["run_id"]
    art = mlflow.artifacts.load_dict(f"runs:/{r2['run_id']}/gate_record.json")
    assert art["verdict"] == "failed" and art["reasons"] == r2["reasons"]
    with pytest.raises(registry.GateError):
        registry.promote("m", versions[1])
