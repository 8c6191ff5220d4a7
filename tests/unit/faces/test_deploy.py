"""The deploy step's InferenceService: the storageUri from the registered version, the rendered
object (valid against tests/schemas/, the chart's rules), the update of an existing service
(canary split, version switch, nothing else touched), and the create-or-update-then-wait logic
through KServe's client against a stand-in API server over HTTP (tests/fake_apiserver.py)."""
import copy

import jsonschema
import pytest
import yaml

from easel.cli import main
from model_code.cluster import inferenceservice as isvc
from tests.fake_apiserver import FakeApiServer

URI = "s3://easel-mlflow/artifacts/1/models/m-0123abcd/artifacts"
IMAGE = "registry.example/easel-cuda:0.1.0"


def validator():
    """tests/schemas/inferenceservice-v1beta1.json, core types resolved into Kubernetes 1.32's."""
    pytest.importorskip("kubernetes_validate")
    from tests.k8s import schema_validator
    return schema_validator("inferenceservice-v1beta1")


# ---------------------------------------------------------------- storageUri
@pytest.mark.parametrize("source,expected", [
    ("mlflow-artifacts:/1/models/m-abc/artifacts", "s3://easel-mlflow/artifacts/1/models/m-abc/artifacts"),
    ("mlflow-artifacts://easel-mlflow.easel.svc:5000/1/models/m-abc/artifacts",
     "s3://easel-mlflow/artifacts/1/models/m-abc/artifacts"),
    ("s3://other/models/x", "s3://other/models/x"),
    ("gs://bucket/m", "gs://bucket/m"),
])
def test_storage_uri_from_the_version_source(source, expected, monkeypatch):
    monkeypatch.delenv("EASEL_MLFLOW_ARTIFACTS_URI", raising=False)
    assert isvc.kserve_storage_uri(source) == expected


def test_storage_uri_root_and_local_sources(monkeypatch):
    monkeypatch.setenv("EASEL_MLFLOW_ARTIFACTS_URI", "s3://my-mlflow/root/")
    assert isvc.kserve_storage_uri("mlflow-artifacts:/7/x") == "s3://my-mlflow/root/7/x"
    assert isvc.kserve_storage_uri("mlflow-artifacts:/7/x", "gs://g/a") == "gs://g/a/7/x"
    for bad in ("file:///home/me/.easel/mlruns/1/x", "/tmp/x", "mlflow-artifacts:/", ""):
        with pytest.raises(ValueError, match="storage"):
            isvc.kserve_storage_uri(bad)


