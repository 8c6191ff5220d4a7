"""Every pipeline compiles, the committed YAML is current, and cluster settings compile in."""
import os

import pytest
import yaml

from pipelines.compile import PIPELINES, compile_all

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_committed_yaml_is_current(tmp_path, monkeypatch):
    for var in ("EASEL_IMAGE_REGISTRY", "EASEL_IMAGE_TAG", "EASEL_RELEASE", "EASEL_GPU_ACCELERATOR"):
        monkeypatch.delenv(var, raising=False)
    fresh = compile_all(str(tmp_path))
    for path in fresh:
        committed = os.path.join(ROOT, "pipelines", "compiled", os.path.basename(path))
        assert os.path.exists(committed), f"{committed} missing: run `easel pipeline compile`"
        with open(path) as a, open(committed) as b:
            assert a.read() == b.read(), f"{committed} is stale: run `easel pipeline compile`"


def test_lifecycle_requests_gpus_secrets_and_fans_out():
    with open(os.path.join(ROOT, "pipelines", "compiled", "lifecycle.yaml")) as f:
        docs = list(yaml.safe_load_all(f))
    spec, platform = docs[0], docs[1]
    text = yaml.safe_dump(spec)
    assert "nvidia.com/gpu" in text
    assert "parallelFor" in text or "iteratorPolicy" in text or "artifactIterator" in text or "parameterIterator" in text
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train-transformer"]
    assert train["secretAsEnv"][0]["secretName"] == "easel-s3"
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert any(v["mountPath"] == "/dev/shm" for v in train["emptyDirMounts"])
    # credentials never travel as pipeline parameters
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not any("secret" in p.lower() or "key" in p.lower() for p in params)


def test_every_pipeline_registered():
    assert set(PIPELINES) == {"lifecycle", "data", "recaption", "train", "train-multinode", "evaluate-promote",
                              "deploy", "table-captions", "table-rerank", "table-guidance"}


def load(name: str) -> tuple[dict, dict]:
    with open(os.path.join(ROOT, "pipelines", "compiled", f"{name}.yaml")) as f:
        docs = list(yaml.safe_load_all(f))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def tasks(spec: dict) -> dict[str, tuple[dict, str]]:
    """Every task of the pipeline, in the root DAG or nested (conditions, loops): name ->
    (task, executor label; '' for a sub-DAG)."""
    out = {}
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in (comp.get("dag") or {}).get("tasks", {}).items():
            ref = spec["components"][task["componentRef"]["name"]]
            out[name] = (task, ref.get("executorLabel", ""))
    return out


def test_lifecycle_parameters():
    spec, _ = load("lifecycle")
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("source", "dataset_version", "recipe", "preset", "caption_policy", "gate_config", "deploy"):
        assert name in params and params[name].get("isOptional"), name
    assert params["deploy"]["parameterType"] == "BOOLEAN" and params["deploy"]["defaultValue"] is False
    assert params["source"]["defaultValue"] == "" and params["recipe"]["defaultValue"] == "all"
    assert params["canary_traffic_percent"]["defaultValue"] == 100
    # the run-local contract: every parameter has a default, kfp.local needs no more than before
    assert all(p.get("isOptional") for p in params.values())


def test_lifecycle_deploys_only_when_asked_after_promotion():
    spec, _ = load("lifecycle")
    all_tasks = tasks(spec)
    deploys = {n: t for n, (t, label) in all_tasks.items() if label.startswith("exec-deploy")}
    assert len(deploys) == 2  # one per recipe
    conditions = [t for n, (t, _) in all_tasks.items() if "triggerPolicy" in t
                  and "pipelinechannel--deploy" in t["triggerPolicy"].get("condition", "")]
    assert len(conditions) == 2
    for cond in conditions:  # the deploy branch waits for the promotion it deploys
        assert any(d.startswith("promote") for d in cond.get("dependentTasks", [])), cond
        inner = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
        assert [t["componentRef"]["name"] for t in inner.values()] in (["comp-deploy"], ["comp-deploy-2"])
    for name, task in deploys.items():
        assert task["inputs"]["parameters"]["ref"]["runtimeValue"]["constant"] == "production"
        assert task["cachingOptions"].get("enableCache") is not True


# steps that read or change shared state are never cached; pure ones are
NEVER_CACHED = ("exec-version", "exec-register", "exec-gate", "exec-promote", "exec-deploy", "exec-train-multinode")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_caching_where_pure_and_cluster_settings_everywhere(name):
    spec, platform = load(name)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = spec["deploymentSpec"]["executors"]
    for task_name, (task, label) in tasks(spec).items():
        if not label or "importer" in containers.get(label, {}):
            continue
        cached = bool(task.get("cachingOptions", {}).get("enableCache"))
        stateful = any(label == e or label.startswith(e + "-") for e in NEVER_CACHED)
        assert cached != stateful, f"{name}: {task_name} ({label}) cached={cached}"
        k8s, container = executors[label], containers[label]["container"]
        # credentials and client settings from the cluster, never parameters
        assert k8s["secretAsEnv"][0]["secretName"] == "easel-s3", label
        assert k8s["configMapAsEnv"][0]["configMapName"] == "easel-client", label
        if container["image"].startswith("easel/easel-cuda"):  # a GPU step keeps the pool settings
            assert container["resources"]["accelerator"]["resourceCount"] == "1", label
            assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu", label
            assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
            assert any(v["mountPath"] == "/dev/shm" for v in k8s["emptyDirMounts"]), label
        else:
            assert "accelerator" not in container.get("resources", {}), label
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    assert not any("secret" in p.lower() or "password" in p.lower() or "token" in p.lower() for p in params)


