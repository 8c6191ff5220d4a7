"""The library steps behind the lifecycle's new parameters and components: the source (given or
synthesized), the dataset-version pin, the gate configuration (and the recipe that selects
recipe-specific gates), and the multi-node training job the train-multinode component submits."""
import os

import pytest

from easel import steps
from model_code.cluster.pytorchjob import job_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_source_given_is_referenced_not_copied(tmp_path):
    art = str(tmp_path / "artifact")
    summary = steps.source_step(art, "shapes://n=6,size=32")
    assert summary == {"source": "shapes://n=6,size=32", "synthesized": False}
    assert steps.input_location(art) == "shapes://n=6,size=32"  # what the ingest step reads


def test_no_source_synthesizes_the_preset_world(tmp_path):
    art, work = str(tmp_path / "artifact"), str(tmp_path / "work")
    summary = steps.source_step(art, "", workdir=work, overrides='{"data": {"n": 5}}', seed=3)
    assert summary["synthesized"] and summary["n"] == 5 and summary["size"] == 32
    assert steps.input_location(art) == os.path.join(work, "raw") == summary["source"]
    assert os.listdir(os.path.join(work, "raw"))


def test_dataset_version_pin(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "a.txt").write_text("one")
    found = steps.version_step(str(d))
    assert found["version"].startswith("dvc:") and found["dvc_md5"].endswith(".dir")
    # the same content passes, by full id (any git part) or by the hash alone
    assert steps.version_step(str(d), found["version"])["dvc_md5"] == found["dvc_md5"]
    assert steps.version_step(str(d), f"dvc:{found['dvc_md5']}@git:0123abc")["version"] == found["version"]
    assert steps.version_step(str(d), found["dvc_md5"])["dvc_md5"] == found["dvc_md5"]
    (d / "a.txt").write_text("two")
    with pytest.raises(ValueError, match=r"dataset_version: .* not the requested dvc:"):
        steps.version_step(str(d), found["version"])
    with pytest.raises(ValueError, match="not a dataset version id"):
        steps.version_step(str(d), "dvc:nogitpart")


def test_gate_settings_merge_over_the_preset():
    base = steps.gate_settings("tiny")["evaluate"]
    cfg = steps.gate_settings("tiny", gate_config='{"margin": 0.25, "gates": {"clip_score": {"min": 0.5}}}')
    ev = cfg["evaluate"]
    assert ev["margin"] == 0.25 and ev["gates"]["clip_score"]["min"] == 0.5
    assert ev["gates"]["clip_score"]["relative"] is False           # the preset's other keys of the rule stay
    assert set(ev["gates"]) == set(base["gates"])                  # and its other gates
    same = steps.gate_settings("tiny", gate_config={"evaluate": {"tolerance": 0.1}})
    assert same["evaluate"]["tolerance"] == 0.1
    assert steps.gate_settings("tiny", gate_config="") == steps.gate_settings("tiny")
    for bad, message in (('{"gates": {"clip_score": {"minimum": 1}}}', "unknown keys"),
                         ('{"margin": -1}', "evaluate.margin: must be >= 0"),
                         ("not json", "gate_config: not a JSON object"),
                         ("[1, 2]", "gate_config: expected a JSON object")):
        with pytest.raises(ValueError, match=message):
            steps.gate_settings("tiny", gate_config=bad)