def _registry_with_a_version(tmp_path, monkeypatch):
    """A SQLite registry of this test's own holding easel-dalle version 1 -> (client, version)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EASEL_MLFLOW_ARTIFACTS_URI", raising=False)
    from model_code import tracking
    c = tracking.client()
    c.create_registered_model("easel-dalle")
    return c, c.create_model_version("easel-dalle", "mlflow-artifacts:/1/models/m-aaa/artifacts").version


def test_registered_version_reads_the_registry(tmp_path, monkeypatch):
    c, v1 = _registry_with_a_version(tmp_path, monkeypatch)
    v2 = c.create_model_version("easel-dalle", "mlflow-artifacts:/1/models/m-bbb/artifacts").version
    c.set_registered_model_alias("easel-dalle", "production", v1)
    prod = isvc.registered_version("easel-dalle", "production")
    assert prod.pop("tags") == {}
    assert prod == {"model": "easel-dalle", "version": str(v1), "source": "mlflow-artifacts:/1/models/m-aaa/artifacts",
                    "storage_uri": "s3://easel-mlflow/artifacts/1/models/m-aaa/artifacts"}
    assert isvc.registered_version("easel-dalle", v2)["storage_uri"].endswith("/m-bbb/artifacts")
    with pytest.raises(ValueError, match="no alias 'staging' of 'easel-dalle'"):
        isvc.registered_version("easel-dalle", "staging")
    with pytest.raises(ValueError, match="no version 9 of 'easel-dalle'"):
        isvc.registered_version("easel-dalle", "9")
    with pytest.raises(ValueError, match="no version 1 of 'nope'"):
        isvc.registered_version("nope", "1")


def test_a_version_promoted_outside_easels_gate_is_not_deployed_or_served(tmp_path, monkeypatch):
    """An alias set by hand (or by the MLflow UI's "Promote model") skips Easel's gate: deploy and
    serve refuse such a version, naming it and how to gate it, unless --allow-ungated."""
    from model_code.registry.registry import GATE_VERDICT, GateError
    from model_code.registry.resolve import resolve_model
    c, v1 = _registry_with_a_version(tmp_path, monkeypatch)
    c.set_registered_model_alias("easel-dalle", "production", v1)      # by hand: no gate record
    kw = dict(service="dalle", namespace="easel-serving", image=IMAGE, dry_run=True)
    with pytest.raises(GateError, match=rf"easel-dalle version {v1} has no passed gate record.*"
                                        rf"easel model promote easel-dalle {v1}.*--allow-ungated"):
        isvc.deploy_model("easel-dalle", "production", **kw)
    with pytest.raises(GateError, match="no passed gate record"):
        resolve_model("models:/easel-dalle@production")
    ungated = isvc.deploy_model("easel-dalle", "production", allow_ungated=True, **kw)
    assert ungated["object"]["metadata"]["annotations"]["easel.ai/gate"].startswith("ungated")
    c.set_model_version_tag("easel-dalle", v1, GATE_VERDICT, "failed")
    with pytest.raises(GateError, match="gate: failed"):
        isvc.deploy_model("easel-dalle", v1, **kw)
    c.set_model_version_tag("easel-dalle", v1, GATE_VERDICT, "passed")
    gated = isvc.deploy_model("easel-dalle", "production", **kw)
    assert "easel.ai/gate" not in gated["object"]["metadata"]["annotations"]


# ---------------------------------------------------------------- the object
def test_render_validates_and_carries_the_version():
    obj = isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE, model="easel-dalle", version="3",
                                       canary_traffic_percent=10, gpus=1)
    validator().validate(obj)
    broken = copy.deepcopy(obj)
    broken["spec"]["predictor"]["replicas"] = 2  # not a field: the API server would refuse it
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(broken)
    meta, pred = obj["metadata"], obj["spec"]["predictor"]
    assert meta["annotations"][isvc.ANNOTATION_STORAGE] == URI
    assert meta["annotations"][isvc.ANNOTATION_MODEL] == "easel-dalle"
    assert meta["annotations"][isvc.ANNOTATION_VERSION] == "3"
    assert pred["canaryTrafficPercent"] == 10
    (c,) = pred["containers"]
    assert {"name": "STORAGE_URI", "value": URI} in c["env"] and c["image"] == IMAGE
    assert c["args"][:3] == ["serve", "--model", "/mnt/models"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pred["tolerations"][0]["key"] == "nvidia.com/gpu" and pred["nodeSelector"]
    assert pred["serviceAccountName"] == "dalle-s3"
    assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    # no canary: the field is absent (KServe sends everything to the latest revision)
    full = isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE, canary_traffic_percent=100)
    assert "canaryTrafficPercent" not in full["spec"]["predictor"]
    raw = isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE, values={"deploymentMode": "RawDeployment"})
    validator().validate(raw)
    assert raw["spec"]["predictor"]["scaleMetric"] == "cpu"
    # a deploy makes the object, not a Helm release: the label says so; the rest is the chart's
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "easel-deploy" and meta["namespace"] == "easel-serving"
    dev = isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE, values={"provenance": {"devChain": True}})
    assert {"name": "c2pa-dev", "emptyDir": {"sizeLimit": "1Mi"}} in dev["spec"]["predictor"]["volumes"]


def test_the_chart_is_found_where_the_images_put_it(tmp_path, monkeypatch):
    import shutil
    shutil.copytree(isvc.chart_dir(), tmp_path / "charts" / "easel-serving")
    monkeypatch.setenv("EASEL_CHARTS_DIR", str(tmp_path / "charts"))
    assert isvc.chart_dir() == str(tmp_path / "charts" / "easel-serving")
    assert isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE)["kind"] == "InferenceService"
    monkeypatch.setenv("EASEL_CHARTS_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(isvc.DeployError, match="easel-serving Helm chart is not at .*EASEL_CHARTS_DIR"):
        isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE)


def test_the_served_arguments_parse():
    """The predictor's args are a valid `easel serve` command line (the chart uses the same)."""
    from easel.cli import build_parser
    obj = isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE)
    a = build_parser().parse_args(obj["spec"]["predictor"]["containers"][0]["args"])
    assert (a.model, a.name, a.host, a.port) == ("/mnt/models", "dalle", "0.0.0.0", 8080)


