"""`easel pipeline submit | schedule`: the request (package + arguments checked against the
pipeline's declared parameters) and what the real kfp.Client sends with it, to a stand-in for the
KFP REST API on 127.0.0.1; a host that does not answer is a one-line error."""
import json
import re
import urllib.parse
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from easel.cli import main
from easel.pipeline_client import (PipelineHostError, build_request, check_arguments, declared_parameters,
                                        normalize_cron, parse_params, send)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COMPILED = os.path.join(ROOT, "pipelines", "compiled")


def package(name: str) -> str:
    return os.path.join(COMPILED, f"{name}.yaml")


class FakeKFP:
    """The KFP v2beta1 endpoints kfp.Client uses to upload pipelines and versions and start runs,
    recording every request; uploaded packages are kept (pipelines: name -> {id, versions: [{id,
    display_name, package}]}). reject: HTTP status to answer run / recurring-run creation with."""

    def __init__(self, reject: int | None = None):
        self.reject = reject
        self.requests: list[tuple[str, str, dict | None]] = []
        self.pipelines: dict[str, dict] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _filter_name(self, query: dict) -> str | None:
                flt = json.loads(query.get("filter", ["{}"])[0] or "{}")
                return next((p.get("stringValue") or p.get("string_value") for p in flt.get("predicates", [])
                             if p.get("key") == "display_name"), None)

            def do_GET(self):
                outer.requests.append(("GET", self.path, None))
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path.startswith("/apis/v2beta1/healthz"):
                    return self._reply(200, {"multi_user": False})
                if url.path.startswith("/apis/v2beta1/experiments"):
                    return self._reply(200, {"experiments": [], "total_size": 0})
                if url.path == "/apis/v2beta1/pipelines":
                    name = self._filter_name(query)
                    found = [{"pipeline_id": p["id"], "display_name": n} for n, p in outer.pipelines.items()
                             if name is None or n == name]
                    return self._reply(200, {"pipelines": found, "total_size": len(found)} if found else {})
                m = re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", url.path)
                if m:
                    p = next((p for p in outer.pipelines.values() if p["id"] == m.group(1)), None)
                    if p is None:
                        return self._reply(404, {"error": "no such pipeline"})
                    name = self._filter_name(query)
                    vs = [{"pipeline_version_id": v["id"], "display_name": v["display_name"], "pipeline_id": p["id"]}
                          for v in p["versions"] if name is None or v["display_name"] == name]
                    return self._reply(200, {"pipeline_versions": vs, "total_size": len(vs)} if vs else {})
                self._reply(404, {"error": "not found"})

            def _upload(self) -> bytes:
                """The uploadfile part of a multipart/form-data body."""
                import email.parser
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                msg = email.parser.BytesParser().parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                return next(part.get_payload(decode=True) for part in msg.get_payload()
                            if part.get_param("name", header="content-disposition") == "uploadfile")

            def do_POST(self):
                url = urllib.parse.urlparse(self.path)
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                if url.path == "/apis/v2beta1/pipelines/upload":
                    package = self._upload()
                    outer.requests.append(("POST", url.path, query))
                    name = query["name"]
                    pid, vid = f"p-{len(outer.pipelines) + 1}", f"v-{len(outer.pipelines) + 1}-1"
                    outer.pipelines[name] = {"id": pid, "versions": [{"id": vid, "display_name": name,
                                                                      "package": package}]}
                    return self._reply(200, {"pipeline_id": pid, "display_name": name})
                if url.path == "/apis/v2beta1/pipelines/upload_version":
                    package = self._upload()
                    outer.requests.append(("POST", url.path, query))
                    p = next(p for p in outer.pipelines.values() if p["id"] == query["pipelineid"])
                    vid = f"{p['id'].replace('p-', 'v-')}-{len(p['versions']) + 1}"
                    p["versions"].append({"id": vid, "display_name": query["name"], "package": package})
                    return self._reply(200, {"pipeline_version_id": vid, "display_name": query["name"],
                                             "pipeline_id": p["id"]})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                outer.requests.append(("POST", self.path, body))
                if self.path == "/apis/v2beta1/experiments":
                    return self._reply(200, {"experiment_id": "exp-1", "display_name": body.get("display_name")})
                if outer.reject and self.path in ("/apis/v2beta1/runs", "/apis/v2beta1/recurringruns"):
                    return self._reply(outer.reject, {"error": "service account easel-pipeline-runner not allowed",
                                                      "code": 7})
                if self.path == "/apis/v2beta1/runs":
                    return self._reply(200, {"run_id": "run-1", "display_name": body.get("display_name")})
                if self.path == "/apis/v2beta1/recurringruns":
                    return self._reply(200, {"recurring_run_id": "job-1", "display_name": body.get("display_name")})
                self._reply(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def posted(self, path: str) -> dict:
        bodies = [b for m, p, b in self.requests if m == "POST" and p == path]
        assert len(bodies) == 1, self.requests
        return bodies[0]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: nothing listens there


def without_caching(node):
    if isinstance(node, dict):
        return {k: without_caching(v) for k, v in node.items() if k != "cachingOptions"}
    if isinstance(node, list):
        return [without_caching(v) for v in node]
    return node


def compiled_spec(name: str) -> dict:
    with open(package(name)) as f:
        return next(yaml.safe_load_all(f))


# ---------------------------------------------------------------- the request
def test_declared_parameters_of_the_lifecycle():
    d = declared_parameters(package("lifecycle"))
    for name in ("source", "dataset_version", "recipe", "preset", "caption_policy", "gate_config", "deploy"):
        assert name in d and not d[name]["required"]
    assert d["deploy"]["type"] == "BOOLEAN" and d["deploy"]["default"] is False
    assert d["seed"]["type"] == "NUMBER_INTEGER"
    r = declared_parameters(package("evaluate-promote"))
    assert r["bundle_uri"]["required"] and r["dataset_uri"]["required"] and not r["preset"]["required"]


def test_a_local_fan_out_shares_the_cores(monkeypatch):
    """kfp.local runs the recaption groups at once on one machine: each takes a share of the
    cores (two 2-thread processes on 2 cores spin against each other); on a cluster (the
    pipeline's default 0) each pod uses its own."""
    from easel import lifecycle
    for cores, concurrent, threads in ((2, 2, 1), (8, 2, 4), (2, 3, 1), (1, 2, 1), (16, 1, 16)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert lifecycle.local_threads(concurrent) == threads
    d = declared_parameters(package("lifecycle"))
    assert d["recaption_threads"]["default"] == 0 and d["recaption_groups"]["default"] == 2


def test_arguments_are_typed_as_declared():
    req = build_request(package("lifecycle"), {"deploy": "true", "seed": "7", "recipe": "dalle",
                                               "canary_traffic_percent": 10, "gate_config": '{"margin": 0.2}'})
    # gate_config is typed (a struct): the JSON given on the command line arrives as an object
    assert req.arguments == {"canary_traffic_percent": 10, "deploy": True, "gate_config": {"margin": 0.2},
                             "recipe": "dalle", "seed": 7}
    assert req.package_path == package("lifecycle") and req.pipeline == "lifecycle" and req.cron is None
    tables = build_request(package("table-rerank"), {"dataset_uri": "s3://easel-data/x", "budgets": "[1, 4]"})
    assert tables.arguments["budgets"] == [1, 4]
    mn = build_request(package("train-multinode"), {"part": "transformer", "dataset_uri": "s3://d", "workdir": "s3://w",
                                                     "deps": '{"tokenizer": "s3://t"}'})
    assert mn.arguments["deps"] == {"tokenizer": "s3://t"}


@pytest.mark.parametrize("args,message", [
    ({"presett": "small"}, "unknown parameter presett (it takes: "),
    ({"seed": "1.5"}, "parameter seed: expected an integer, got '1.5'"),
    ({"seed": True}, "parameter seed: expected an integer"),
    ({"deploy": "maybe"}, "parameter deploy: expected true or false"),
    ({"preset": 3}, "parameter preset: expected a string"),
    ({"gate_config": "[0.2]"}, "parameter gate_config: expected a JSON object"),
    # values the run would only refuse at its last step (the deploy, after the training)
    ({"deploy": "true", "canary_traffic_percent": 250}, "canary_traffic_percent must be an integer in [0, 100]"),
    ({"serving_namespace": "Bad_NS"}, "serving_namespace: namespace must be a DNS-1123 label"),
    ({"serving_gpus": -1}, "serving_gpus must be an integer in [0, 16]"),
    ({"recipe": "both"}, "recipe must be one of dalle, unclip, all"),
    ({"caption_policy": "curated"}, "caption_policy must be one of original, short, long, blend"),
    ({"preset": "huge"}, "preset must be one of tiny, laptop, small, base, paper"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError) as e:
        build_request(package("lifecycle"), args)
    assert message in str(e.value)
    if "unknown" in message:
        assert "dataset_version" in str(e.value)  # the list of what it takes


@pytest.mark.parametrize("pipeline,args,message", [
    ("train-multinode", {"part": "foo", "dataset_uri": "s3://d", "workdir": "s3://w"}, "part must be one of"),
    ("train-multinode", {"part": "dvae", "dataset_uri": "s3://d", "workdir": "s3://w", "nodes": 0}, "nodes must be"),
    ("train-multinode", {"part": "dvae", "dataset_uri": "s3://d", "workdir": "s3://w", "gpus_per_node": 99},
     "gpus_per_node must be"),
    ("train-multinode", {"part": "dvae", "dataset_uri": "s3://d", "workdir": "s3://w", "launcher": "slurm"},
     "launcher must be one of trainjob, pytorchjob"),
    ("deploy", {"model": "easel-dalle", "service": "Bad_Name"}, "service must be a DNS-1035 label"),
    ("deploy", {"model": "easel-dalle", "canary_traffic_percent": -5}, "canary_traffic_percent must be"),
])
def test_bad_values_of_other_pipelines(pipeline, args, message):
    with pytest.raises(ValueError, match=f"pipeline {pipeline}: .*{message}"):
        build_request(package(pipeline), args)


def test_missing_required_parameter_and_bad_package(tmp_path):
    with pytest.raises(ValueError, match=r"missing required parameters bundle_uri \(a string\), dataset_uri"):
        build_request(package("evaluate-promote"), {})
    with pytest.raises(ValueError, match="no pipeline named 'nope'"):
        build_request("nope", {})
    with pytest.raises(ValueError, match="unknown parameter x"):  # after compiling: nothing is left behind
        build_request("deploy", {"x": 1}, enable_caching=False)
    bad = tmp_path / "x.yaml"
    bad.write_text("a: 1\n")
    with pytest.raises(ValueError, match="not a compiled KFP pipeline"):
        build_request(str(bad), {})
    with pytest.raises(ValueError, match="does not exist"):
        build_request(str(tmp_path / "missing.yaml"), {})


def test_check_arguments_lists_and_structs():
    declared = {"l": {"type": "LIST", "required": False, "default": []},
                "s": {"type": "STRUCT", "required": False, "default": {}},
                "f": {"type": "NUMBER_DOUBLE", "required": True, "default": None}}
    typed = check_arguments(declared, {"l": [1], "s": '{"a": 1}', "f": "2.5"}, "p")
    assert typed == {"f": 2.5, "l": [1], "s": {"a": 1}}
    with pytest.raises(ValueError, match="parameter l: expected a JSON list"):
        check_arguments(declared, {"l": '{"a": 1}', "f": 1}, "p")
    with pytest.raises(ValueError, match="parameter s: expected a JSON object"):
        check_arguments(declared, {"s": "not json", "f": 1}, "p")


def test_params_and_cron():
    assert parse_params(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for bad in (["novalue"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_params(bad)
    assert normalize_cron("0 3 * * *") == "0 0 3 * * *"         # seconds first for KFP
    assert normalize_cron("  0 0 9 ? * 2-6 ") == "0 0 9 ? * 2-6"
    assert normalize_cron("@daily") == "@daily" and normalize_cron("@every 6h") == "@every 6h"
    assert normalize_cron("*/15 9-17 * JAN-MAR mon,fri") == "0 */15 9-17 * JAN-MAR mon,fri"
    # fields in range, ranges ascending, steps and intervals above zero (the scheduler's rules)
    for bad, what in (("61 3 * * *", "minute '61'"), ("0 25 * * *", "hour '25'"), ("a b c d e", "minute 'a'"),
                      ("5-1 * * * *", "runs backwards"), ("*/0 * * * *", "step"), ("0 0 0 * *", "day of month"),
                      ("0 0 * 13 *", "month '13'"), ("0 0 * * 7", "day of week '7'"), ("@every 0s", "zero interval"),
                      ("? * * * *", "minute '?'")):
        with pytest.raises(ValueError, match=re.escape(what)):
            normalize_cron(bad)
    for bad in ("", "* * *", "0 3 * * * * *", "@sometimes", "0 3 * * ;rm"):
        with pytest.raises(ValueError, match="cron"):
            normalize_cron(bad)


def test_by_name_compiles_the_current_package(tmp_path, monkeypatch):
    for var in ("EASEL_IMAGE_REGISTRY", "EASEL_IMAGE_TAG", "EASEL_RELEASE", "EASEL_GPU_ACCELERATOR"):
        monkeypatch.delenv(var, raising=False)
    req = build_request("deploy", {"model": "easel-unclip"}, package_dir=str(tmp_path), cron="@hourly",
                        max_concurrency=2)
    assert req.package_path == str(tmp_path / "deploy.yaml")
    with open(req.package_path) as a, open(package("deploy")) as b:
        assert a.read() == b.read()
    assert req.cron == "@hourly" and req.max_concurrency == 2 and req.arguments == {"model": "easel-unclip"}
    with pytest.raises(ValueError, match="max_concurrency"):
        build_request(package("deploy"), {}, max_concurrency=0)


# ---------------------------------------------------------------- sending it
def test_submit_uploads_the_pipeline_version_and_runs_it():
    req = build_request(package("lifecycle"), {"preset": "small", "deploy": "true", "recaption_groups": "4"},
                        run_name="nightly", enable_caching=False)
    with FakeKFP() as kfp_api:
        res = send(req, kfp_api.url + "/")
        # the first submission creates the pipeline, named as the UI names it; its run is of that version
        (pipeline,) = kfp_api.pipelines.values()
        assert list(kfp_api.pipelines) == ["easel-lifecycle"] and res["uploaded"] is True
        # KFP's own first version (named like the pipeline), then the content-named one the run uses
        assert [v["display_name"] for v in pipeline["versions"]] == ["easel-lifecycle", res["pipeline_version"]]
        assert res["pipeline_id"] == pipeline["id"] and res["pipeline_version_id"] == pipeline["versions"][1]["id"]
        assert res["run_id"] == "run-1" and res["url"] == f"{kfp_api.url}/#/runs/details/run-1"
        assert kfp_api.posted("/apis/v2beta1/experiments")["display_name"] == "easel"
        run = kfp_api.posted("/apis/v2beta1/runs")
        assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
        assert run["service_account"] == "easel-pipeline-runner"
        assert run["runtime_config"]["parameters"] == {"preset": "small", "deploy": True, "recaption_groups": 4}
        assert run["pipeline_version_reference"] == {"pipeline_id": pipeline["id"],
                                                     "pipeline_version_id": pipeline["versions"][1]["id"]}
        sent_spec = next(yaml.safe_load_all(pipeline["versions"][1]["package"]))
        assert sent_spec["pipelineInfo"]["name"] == "easel-lifecycle"
        # the package as compiled, but for the per-task caching the run overrides
        assert without_caching(sent_spec) == without_caching(compiled_spec("lifecycle"))
        # caching off for the run: no task of the sent spec is cached, nested ones (inside the recipe
        # conditions and the recaption fan-out) included
        tasks = {n: t for c in [sent_spec["root"], *sent_spec["components"].values()]
                 for n, t in (c.get("dag") or {}).get("tasks", {}).items()}
        assert {"train-transformer", "train-prior", "recaption", "ingest"} <= set(tasks)
        assert all(not t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
        # GPU settings, secrets: the Kubernetes platform spec travels in the package
        assert len(list(yaml.safe_load_all(pipeline["versions"][1]["package"]))) == 2
        # the same package again: the same version, nothing uploaded
        again = send(req, kfp_api.url)
        # changed content (caching on): a new version of the same pipeline, named by its content
        req2 = build_request(package("lifecycle"), {"preset": "small"}, run_name="nightly", enable_caching=True)
        other = send(req2, kfp_api.url)
        req2.discard()
    assert again["uploaded"] is False and again["pipeline_version_id"] == res["pipeline_version_id"]
    assert other["uploaded"] is True and other["pipeline_id"] == res["pipeline_id"]
    assert other["pipeline_version_id"] != res["pipeline_version_id"]
    assert other["pipeline_version"].startswith("easel-lifecycle-") and len(pipeline["versions"]) == 3
    assert [p for m, p, _ in kfp_api.requests if m == "POST" and "upload" in p] == [
        "/apis/v2beta1/pipelines/upload", "/apis/v2beta1/pipelines/upload_version",
        "/apis/v2beta1/pipelines/upload_version"]
    assert req.package_path != package("lifecycle")  # a copy; the committed file is untouched
    assert os.path.dirname(req.package_path) == req.temporary_dir
    req.discard()
    assert not os.path.exists(req.temporary_dir or req.package_path)


def test_schedule_sends_a_recurring_run():
    req = build_request(package("data"), {"source": "s3://easel-data/raw/shapes"}, cron="30 2 * * 1",
                        run_name="weekly-data", max_concurrency=1)
    with FakeKFP() as kfp_api:
        res = send(req, kfp_api.url)
    assert res["recurring_run_id"] == "job-1" and res["cron"] == "0 30 2 * * 1"
    job = kfp_api.posted("/apis/v2beta1/recurringruns")
    assert job["display_name"] == "weekly-data" and job["experiment_id"] == "exp-1"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1"
    assert job["mode"] == "ENABLE" and job["no_catchup"] is True and int(job["max_concurrency"]) == 1
    assert job["runtime_config"]["parameters"] == {"source": "s3://easel-data/raw/shapes"}
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "easel-data"


def test_no_answer_is_one_clear_error():
    req = build_request(package("deploy"), {})
    host = closed_port_url()
    t0 = time.monotonic()
    with pytest.raises(PipelineHostError) as e:
        send(req, host)
    assert time.monotonic() - t0 < 30  # not kfp.Client's minute of retries
    msg = str(e.value)
    assert msg.startswith(f"no Kubeflow Pipelines API answers at {host}") and "\n" not in msg
    with pytest.raises(ValueError, match="not an http"):
        send(req, "localhost:8080")


def test_another_http_server_is_not_taken_for_kfp(capfd):
    """A port-forward to the wrong service (a plain HTTP server: 404 everywhere) is one line,
    not kfp.Client's retries and tracebacks."""
    import http.server
    import threading
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(PipelineHostError, match="answers HTTP but is not the Kubeflow Pipelines API"):
            send(build_request(package("deploy"), {}), host)
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err


def test_refusal_carries_the_api_reason():
    req = build_request(package("deploy"), {})
    with FakeKFP(reject=403) as kfp_api:
        with pytest.raises(PipelineHostError) as e:
            send(req, kfp_api.url)
    msg = str(e.value)
    assert "refused the request: 403" in msg and "easel-pipeline-runner not allowed" in msg and "\n" not in msg


# ---------------------------------------------------------------- the CLI face
def test_cli_submit_prints_what_was_sent(capsys):
    with FakeKFP() as kfp_api:
        code = main(["pipeline", "submit", package("deploy"), "--host", kfp_api.url, "--param", "model=easel-unclip",
                     "--param", "canary_traffic_percent=10", "--service-account", "", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["sent"] is True and summary["run_id"] == "run-1"
    assert summary["arguments"] == {"canary_traffic_percent": 10, "model": "easel-unclip"}
    run = kfp_api.posted("/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"] == {"canary_traffic_percent": 10, "model": "easel-unclip"}
    assert "service_account" not in run  # '' -> KFP's default account
    assert "Run details:" in err  # kfp.Client's chatter goes to stderr, stdout ends with the summary


def test_cli_dry_run_and_errors(capsys, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(["pipeline", "schedule", package("deploy"), "--cron", "0 6 * * *", "--dry-run", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sent"] is False and summary["cron"] == "0 0 6 * * *" and summary["arguments"] == {}
    assert main(["pipeline", "submit", package("deploy"), "--param", "x=1"]) == 2      # no --host
    assert "--host URL is required" in capsys.readouterr().err
    assert main(["pipeline", "submit", package("deploy"), "--dry-run", "--param", "modell=x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["easel: error: pipeline deploy: unknown parameter modell (it takes: canary_traffic_percent, "
                   "gpus, image, model, namespace, ref, service)"]
    assert main(["pipeline", "submit", package("deploy"), "--param", "oops", "--dry-run"]) == 2
    assert "--param expects NAME=VALUE, got 'oops'" in capsys.readouterr().err
    host = closed_port_url()
    assert main(["pipeline", "submit", package("deploy"), "--host", host]) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(err) == 1 and err[0].startswith(f"easel: error: no Kubeflow Pipelines API answers at {host}")


@pytest.mark.parametrize("env,ok", [({"EASEL_IMAGE_TAG": ""}, False), ({"EASEL_IMAGE_TAG": "x y"}, False),
                                    ({"EASEL_IMAGE_REGISTRY": "Bad Registry"}, False),
                                    ({"EASEL_IMAGE_TAG": "0.2.0-rc1", "EASEL_IMAGE_REGISTRY": "r.example:5000/t"}, True)])
def test_compiled_images_need_a_real_tag(env, ok):
    """`EASEL_IMAGE_TAG=$TAG easel pipeline compile` with TAG unset compiled `easel-cpu:` into
    every step; now it is an error naming the variable."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "import components.images as i; print(i.GPU_IMAGE)"],
                       env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT)
    assert (r.returncode == 0) == ok, r.stderr[-300:]
    if not ok:
        assert next(iter(env)) in r.stderr