def test_gate_step_uses_the_recipe_and_the_gate_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    from model_code import tracking
    tracking.configure()
    c = tracking.client()
    c.create_registered_model("m")
    run = c.create_run(tracking.ensure_experiment("t"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    c.log_artifacts(run.info.run_id, str(tmp_path / "a"), "model")
    version = c.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id).version
    metrics = {"clip_score": 0.2, "pf.constraint": 0.3, "pf.short.constraint": 0.3, "pf.invalid": 0.5}
    evaluation = {"metrics": metrics, "report": "r.md"}
    unclip = {"name": "m", "version": str(version), "uri": f"models:/m/{version}", "recipe": "unclip"}
    # the tiny preset's dVAE gate is for dalle only: an unclip version passes without it
    assert steps.gate_step(unclip, evaluation, "tiny")["verdict"] == "passed"
    dalle = steps.gate_step({**unclip, "recipe": "dalle"}, evaluation, "tiny")
    assert dalle["verdict"] == "failed" and any("dvae.psnr is missing" in r for r in dalle["reasons"])
    strict = steps.gate_step(unclip, evaluation, "tiny", gate_config='{"gates": {"clip_score": {"min": 0.5}}}')
    assert strict["verdict"] == "failed" and strict["reasons"] == ["clip_score = 0.2 is below the minimum 0.5"]
    assert c.get_model_version("m", version).tags["easel.gate.verdict"] == "failed"


def test_multinode_job_for_a_part(monkeypatch):
    job = steps.multinode_train_step(
        "transformer", "s3://easel-data/shapes-256", "s3://easel-checkpoints/run-1/transformer",
        "registry.example/easel-cuda:0.1.0", overrides='{"train": {"lr": 0.0003, "max_steps": 100}}',
        deps={"tokenizer": "s3://w/tokenizer", "dvae": "s3://w/dvae", "clip": ""}, caption_policy="blend",
        nodes=4, gpus_per_node=8, namespace="kubeflow", launcher="pytorchjob", submit=False)
    assert job["state"] == "Rendered" and job["nodes"] == 4 and job["kind"] == "PyTorchJob"
    obj = job["object"]
    assert obj["metadata"]["name"] == job["job"] == job_name("transformer", "base", job["out"])
    assert len(obj["metadata"]["name"]) <= 48
    args = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    tail = args[args.index("easel"):]
    assert tail[:9] == ["easel", "train", "transformer", "--preset", "base", "--data", "s3://easel-data/shapes-256",
                        "--out", "s3://easel-checkpoints/run-1/transformer"]
    pairs = list(zip(tail[9::2], tail[10::2]))
    assert ("--dep", "dvae=s3://w/dvae") in pairs and ("--dep", "tokenizer=s3://w/tokenizer") in pairs
    assert not any(v.startswith("clip=") for _, v in pairs)  # an empty dependency is left out
    assert ("--set", "train.lr=0.0003") in pairs and ("--set", 'train.caption_policy="blend"') in pairs
    assert obj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    # what the pods run parses as `easel train` with the overrides intact
    from easel.cli import build_parser
    from model_code.config import parse_overrides
    a = build_parser().parse_args(tail[1:])
    assert a.part == "transformer" and a.dep == ["dvae=s3://w/dvae", "tokenizer=s3://w/tokenizer"]
    assert parse_overrides(a.set)["train"] == {"num_nodes": 4, "devices": 8, "lr": 0.0003, "max_steps": 100,
                                               "caption_policy": "blend"}
    # the pods share no file system: local paths are refused before anything is submitted
    with pytest.raises(ValueError, match="object-store URI"):
        steps.multinode_train_step("transformer", "/data/local", "s3://o", "img:1", submit=False)
    with pytest.raises(ValueError, match="launcher must be one of trainjob, pytorchjob"):
        steps.multinode_train_step("transformer", "s3://d", "s3://o", "img:1", launcher="mpijob", submit=False)
    # ... and so are local dependencies, parts that do not exist and settings no pod could read
    with pytest.raises(ValueError, match="dep tokenizer=/local/tok: a trained dependency must be an object-store"):
        steps.multinode_train_step("transformer", "s3://d", "s3://o", "img:1", deps={"tokenizer": "/local/tok"},
                                   submit=False)
    with pytest.raises(ValueError, match="dep 'bogus': not a part"):
        steps.multinode_train_step("transformer", "s3://d", "s3://o", "img:1", deps={"bogus": "s3://x"}, submit=False)
    with pytest.raises(ValueError, match="unknown preset section 'nonsense'"):
        steps.multinode_train_step("transformer", "s3://d", "s3://o", "img:1", overrides={"nonsense": {"key": 1}},
                                   submit=False)
    # the name stays fixed per output (a retried step finds its job) and differs between outputs
    assert job_name("dvae", "base", "s3://a") == job_name("dvae", "base", "s3://a")
    assert job_name("dvae", "base", "s3://a") != job_name("dvae", "base", "s3://b")


def test_multinode_job_validates_against_the_schema():
    pytest.importorskip("kubernetes_validate")
    from tests.k8s import schema_validator
    validator = schema_validator("pytorchjob-v1")
    job = steps.multinode_train_step("decoder", "s3://d", "s3://o/decoder", "img:1", deps={"tokenizer": "s3://t",
                                     "clip": "s3://c"}, overrides={"decoder": {"conditioning": "text"}},
                                     nodes=2, gpus_per_node=4, launcher="pytorchjob", submit=False)
    validator.validate(job["object"])


def test_trainjob_is_the_default_launcher_and_validates_against_the_trainer_api():
    """The default multi-node job is a Kubeflow Trainer v2 TrainJob on the runtime easel-torch:
    it and the runtime parse as kubeflow_trainer_api's models with nothing dropped (an unknown or
    misspelt field would be), the pods run `torchrun --no-python easel train` with the same
    arguments a PyTorchJob's do, and a node pool given is a runtime patch."""
    from tests.k8s import trainer_model
    from model_code.cluster.trainjob import runtime
    job = steps.multinode_train_step("transformer", "s3://easel-data/shapes-256", "s3://w/transformer", "img:1",
                                     deps={"tokenizer": "s3://w/tokenizer", "dvae": "s3://w/dvae"},
                                     overrides={"train": {"lr": 0.0003}}, nodes=4, gpus_per_node=2, submit=False)
    assert job["launcher"] == "trainjob" and job["kind"] == "TrainJob"
    obj = job["object"]
    trainer_model("TrainJob", obj)
    trainer_model("ClusterTrainingRuntime", runtime())
    assert obj["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": runtime()["metadata"]["name"]}
    t = obj["spec"]["trainer"]
    assert t["numNodes"] == 4 and t["numProcPerNode"] == 2
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == t["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == 2
    assert t["command"][:3] == ["torchrun", "--no-python", "easel"]
    legacy = steps.multinode_train_step("transformer", "s3://easel-data/shapes-256", "s3://w/transformer", "img:1",
                                        deps={"tokenizer": "s3://w/tokenizer", "dvae": "s3://w/dvae"},
                                        overrides={"train": {"lr": 0.0003}}, nodes=4, gpus_per_node=2,
                                        launcher="pytorchjob", submit=False)["object"]
    args = legacy["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert t["command"][2:] == args[args.index("easel"):]          # the same `easel train` for both launchers
    from easel.cli import build_parser
    a = build_parser().parse_args(t["command"][3:])
    assert a.part == "transformer" and a.dep == ["dvae=s3://w/dvae", "tokenizer=s3://w/tokenizer"]
    assert job["job"] == obj["metadata"]["name"] == legacy["metadata"]["name"]   # a retried step finds its job
    # the runtime's pod: the trainer writes into the container named "node" of the job named "node"
    (rj,) = runtime()["spec"]["template"]["spec"]["replicatedJobs"]
    assert rj["name"] == "node" and rj["template"]["spec"]["template"]["spec"]["containers"][0]["name"] == "node"
    # another node pool: a runtime patch, owned by Easel's renderer
    from model_code.cluster.trainjob import render_trainjob
    pooled = render_trainjob("dvae", "base", "img:1", 1, 8, "s3://d", "s3://o", "kubeflow",
                             node_selector={"pool": "a100"}, tolerations=[{"key": "gpu", "operator": "Exists"}])
    trainer_model("TrainJob", pooled)
    (patch,) = pooled["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert patch["manager"] == "easel.ai/render" and pod["nodeSelector"] == {"pool": "a100"}
    # a misspelt field is caught
    bad = {**obj, "spec": {**obj["spec"], "trainer": {**t, "numProcsPerNode": 2}}}
    with pytest.raises(AssertionError, match="numProcsPerNode"):
        trainer_model("TrainJob", bad)


def test_table_step_writes_its_markdown_artifact_not_the_repo_docs(tmp_path, monkeypatch):
    """The table components' library call: the section goes to the step's Markdown artifact and
    MLflow; docs/results.md (absent in a pipeline pod) is left alone."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    from model_code.data.ingest import ingest
    from model_code.data.synth import synthesize
    from tests.bundles import tiny_bundle
    synthesize(str(tmp_path / "raw"), n=24, size=32, seed=0, curated_fraction=0.25)
    ingest(str(tmp_path / "raw"), str(tmp_path / "ds"), size=32, shard_size=12, heldout_fraction=0.3)
    bundle = tiny_bundle(str(tmp_path), "dalle")
    docs = os.path.join(ROOT, "docs", "results.md")
    before = open(docs).read()
    md = tmp_path / "artifact" / "table"
    res = steps.table_rerank_step(bundle, str(tmp_path / "ds"), str(tmp_path / "out"), budgets=[1, 2],
                                  overrides={"evaluate": {"n_per_category": 1}}, markdown_path=str(md))
    assert [r["budget"] for r in res["rows"]] == [1, 2] and res["run_id"]
    assert md.read_text().startswith("## DALL-E 1: CLIP reranking budget") and res["markdown"] in md.read_text()
    assert open(docs).read() == before


def test_publish_puts_numbers_on_metrics_and_scalars_on_the_artifact(tmp_path):
    from kfp.dsl import Metrics, Model
    metrics = Metrics(name="metrics", uri=str(tmp_path / "m"), metadata={})
    model = Model(name="model", uri=str(tmp_path / "model"), metadata={})
    summary = {"part": "dvae", "steps": 40, "mlflow_run_id": "abc", "out": {"nested": 1},
               "metrics": {"train/loss": 0.5, "perf/steps_per_s": 3, "bad": float("nan"), "flag": True,
                           "name": "x"}}
    assert steps.publish(summary, metrics, model, ("part", "steps", "mlflow_run_id", "out", "absent")) is summary
    assert metrics.metadata == {"train/loss": 0.5, "perf/steps_per_s": 3.0}
    assert model.metadata == {"part": "dvae", "steps": 40, "mlflow_run_id": "abc"}


class FakeJobs:
    """The CustomObjectsApi calls submit_custom_object makes, over a dict, and a training
    controller that writes `conditions` one per read after the job is created."""

    def __init__(self, conditions: list[tuple[str, str]], existing: dict | None = None):
        self.objects, self.conditions, self.reads, self.created = {}, conditions, 0, []
        if existing is not None:
            self.objects[existing["metadata"]["name"]] = existing

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        from kubernetes.client.rest import ApiException
        if body["metadata"]["name"] in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append((group, version, plural))
        self.objects[body["metadata"]["name"]] = {**body, "status": {}}
        return body

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        obj = self.objects[name]
        if self.reads < len(self.conditions):
            t, msg = self.conditions[self.reads]
            obj["status"] = {"conditions": [{"type": t, "status": "True", "message": msg}]}
        self.reads += 1
        return obj


def test_submit_waits_for_the_trainjob_and_reports_failure():
    from model_code.cluster import JobFailed, PyTorchJobFailed, submit_pytorchjob, submit_trainjob
    from model_code.cluster.trainjob import render_trainjob
    from model_code.cluster.pytorchjob import render_pytorchjob
    job = render_trainjob("dvae", "base", "img:1", 2, 8, "s3://d", "s3://o", "kubeflow", name="easel-dvae-x")
    api = FakeJobs([("Created", ""), ("Running", ""), ("Complete", "jobset completed")])
    final = submit_trainjob(job, api=api, poll_seconds=0)
    assert api.created == [("trainer.kubeflow.org", "v1alpha1", "trainjobs")] and api.reads == 3
    assert final["status"]["conditions"][0]["type"] == "Complete"
    with pytest.raises(JobFailed, match="TrainJob kubeflow/easel-dvae-x failed: OOMKilled"):
        submit_trainjob(job, api=FakeJobs([("Running", ""), ("Failed", "OOMKilled")]), poll_seconds=0)
    with pytest.raises(TimeoutError, match="still Running"):
        submit_trainjob(job, api=FakeJobs([("Running", "")] * 100), poll_seconds=0, timeout=0)
    # a retried step finds its own job (exists_ok); one that failed before is not waited for again
    done = FakeJobs([("Complete", "")], existing={**job, "status": {}})
    assert submit_trainjob(job, api=done, exists_ok=True, poll_seconds=0)["status"]["conditions"][0]["type"] == "Complete"
    # ... but not a job of the same name (part, preset, out) that trains something else
    import copy
    other = copy.deepcopy(job)
    other["spec"]["trainer"]["numNodes"] = 8
    with pytest.raises(RuntimeError, match="exists with another spec .* delete the old job"):
        submit_trainjob(other, api=done, exists_ok=True, poll_seconds=0)
    resubmitted = copy.deepcopy(job)  # the one a first attempt created carries its spec's digest
    first = FakeJobs([("Complete", "")])
    submit_trainjob(copy.deepcopy(job), api=first, poll_seconds=0)
    assert submit_trainjob(resubmitted, api=first, exists_ok=True, poll_seconds=0)
    with pytest.raises(RuntimeError, match="exists with another spec"):
        submit_trainjob(other, api=first, exists_ok=True, poll_seconds=0)
    failed = {**job, "status": {"conditions": [{"type": "Failed", "status": "True", "message": "bad image"}]}}
    with pytest.raises(JobFailed, match="exists and has failed: bad image; delete it"):
        submit_trainjob(job, api=FakeJobs([], existing=failed), exists_ok=True, poll_seconds=0)
    # the legacy launcher takes the same loop, and keeps its own exception type
    legacy = render_pytorchjob("dvae", "base", "img:1", 1, 8, "s3://d", "s3://o", "kubeflow")
    with pytest.raises(PyTorchJobFailed):
        submit_pytorchjob(legacy, api=FakeJobs([("Failed", "x")]), poll_seconds=0)
    with pytest.raises(ValueError, match="must be a TrainJob"):
        submit_trainjob(legacy, api=FakeJobs([]))