@pytest.mark.parametrize("kwargs,message", [
    ({"service": "Dalle_1"}, "service must be a DNS-1035 label"),
    ({"namespace": "Easel"}, "namespace must be a DNS-1123 label"),
    ({"storage_uri": "/tmp/bundle"}, "storage_uri="),
    ({"image": "has space"}, "image must be"),
    ({"image": "registry.example:5000/easel-cuda"}, "image must name a tag"),
    ({"canary_traffic_percent": 150}, "canary_traffic_percent must be an integer in [0, 100]"),
    ({"canary_traffic_percent": 10, "values": {"deploymentMode": "RawDeployment"}}, "needs deployment_mode Serverless"),
    # the rest is the chart's own schema and checks, with its message
    ({"values": {"deploymentMode": "Knativ"}}, "at '/deploymentMode': value must be one of"),
    ({"values": {"predictor": {"scaleMetric": "gpu"}}}, "at '/predictor/scaleMetric'"),
    ({"values": {"predictor": {"scaleMetric": "cpu"}}}, "predictor.scaleMetric=cpu: with deploymentMode=Serverless"),
    ({"values": {"predictor": {"minReplicas": 4, "maxReplicas": 2}}}, "predictor.minReplicas (4) is larger"),
    ({"values": {"deploymentMode": "RawDeployment", "predictor": {"minReplicas": 0}}}, "needs deploymentMode=Serverless"),
    ({"values": {"provenance": {"secretName": ""}}}, "provenance.secretName is required"),
    ({"values": {"replicas": 2}}, "additional properties 'replicas' not allowed"),
])
def test_render_rejects_what_the_chart_rejects(kwargs, message):
    args = {"service": "dalle", "namespace": "easel-serving", "storage_uri": URI, "image": IMAGE, **kwargs}
    with pytest.raises(ValueError) as e:
        isvc.render_inferenceservice(args.pop("service"), args.pop("namespace"), args.pop("storage_uri"),
                                     args.pop("image"), **args)
    assert message in str(e.value)


def chart_like_existing() -> dict:
    """A service as the chart left it: a transformer in front, Helm's labels, KServe's finalizer
    and status."""
    obj = isvc.render_inferenceservice("dalle", "easel-serving", "s3://easel-mlflow/artifacts/1/models/old/artifacts",
                                       "easel/easel-cpu:0.1.0", model="easel-dalle", version="2")
    obj["metadata"].update(finalizers=["inferenceservice.finalizers"], resourceVersion="41", generation=3)
    obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "Helm"
    obj["spec"]["transformer"] = {"containers": [{"name": "kserve-container", "image": "easel/easel-cpu:0.1.0",
                                                  "args": ["serve", "--role", "transformer", "--model",
                                                           "/mnt/models"],
                                                  "env": [{"name": "STORAGE_URI", "value": "s3://old"}]}]}
    obj["status"] = {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}]}
    return obj


