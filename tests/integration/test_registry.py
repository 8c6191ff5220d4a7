"""The MLflow registry for generation bundles, against the embedded SQLite store (file://
artifacts) and a real `mlflow server` on 127.0.0.1 keeping its artifacts in S3 (SeaweedFS):
register a tiny bundle, load it by alias in a fresh process and get PNGs, the gate, forced
promotion with its reason, rollback, the CLI, and concurrent promotions."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading

import pytest
from PIL import Image

from model_code.registry import pyfunc, registry
from tests.bundles import tiny_bundle
from tests.servers import S3Server, mlflow_tracking_server, seaweedfs_s3

PROMPTS = ["a large red circle in the center", "two blue squares on a white background"]
N, CANDIDATES, SEED = 2, 2, 3


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(str(tmp_path_factory.mktemp("registry-bundle")), "dalle", candidates=CANDIDATES)


@pytest.fixture(scope="module")
def expected(bundle):
    """What the bundle generates in this process: the registered model must give the same. A row
    with a seed is generated alone (serve/batching.first_batch, the server's rule), so its images
    do not depend on the other rows of the request."""
    from model_code.generate import Generator
    gen = Generator.load(bundle)
    return [gen.generate([p], n=N, candidates=CANDIDATES, seed=SEED)[0] for p in PROMPTS]


LINEAGE = {"dataset_version": "dvc-1a2b3c", "git_revision": "0123abcd",
           "train_run_ids": {"tokenizer": "r-tok", "dvae": "r-dvae", "transformer": "r-tr"}}


def _embedded_env(mp: pytest.MonkeyPatch, home: str) -> None:
    """The embedded default: no MLFLOW_TRACKING_URI, SQLite + artifacts under EASEL_HOME."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        mp.delenv(var, raising=False)
    mp.setenv("EASEL_HOME", home)


def _server_env(mp: pytest.MonkeyPatch, uri: str) -> None:
    """The client talks to the server only: no S3 credentials in this process's environment."""
    for var in ("MLFLOW_REGISTRY_URI", "EASEL_HOME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "MLFLOW_S3_ENDPOINT_URL"):
        mp.delenv(var, raising=False)
    mp.setenv("MLFLOW_TRACKING_URI", uri)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("easel-home"))


@pytest.fixture(scope="module")
def s3(request, tmp_path_factory):
    """The session's S3 server when conftest provides one, else one for this module."""
    with contextlib.ExitStack() as stack:
        try:
            server = request.getfixturevalue("s3_server")
        except pytest.FixtureLookupError:
            key, secret = "easel-registry-key", "easel-registry-secret-0123"
            endpoint = stack.enter_context(seaweedfs_s3(tmp_path_factory.mktemp("s3"), key, secret))
            server = S3Server(endpoint, key, secret)
        yield server


@pytest.fixture(scope="module")
def mlflow_s3(s3, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 proxying artifacts to s3://easel-registry/mlflow."""
    bucket = s3.bucket("easel-registry")
    with mlflow_tracking_server(tmp_path_factory.mktemp("mlflow"), artifacts_destination=f"{bucket}/mlflow",
                                env=s3.env()) as uri:
        yield uri


# The bundle is registered once per store (an upload); other tests add versions of the same
# logged model under other names, which costs no upload.
@pytest.fixture(scope="module")
def local_model(bundle, home):
    from easel.cli import main
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as out:
        _embedded_env(mp, home)
        lineage = [f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in LINEAGE.items()]
        argv = ["model", "register", bundle, "--name", "easel-dalle-local", "--json"]
        assert main(argv + [a for kv in lineage for a in ("--lineage", kv)]) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def server_model(bundle, mlflow_s3):
    with pytest.MonkeyPatch.context() as mp:
        _server_env(mp, mlflow_s3)
        return registry.register_bundle(bundle, "easel-dalle-server", LINEAGE)


@pytest.fixture
def embedded(home, local_model, monkeypatch):
    _embedded_env(monkeypatch, home)
    return local_model


@pytest.fixture
def server(mlflow_s3, server_model, monkeypatch):
    _server_env(monkeypatch, mlflow_s3)
    return server_model


def _gate(verdict: str, **metrics) -> dict:
    return {"verdict": verdict, "inputs": {"prompts": "shapes-heldout"}, "metrics": metrics,
            "thresholds": {"clip_score": 0.2}, "reasons": [] if verdict == "passed" else ["clip_score < 0.2"],
            "run_id": "r-eval"}


def _versions_of(registered: dict, name: str, n: int) -> list[str]:
    """n versions of a new model `name` holding the logged model of `registered` (each a real
    registry version; registering the same artifacts again costs no upload)."""
    import mlflow
    from model_code import tracking
    source = tracking.client().get_model_version(registered["name"], registered["version"]).source
    return [str(mlflow.register_model(source, name).version) for _ in range(n)]


# ---------------------------------------------------------------- the round trip
LOAD_AND_PREDICT = r"""
import json, os, sys
import mlflow, pandas as pd
# the installed package only: no checkout on the path
assert not any(os.path.isfile(os.path.join(p or ".", "tests", "bundles.py")) for p in sys.path)
out = {}
for name, uri in json.loads(sys.argv[1]).items():
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@production")
    pred = model.predict(pd.DataFrame(json.loads(sys.argv[2])))
    meta = model.metadata
    out[name] = {"columns": list(pred.columns), "rows": pred[["prompt", "index", "clip_score"]].values.tolist(),
                 "images": pred["image"].tolist(),
                 "inputs": [c.name for c in meta.get_input_schema().inputs],
                 "example": meta.saved_input_example_info is not None,
                 "requirements": open(mlflow.pyfunc.get_model_dependencies(f"models:/{name}@production")).read()}
print(json.dumps(out))
"""


def _gate_and_promote(registered: dict) -> None:
    name = registered["name"]
    with pytest.raises(registry.GateError, match=r"no passed gate record \(gate: pending\)"):
        registry.promote(name, registered["version"])
    registry.record_gate(name, registered["version"], _gate("passed", clip_score=0.31))
    p = registry.promote(name, registered["version"], user="ci")
    assert (p["current"], p["previous"], p["forced"], p["user"]) == (registered["version"], None, False, "ci")


def _check_lineage(name: str) -> None:
    (row,) = registry.list_versions(name)
    tags = row["tags"]
    assert row["aliases"] == ["production"] and row["stage"] == "Production" and row["gate"] == "passed"
    assert (tags["easel.recipe"], tags["easel.preset"]) == ("dalle", "tiny")
    assert (tags["easel.dataset_version"], tags["easel.git_revision"]) == ("dvc-1a2b3c", "0123abcd")
    assert json.loads(tags["easel.train_run_ids"]) == LINEAGE["train_run_ids"]
    assert json.loads(tags["easel.gate.record"])["metrics"] == {"clip_score": 0.31}
    assert tags["easel.gate.run_id"] == "r-eval"


@pytest.mark.slow
def test_round_trip_embedded_and_server(expected, home, local_model, server_model, mlflow_s3, s3,
                                        monkeypatch, tmp_path):
    for registered in (local_model, server_model):
        assert registered["version"] == "1" and registered["recipe"] == "dalle"
        assert registered["uri"] == f"models:/{registered['name']}/1"
    # the embedded store: SQLite and file:// artifacts under EASEL_HOME
    _embedded_env(monkeypatch, home)
    _gate_and_promote(local_model)
    _check_lineage(local_model["name"])
    assert os.path.isfile(os.path.join(home, "mlflow.db"))
    assert any(f == "model.safetensors" for _, _, fs in os.walk(os.path.join(home, "mlruns")) for f in fs)
    assert registry.load_generator(local_model["name"], "production").recipe == "dalle"
    # the server: it (not this process, which has no S3 credentials) put the bundle into S3
    _server_env(monkeypatch, mlflow_s3)
    _gate_and_promote(server_model)
    _check_lineage(server_model["name"])
    stored = s3.fs().find("easel-registry/mlflow")
    assert any(p.endswith("/transformer/model.safetensors") for p in stored), stored[:5]

    # a fresh process, outside the checkout, loads both by alias and generates
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON", "MLFLOW_", "EASEL_"))}
    stores = {local_model["name"]: f"sqlite:///{home}/mlflow.db", server_model["name"]: mlflow_s3}
    request = {"prompt": PROMPTS, "n": [N] * len(PROMPTS), "seed": [SEED] * len(PROMPTS),
               "candidates": [CANDIDATES] * len(PROMPTS)}
    r = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, json.dumps(stores), json.dumps(request)],
                       cwd=tmp_path, env={**env, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(got) == sorted(stores)
    want = [(im, s) for g in expected for im, s in zip(g.images, g.scores)]
    for name, res in got.items():
        assert res["columns"] == ["prompt", "index", "image", "clip_score"]
        assert res["inputs"] == ["prompt", "n", "seed", "candidates"] and res["example"]
        assert "easel==" in res["requirements"] and "torch==2.13.0" in res["requirements"]
        assert [row[:2] for row in res["rows"]] == [[p, k] for p in PROMPTS for k in range(N)]
        assert len(res["images"]) == len(want) == len(PROMPTS) * N
        for b64, row, (im, score) in zip(res["images"], res["rows"], want):
            png = base64.b64decode(b64)
            assert png[:8] == b"\x89PNG\r\n\x1a\n", name
            got_im = Image.open(io.BytesIO(png))
            assert got_im.size == (32, 32) and got_im.mode == "RGB"
            # the same seed through the registry gives exactly the images of the bundle itself
            assert got_im.tobytes() == im.tobytes(), name
            assert row[2] == pytest.approx(score, abs=1e-5)


# ---------------------------------------------------------------- gate, force, rollback, CLI
def _cli(capsys, *argv):
    from easel.cli import main
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, (json.loads(out.strip().splitlines()[-1]) if rc == 0 and "--json" in argv else out), err


def test_gate_force_rollback_and_cli(embedded, capsys):
    name = "easel-gates"
    assert _versions_of(embedded, name, 3) == ["1", "2", "3"]
    registry.record_gate(name, 1, _gate("passed"))
    registry.record_gate(name, 2, _gate("failed"))
    registry.record_gate(name, 3, _gate("passed"))
    assert registry.gate_record(name, 2)["reasons"] == ["clip_score < 0.2"]

    # the gate: refused without a passed record, --force needs a reason, which is recorded
    rc, _, err = _cli(capsys, "model", "promote", name, "2", "--json")
    assert rc == 1 and "no passed gate record (gate: failed)" in err
    rc, _, err = _cli(capsys, "model", "promote", name, "2", "--force")
    assert rc == 2 and "--reason" in err
    rc, p, _ = _cli(capsys, "model", "promote", name, "1", "--json")
    assert rc == 0 and (p["current"], p["changed"]) == ("1", True)
    rc, p, _ = _cli(capsys, "model", "promote", name, "2", "--force", "--reason", "hotfix: gate flaky on CPU",
                    "--user", "alice", "--json")
    assert rc == 0 and (p["current"], p["previous"], p["forced"], p["gate"]) == ("2", "1", True, "failed")
    again = registry.promote(name, 2, force=True, reason="again")  # idempotent: nothing recorded
    assert (again["changed"], again["current"], again["event"]) == (False, "2", None)
    registry.promote(name, 3)
    registry.promote(name, 1, alias="staging")

    hist = registry.history(name, "production")
    assert [(e["action"], e["version"]) for e in hist] == [("promote", "1"), ("promote", "2"), ("promote", "3")]
    forced = hist[1]
    assert (forced["user"], forced["reason"], forced["forced"], forced["previous"]) == \
        ("alice", "hotfix: gate flaky on CPU", True, "1")
    tag = json.loads({v["version"]: v for v in registry.list_versions(name)}["2"]["tags"]["easel.promotion.production"])
    assert (tag["user"], tag["reason"], tag["forced"]) == ("alice", "hotfix: gate flaky on CPU", True)

    def state():
        return {v["version"]: (v["aliases"], v["stage"]) for v in registry.list_versions(name)}
    assert state() == {"1": (["staging"], "Staging"), "2": ([], "Archived"), "3": (["production"], "Production")}

    # rollback walks the history back, one version per command, then says there is nothing left
    rc, r, _ = _cli(capsys, "model", "rollback", name, "--reason", "v3 regressed", "--json")
    assert rc == 0 and (r["version"], r["previous"], r["current"]) == ("2", "3", "2")
    assert state() == {"1": (["staging"], "Staging"), "2": (["production"], "Production"), "3": ([], "Archived")}
    assert registry.rollback(name)["current"] == "1"
    assert state()["1"] == (["production", "staging"], "Production")
    rc, _, err = _cli(capsys, "model", "rollback", name)
    assert rc == 1 and "nothing to roll back to" in err
    assert [e["action"] for e in registry.history(name, "production")][-2:] == ["rollback", "rollback"]
    # a new promotion after rollbacks pushes again; rolling back returns to 1
    registry.promote(name, 3)
    assert registry.rollback(name)["current"] == "1"

    rc, listed, _ = _cli(capsys, "model", "list", name, "--json")
    assert rc == 0 and [v["version"] for v in listed["versions"]] == ["1", "2", "3"]
    assert listed["versions"][0]["aliases"] == ["production", "staging"]
    rc, table, _ = _cli(capsys, "model", "list", name)
    assert rc == 0 and "production,staging" in table

    # bad input: clear errors naming the field
    with pytest.raises(ValueError, match="alias"):
        registry.promote(name, 1, alias="prod")
    with pytest.raises(ValueError, match="version"):
        registry.promote(name, "x")
    with pytest.raises(ValueError, match="has no version 9"):
        registry.promote(name, 9)
    with pytest.raises(ValueError, match="verdict"):
        registry.record_gate(name, 1, {"verdict": "ok"})
    with pytest.raises(ValueError, match="no registered model"):
        registry.list_versions("no-such-model")
    with pytest.raises(ValueError, match="reason"):
        registry.promote(name, 2, force=True)


# ---------------------------------------------------------------- concurrency
@pytest.mark.parametrize("store", ["embedded", pytest.param("server", marks=pytest.mark.slow)])
def test_concurrent_promotions_leave_a_consistent_state(store, request):
    name = f"easel-race-{store}"
    versions = _versions_of(request.getfixturevalue(store), name, 4)
    for v in versions:
        registry.record_gate(name, v, _gate("passed"))
    registry.promote(name, versions[0])

    # 8 writers at once: promotions of different versions to both aliases, and two rollbacks
    jobs = [("promote", versions[i % 4], "production") for i in range(5)] + \
           [("promote", versions[i], "staging") for i in (1, 2)] + [("rollback", None, "production")] * 2
    barrier, results, errors = threading.Barrier(len(jobs)), [], []

    def work(action, version, alias):
        barrier.wait()
        try:
            results.append(registry.promote(name, version, alias=alias) if action == "promote"
                           else registry.rollback(name, alias=alias))
        except ValueError as e:  # a rollback that found nothing to roll back to is fine
            assert "nothing to roll back" in str(e)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors

    events = registry.history(name)
    keys = {e["key"] for e in events}
    assert all(r["event"] in keys for r in results if r["event"])  # no record lost
    versions_now = registry.list_versions(name)
    for alias, stage in (("production", "Production"), ("staging", "Staging")):
        holder = registry._replay(events, alias)[-1]
        # the alias is where the history says, on exactly one version
        assert [v["version"] for v in versions_now if alias in v["aliases"]] == [holder]
        if not (alias == "staging" and "production" in next(v for v in versions_now
                                                            if v["version"] == holder)["aliases"]):
            assert [v["version"] for v in versions_now if v["stage"] == stage] == [holder]
    # and the registry keeps working: one more promotion and a rollback land where expected
    before = registry._replay(events, "production")[-1]
    target = next(v for v in versions if v != before)
    assert registry.promote(name, target)["current"] == target
    assert registry.rollback(name)["current"] == before


# ---------------------------------------------------------------- pure parts (no store)
def test_parse_requests_validates_fields():
    import pandas as pd
    rows = pyfunc.parse_requests(pd.DataFrame({"prompt": ["a", "b"], "n": [2.0, float("nan")],
                                               "seed": [1, 2]}))
    assert rows == [{"prompt": "a", "n": 2, "candidates": None, "seed": 1},
                    {"prompt": "b", "n": 1, "candidates": None, "seed": 2}]
    assert pyfunc.parse_requests(["x"]) == [{"prompt": "x", "n": 1, "candidates": None, "seed": None}]
    bad = [({"prompt": [""]}, "prompt: row 0"), ({"prompt": ["a"], "n": [0]}, "n: row 0"),
           ({"prompt": ["a"], "n": [1.5]}, "n: row 0 must be an integer"),
           ({"prompt": ["a"], "n": [3], "candidates": [2]}, "candidates: row 0"),
           ({"prompt": ["a"], "seed": [-1]}, "seed: row 0"), ({"text": ["a"]}, "'prompt' column"),
           ({"prompt": ["a"], "steps": [3]}, "unknown input column")]
    for data, msg in bad:
        with pytest.raises(ValueError, match=msg):
            pyfunc.parse_requests(pd.DataFrame(data))


def test_replay_promotions_and_rollbacks():
    def ev(action, version, alias="production", **kw):
        return {"action": action, "version": version, "alias": alias, **kw}
    events = [ev("promote", "1"), ev("promote", "2"), ev("promote", "3", "staging"), ev("promote", "3"),
              ev("rollback", "2", **{"from": "3"}),
              ev("rollback", "2", **{"from": "3"}),   # a concurrent duplicate: no effect
              ev("promote", "2"),                      # already holding it: no new entry
              ev("rollback", "1", **{"from": "9"})]    # made from a state that never was: no effect
    assert registry._replay(events, "production") == ["1", "2"]
    assert registry._replay(events, "staging") == ["3"]
    # an alias set outside Easel before the first promotion is kept as the one to roll back to
    assert registry._replay([ev("promote", "5", previous="4")], "production") == ["4", "5"]


def test_version_description_says_what_it_is_and_why_it_was_promoted(embedded):
    """The MLflow UI's version page shows the description: recipe, preset, dataset version, the
    gate's verdict with each metric against its limit and production, and links to the runs."""
    import mlflow
    from model_code import tracking
    from model_code.evaluate.gates import gate
    c = tracking.client()
    exp = tracking.ensure_experiment("easel-describe-test")
    tr_run = c.create_run(exp).info.run_id
    ev_run = c.create_run(exp).info.run_id
    source = c.get_model_version(embedded["name"], embedded["version"]).source
    name = "easel-described"
    first = str(mlflow.register_model(source, name).version)
    second = str(mlflow.register_model(source, name).version)
    for v in (first, second):   # the tags register_bundle writes, then its description
        for k, val in registry._lineage_tags({"recipe": "dalle", "preset": "tiny", "format": "x"},
                                             {**LINEAGE, "train_run_ids": {"transformer": tr_run}}).items():
            c.set_model_version_tag(name, v, k, val)
        registry._describe(c, name, v)
    pending = c.get_model_version(name, first).description
    assert "recipe `dalle`" in pending and "preset `tiny`" in pending and "dvc-1a2b3c" in pending
    assert "Gate: pending" in pending or "Gate: none" in pending
    assert f"[transformer](#/experiments/{exp}/runs/{tr_run})" in pending
    cfg = {"gates": {"clip_score": {"min": 0.2}, "pf.constraint": {"better": "higher"}}, "margin": 0.1}
    registry.record_gate(name, first, {**gate({"clip_score": 0.3, "pf.constraint": 0.5}, cfg), "run_id": ev_run})
    registry.promote(name, first)
    rec = gate({"clip_score": 0.25, "pf.constraint": 0.2}, cfg, production_metrics={"clip_score": 0.3,
                                                                                     "pf.constraint": 0.5})
    rec["production"].update({"version": first, "alias": "production"})
    registry.record_gate(name, second, {**rec, "run_id": ev_run})
    text = c.get_model_version(name, second).description
    assert "**Gate: failed**" in text and "pf.constraint = 0.2 is below production's 0.5" in text
    assert "| clip_score | 0.25 | min | 0.2 | - | yes |" in text
    assert "| pf.constraint | 0.2 | vs_production | 0.45 | 0.5 | **no** |" in text
    assert f"Compared with {name} version {first} (@production)" in text
    assert f"[evaluation run](#/experiments/{exp}/runs/{ev_run})" in text
    assert "**Gate: passed**" in c.get_model_version(name, first).description


def test_evaluation_metrics_and_dataset_are_linked_to_the_model(embedded, bundle, tmp_path):
    """Registered into its evaluation run, the logged model carries that run's metrics (MLflow 3's
    model_id: the model page shows them), and the run lists its dataset as an input."""
    import mlflow
    from model_code import tracking
    from model_code.tracking import log_run
    ds = tmp_path / "heldout-ds"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps({"content_hash": "c0ffee" * 6, "accepted": 12,
                                                 "version": "dvc:abc.dir@git:123"}))
    rid = log_run("easel-evaluate-test", "evaluate x", {"recipe": "dalle"}, {"clip_score": 0.31, "pf.constraint": 0.5},
                  datasets={str(ds): "evaluation"})
    reg = registry.register_bundle(bundle, "easel-linked", LINEAGE, run_id=rid)
    logged = mlflow.get_logged_model(reg["model_id"])
    got = {m.key: m.value for m in logged.metrics}
    assert got == {"clip_score": 0.31, "pf.constraint": 0.5} and len(logged.metrics) == 2  # once each
    inputs = tracking.client().get_run(rid).inputs.dataset_inputs
    assert len(inputs) == 1
    d = inputs[0].dataset
    assert d.name == "heldout-ds" and d.digest == ("c0ffee" * 6)[:36] and "dvc:abc.dir@git:123" in d.profile
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "evaluation"


def test_a_bundle_cannot_certify_itself_point_outside_itself_or_pass_another_versions_gate(embedded, bundle,
                                                                                         tmp_path):
    """Found by a hostile user: a bundle.json whose lineage said "gate: passed" was promotable with
    no evaluation; parts at ../../etc or a host path were registered; one bundle's evaluation
    could pass another version's gate. Each is refused, before anything is uploaded."""
    import shutil

    from model_code.evaluate.gates import run_gate
    from model_code.generate import bundle_content_id

    def edited(tag, **change):
        b = tmp_path / tag
        shutil.copytree(bundle, b)
        meta = json.loads((b / "bundle.json").read_text())
        for k, v in change.items():
            meta[k] = v(meta) if callable(v) else v
        (b / "bundle.json").write_text(json.dumps(meta))
        return str(b)
    selfcert = edited("selfcert", lineage=lambda m: {**m["lineage"], "gate": {"verdict": "passed"}})
    with pytest.raises(ValueError, match="gates are written by evaluations only"):
        registry.register_bundle(selfcert, "easel-selfcert")
    with pytest.raises(ValueError, match="gates are written by evaluations only"):
        registry.register_bundle(bundle, "easel-selfcert", {"gate": {"verdict": "passed"}})
    outside = tmp_path / "elsewhere-dvae"
    shutil.copytree(os.path.join(bundle, "dvae"), outside)
    for tag, parts, match in [("up", {"dvae": "../../etc"}, "outside the bundle"),
                              ("abs", {"dvae": str(outside)}, "outside the bundle"),
                              ("gone", {"dvae": "no-such-dir"}, "holds no trained dvae")]:
        b = edited(tag, parts=lambda m, p=parts: {**m["parts"], **p})
        with pytest.raises(ValueError, match=match):
            registry.register_bundle(b, "easel-bad-part")
    with pytest.raises(ValueError, match="recipe 'foo'"):
        registry.register_bundle(edited("foo", recipe="foo"), "easel-bad-part")
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "bundle.json").write_text('{"format": 1, "rec')
    with pytest.raises(ValueError, match="bundle.json is not valid JSON"):
        registry.register_bundle(str(tmp_path / "trunc"), "easel-bad-part")
    for bad in ("a/b", "../x", "n:1"):
        with pytest.raises(ValueError, match="'/' or ':'"):
            registry.register_bundle(bundle, bad)
    from model_code import tracking
    assert not [m for m in tracking.client().search_registered_models() if m.name in ("easel-selfcert",
                                                                                      "easel-bad-part")]
    # a gate checks that the evaluation was of the bytes registered as that version
    v = registry.register_bundle(bundle, "easel-content", LINEAGE)["version"]
    cfg = {"gates": {"clip_score": {"min": -1.0}}}
    with pytest.raises(ValueError, match="is not easel-content version 1: its content differs"):
        run_gate("easel-content", v, {"clip_score": 0.3}, cfg, inputs={"bundle_content": "0" * 64})
    rec = run_gate("easel-content", v, {"clip_score": 0.3}, cfg, inputs={"bundle_content": bundle_content_id(bundle)})
    assert rec["verdict"] == "passed" and registry.gate_record("easel-content", v)["verdict"] == "passed"