def test_multinode_training_submits_its_job_from_a_cpu_pod():
    spec, _ = load("train-multinode")
    (label,) = spec["deploymentSpec"]["executors"]
    container = spec["deploymentSpec"]["executors"][label]["container"]
    assert container["image"].startswith("easel/easel-cpu") and "accelerator" not in container["resources"]
    assert "multinode_train_step" in " ".join(container["command"])
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["preset"]["defaultValue"] == "base"
    assert params["launcher"]["defaultValue"] == "trainjob" and "pytorchjob" in params["launcher"]["description"]
    assert {"part", "dataset_uri", "workdir"} <= {n for n, p in params.items() if not p.get("isOptional")}


def test_table_pipelines_end_in_their_table():
    for name, component in (("table-captions", "table_captions_step"), ("table-rerank", "table_rerank_step"),
                            ("table-guidance", "table_guidance_step")):
        spec, _ = load(name)
        labels = {label for _, label in tasks(spec).values()}
        table = next(label for label in labels if label.startswith("exec-table-"))
        command = " ".join(spec["deploymentSpec"]["executors"][table]["container"]["command"])
        assert component in command, name
    spec, _ = load("table-captions")
    policies = sorted(t["inputs"]["parameters"]["caption_policy"]["runtimeValue"]["constant"]
                      for t, label in tasks(spec).values() if label.startswith("exec-train-transformer"))
    assert policies == ["blend", "long", "original"]


def test_kfp_setter_errors_still_name_the_setter():
    """pipelines/cluster.py gives kfp's task setters a cheaper inspect.stack(): their error for a
    task without a container must still say which setter was misused."""
    import pipelines.cluster  # noqa: F401 (installs the faster stack)
    from kfp import dsl
    from kfp.dsl import Dataset
    with pytest.raises(ValueError, match="^set_memory_request can only be used on single-step components"):
        @dsl.pipeline
        def misuse(uri: str):
            dsl.importer(artifact_uri=uri, artifact_class=Dataset).set_memory_request("1Gi")


def test_gpu_steps_retry_on_preemption():
    """A preempted training step exits 143 (train.run.Preempted) after its checkpoint; KFP retries
    it with backoff and the retry resumes. Every task on the GPU pool carries the policy."""
    from pipelines.cluster import PREEMPTION_RETRIES
    for name in ("lifecycle", "train", "recaption"):
        spec, _ = load(name)
        execs = spec["deploymentSpec"]["executors"]
        gpu_tasks = {t: task for t, (task, label) in tasks(spec).items()
                     if label and "accelerator" in str(execs[label].get("container", {}).get("resources", {}))}
        assert gpu_tasks, name
        for t, task in gpu_tasks.items():
            rp = task.get("retryPolicy") or {}
            assert rp.get("maxRetryCount") == PREEMPTION_RETRIES and rp.get("backoffDuration") == "60s", (name, t)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_parameter_has_a_description_in_the_ui(name):
    """The Kubeflow UI shows each parameter's description beside its field (read from the
    compiled YAML); the preset's says how to choose one and the JSON ones give their schema."""
    with open(os.path.join(ROOT, "pipelines", "compiled", f"{name}.yaml")) as f:
        params = next(yaml.safe_load_all(f))["root"]["inputDefinitions"]["parameters"]
    assert params
    bare = [p for p, spec in params.items() if len(spec.get("description", "")) < 10]
    assert not bare, f"{name}: parameters without a description: {bare}"
    if "preset" in params:
        assert "GPU" in params["preset"]["description"]
    for key in ("overrides", "gate_config"):
        if key in params:
            assert "JSON object" in params[key]["description"] and "{" in params[key]["description"]


def test_a_pipeline_parameter_without_a_description_is_an_error():
    from pipelines.params import documented
    with pytest.raises(ValueError, match="no description for parameter.*'nameless'"):
        documented()(lambda preset, nameless: None)


def test_training_evaluation_and_gate_steps_emit_metrics_for_the_run_comparison_view():
    with open(os.path.join(ROOT, "pipelines", "compiled", "lifecycle.yaml")) as f:
        comps = next(yaml.safe_load_all(f))["components"]
    wanted = [c for c in comps if c.startswith(("comp-train-", "comp-evaluate", "comp-gate"))
              and not c.startswith("comp-gate-verdict")]
    assert len(wanted) >= 10, sorted(comps)
    for name in wanted:
        arts = comps[name].get("outputDefinitions", {}).get("artifacts", {})
        kinds = {a["artifactType"]["schemaTitle"] for a in arts.values()}
        assert "system.Metrics" in kinds, f"{name} emits no Metrics artifact"
    # validation publishes its report and a separate step stops the run on a failed suite
    assert "comp-require-valid" in comps and "comp-validate" in comps