def test_update_switches_the_version_and_keeps_the_rest():
    old = chart_like_existing()
    new = isvc.update_inferenceservice(old, URI, model="easel-dalle", version="3", canary_traffic_percent=20,
                                       image=IMAGE)
    assert old["spec"]["predictor"]["containers"][0]["env"][0]["value"].endswith("/old/artifacts")  # a copy
    pred = new["spec"]["predictor"]
    assert pred["containers"][0]["env"][0] == {"name": "STORAGE_URI", "value": URI}
    assert pred["canaryTrafficPercent"] == 20
    assert new["metadata"]["annotations"][isvc.ANNOTATION_VERSION] == "3"
    assert new["metadata"]["finalizers"] == ["inferenceservice.finalizers"]
    assert new["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert new["spec"]["transformer"]["containers"][0]["image"] == IMAGE
    # the transformer in front loads the same bundle as the predictor (safety CLIP, prompt limit)
    assert new["spec"]["transformer"]["containers"][0]["env"] == [{"name": "STORAGE_URI", "value": URI}]
    assert pred["containers"][0]["resources"] == old["spec"]["predictor"]["containers"][0]["resources"]
    # promote the canary: the same version with all traffic removes the split
    promoted = isvc.update_inferenceservice(new, URI, model="easel-dalle", version="3")
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert promoted["spec"]["transformer"]["containers"][0]["image"] == IMAGE  # image kept when not given


def test_update_refuses_foreign_services_and_raw_canaries():
    foreign = chart_like_existing()
    foreign["spec"]["predictor"]["containers"][0]["name"] = "other"
    with pytest.raises(isvc.DeployError, match="not made by Easel"):
        isvc.update_inferenceservice(foreign, URI)
    raw = chart_like_existing()
    raw["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    with pytest.raises(ValueError, match="needs deployment_mode Serverless"):
        isvc.update_inferenceservice(raw, URI, canary_traffic_percent=10)


def test_ready_state():
    obj = {"metadata": {"generation": 2}, "status": {"observedGeneration": 1,
                                                     "conditions": [{"type": "Ready", "status": "True"}]}}
    assert isvc.ready_state(obj) == (False, "KServe has not reconciled the new spec yet")
    obj["status"]["observedGeneration"] = 2
    assert isvc.ready_state(obj) == (True, "")
    obj["status"]["conditions"] = [{"type": "Ready", "status": "False"},
                                   {"type": "PredictorReady", "status": "False", "message": "image pull back-off"}]
    assert isvc.ready_state(obj) == (False, "Ready: not ready; PredictorReady: image pull back-off")


# ---------------------------------------------------------------- create or update, then wait
def kserve(api: FakeApiServer):
    """KServe's own client, pointed at the fake API server over HTTP."""
    from kserve import KServeClient
    return KServeClient(config_dict=api.kubeconfig(), persist_config=False)


def test_apply_creates_a_new_service_and_waits():
    new = isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE, model="easel-dalle", version="3")
    with FakeApiServer() as api:
        res = isvc.apply_inferenceservice(new, model="easel-dalle", version="3", image=IMAGE, client=kserve(api),
                                          poll_seconds=0.01)
    assert res["action"] == "created" and res["ready"] and res["url"] == "http://dalle.example"
    stored = api.objects[("easel-serving", "dalle")]
    assert stored["spec"] == new["spec"] and stored["metadata"]["annotations"] == new["metadata"]["annotations"]
    assert [m for m, _ in api.calls][:3] == ["GET", "GET", "POST"]  # the service, its account, create


def test_a_new_service_without_the_charts_account_is_a_clear_error():
    """The lifecycle deploys `easel-dalle`; if the chart was installed only as `dalle`, the new
    service's pods could never fetch the model: say so at once, create nothing."""
    new = isvc.render_inferenceservice("easel-dalle", "easel-serving", URI, IMAGE, model="easel-dalle", version="3")
    with FakeApiServer() as api:
        with pytest.raises(isvc.DeployError, match="ServiceAccount easel-serving/easel-dalle-s3 not found.*"
                                                   "helm install easel-dalle charts/easel-serving"):
            isvc.apply_inferenceservice(new, client=kserve(api), poll_seconds=0.01)
    assert not api.objects and "POST" not in [m for m, _ in api.calls]


def test_apply_updates_an_existing_service_through_conflicts():
    existing = chart_like_existing()
    new = isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE, model="easel-dalle", version="3",
                                       canary_traffic_percent=10, gpus=1)
    with FakeApiServer(existing, conflicts=2) as api:
        res = isvc.apply_inferenceservice(new, model="easel-dalle", version="3", canary_traffic_percent=10,
                                          image=IMAGE, client=kserve(api), poll_seconds=0.01)
    assert res["action"] == "updated" and res["ready"]
    assert [m for m, _ in api.calls].count("PUT") == 3  # two conflicts, then through
    stored = api.objects[("easel-serving", "dalle")]
    assert stored["metadata"]["generation"] == 4 and stored["metadata"]["finalizers"] == ["inferenceservice.finalizers"]
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert stored["spec"]["predictor"]["containers"][0]["env"][0]["value"] == URI
    # the existing service keeps its own resources: an update is not a re-render
    assert "nvidia.com/gpu" not in stored["spec"]["predictor"]["containers"][0]["resources"]["limits"]


def test_apply_times_out_with_kserve_reason():
    new = isvc.render_inferenceservice("dalle", "easel-serving", URI, IMAGE)
    with FakeApiServer(ready_after=None) as api:
        with pytest.raises(TimeoutError, match="not ready after 0s: KServe has not reconciled the new spec yet"):
            isvc.apply_inferenceservice(new, client=kserve(api), timeout=0.05, poll_seconds=0.01)
    with FakeApiServer(chart_like_existing(), conflicts=10) as api:
        with pytest.raises(isvc.DeployError, match="updating InferenceService easel-serving/dalle failed: 409"):
            isvc.apply_inferenceservice(new, client=kserve(api), poll_seconds=0.01)


def test_no_cluster_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(isvc.DeployError, match="no Kubernetes access"):
        isvc.kserve_client()


def test_dry_run_and_the_cli_render(capsys):
    res = isvc.deploy_model("easel-dalle", "4", service="dalle", namespace="easel-serving", image=IMAGE,
                            storage_uri=URI, canary_traffic_percent=25, dry_run=True)
    assert res["action"] == "rendered" and res["version"] == "" and res["canary_traffic_percent"] == 25
    # artifacts named directly claim no registry version and say that no gate was checked
    notes = res["object"]["metadata"]["annotations"]
    assert isvc.ANNOTATION_VERSION not in notes and notes["easel.ai/gate"].startswith("ungated (--storage-uri")
    with pytest.raises(isvc.DeployError, match="skips the registry, and with it the promotion gate"):
        isvc.deploy_model("easel-dalle", "4", service="dalle", namespace="easel-serving", image=IMAGE,
                          storage_uri=URI, wait=False)
    validator().validate(res["object"])
    assert main(["model", "deploy", "easel-dalle", "--ref", "4", "--service", "dalle", "--image", IMAGE,
                 "--storage-uri", URI, "--canary", "25", "--render"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == res["object"]
    assert main(["model", "deploy", "easel-dalle", "--image", IMAGE, "--storage-uri", URI, "--canary", "101",
                 "--render"]) == 1
    assert "canary_traffic_percent must be an integer in [0, 100]" in capsys.readouterr().err


def test_an_update_keeps_the_resources_and_says_so_when_gpus_differ(monkeypatch, caplog):
    """--gpus shapes a new service; an update switches the model only, and a differing --gpus is
    reported rather than silently dropped."""
    with FakeApiServer(chart_like_existing()) as api:
        monkeypatch.setattr(isvc, "kserve_client", lambda: kserve(api))
        res = isvc.deploy_model("easel-dalle", "production", service="dalle", namespace="easel-serving",
                                image=IMAGE, gpus=1, storage_uri=URI, allow_ungated=True, poll_seconds=0.01)
        assert res["action"] == "updated" and "kept its 0 GPU(s) per replica; gpus=1" in res["note"]
        assert "kept its 0 GPU(s)" in caplog.text
        same = isvc.deploy_model("easel-dalle", "production", service="dalle", namespace="easel-serving",
                                 image=IMAGE, gpus=0, storage_uri=URI, allow_ungated=True, poll_seconds=0.01)
        assert "note" not in same
