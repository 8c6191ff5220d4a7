"""Hostile requests against a real server on 127.0.0.1: every one gets the right 4xx with a JSON
message (never a 500), and the server still answers normal requests afterwards."""
from __future__ import annotations

import json

import httpx
import pytest
import torch

from model_code.serve.server import start_in_thread
from tests.integration.test_serve import MODEL, serve_bundle, server_config

V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
OAI = "/v1/images/generations"
MAX_BODY = 200_000
pytestmark = pytest.mark.filterwarnings("ignore:ORJSONResponse is deprecated")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    srv = start_in_thread(serve_bundle(tmp_path_factory), name=MODEL,
                          config=server_config(tmp_path_factory, max_body_bytes=MAX_BODY, max_n=4))
    yield srv
    srv.stop()
    torch.set_num_threads(before)


def _json(obj) -> dict:
    return {"content": json.dumps(obj), "headers": {"content-type": "application/json"}}


def _raw(body: bytes | str, ctype: str = "application/json", **headers) -> dict:
    return {"content": body, "headers": {"content-type": ctype, **headers}}


def _v2(*inputs) -> dict:
    return _json({"inputs": list(inputs)})


def _prompt(data, shape=None, datatype="BYTES") -> dict:
    return {"name": "prompt", "shape": shape if shape is not None else [len(data)], "datatype": datatype, "data": data}


def _v2_binary(blob: bytes, size: int | None = None) -> dict:
    """A binary V2 request whose one BYTES input "prompt" is `blob` (4-byte length prefixes and
    contents), declared binary_data_size bytes long (default: all of it)."""
    head = json.dumps({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(blob) if size is None else size}}]}).encode()
    return _raw(head + blob, "application/octet-stream", **{"inference-header-content-length": str(len(head))})


def _bytes_el(text: bytes, declared: int | None = None) -> bytes:
    import struct
    return struct.pack("<I", len(text) if declared is None else declared) + text


# (name, path, request kwargs, expected status, a word the error must contain)
CASES = [
    # malformed JSON / not an object
    ("v1 malformed json", V1, _raw(b'{"instances": [{"prompt": "a"'), 400, "format"),
    ("v1 json list", V1, _json([1, 2]), 400, "instances"),
    ("v1 json string", V1, _json("a red circle"), 400, "instances"),
    ("v1 deep nesting", V1, _raw(b"[" * 5000 + b"]" * 5000), 400, ""),
    ("oai malformed json", OAI, _raw(b'{"prompt": '), 400, "JSON"),
    ("oai json array", OAI, _json(["a red circle"]), 400, "object"),
    ("v2 malformed json", V2, _raw(b'{"inputs": ['), 422, ""),
    # a drawn seed is a seed a server drew: without a seed it means nothing
    ("v1 seed_drawn without seed", V1, _json({"instances": [{"prompt": "a", "seed_drawn": True}]}), 400,
     "instances[0].seed_drawn"),
    ("v1 seed_drawn not a bool", V1, _json({"instances": [{"prompt": "a", "seed": 3, "seed_drawn": "yes"}]}), 400,
     "instances[0].seed_drawn"),
    # missing fields
    ("v1 no instances", V1, _json({"prompt": "a red circle"}), 400, "prompt"),
    ("v1 empty instances", V1, _json({"instances": []}), 400, "instances"),
    ("v1 instance without prompt", V1, _json({"instances": [{"n": 1}]}), 400, "instances[0].prompt"),
    ("oai no prompt", OAI, _json({"n": 1}), 400, "prompt"),
    ("v2 no inputs", V2, _json({}), 422, "inputs"),
    ("v2 no prompt input", V2, _v2({"name": "n", "shape": [1], "datatype": "INT32", "data": [1]}), 400, "inputs.prompt"),
    # wrong types
    ("v1 prompt number", V1, _json({"instances": [{"prompt": 5}]}), 400, "instances[0].prompt"),
    ("v1 n string", V1, _json({"instances": [{"prompt": "a", "n": "2"}]}), 400, "instances[0].n"),
    ("v1 n float", V1, _json({"instances": [{"prompt": "a", "n": 1.5}]}), 400, "instances[0].n"),
    ("v1 n bool", V1, _json({"instances": [{"prompt": "a", "n": True}]}), 400, "instances[0].n"),
    ("v1 seed negative", V1, _json({"instances": [{"prompt": "a", "seed": -1}]}), 400, "seed"),
    ("v1 seed huge", V1, _json({"instances": [{"prompt": "a", "seed": 2**40}]}), 400, "seed"),
    ("v1 seed beyond 64 bits", V1, _json({"instances": [{"prompt": "a", "seed": 2**70}]}), 400, ""),
    ("v1 rewrite string", V1, _json({"instances": [{"prompt": "a", "rewrite": "no"}]}), 400, "rewrite"),
    ("v1 instance list", V1, _json({"instances": [["a"]]}), 400, "instances[0]"),
    ("v1 unknown field", V1, _json({"instances": [{"prompt": "a", "steps": 1000}]}), 400, "steps"),
    ("oai n string", OAI, _json({"prompt": "a", "n": "2"}), 400, "n"),
    ("oai prompt list", OAI, _json({"prompt": ["a", "b"]}), 400, "prompt"),
    ("oai seed float", OAI, _json({"prompt": "a", "seed": 1.5}), 400, "seed"),
    ("oai unknown field", OAI, _json({"prompt": "a", "guidance": 99}), 400, "guidance"),
    ("v2 prompt int datatype", V2, _v2(_prompt([1], datatype="INT32")), 400, "datatype"),
    ("v2 shape mismatch", V2, _v2(_prompt(["a", "b"], shape=[3])), 400, "shape"),
    ("v2 negative shape", V2, _v2(_prompt(["a"], shape=[-1])), 400, "shape"),
    ("v2 unknown input", V2, _v2(_prompt(["a"]), {"name": "steps", "shape": [1], "datatype": "INT32", "data": [9]}),
     400, "steps"),
    ("v2 n length", V2, _v2(_prompt(["a", "b", "c"]), {"name": "n", "shape": [2], "datatype": "INT32", "data": [1, 1]}),
     400, "inputs.n"),
    ("v2 binary header lies", V2, _raw(b'{"inputs": []}', "application/octet-stream",
                                       **{"inference-header-content-length": "abc"}), 400, "malformed"),
    ("v2 binary without inputs", V2, _raw(b'{"x": 1}', "application/octet-stream",
                                          **{"inference-header-content-length": "8"}), 400, "malformed"),
    # limits
    ("v1 n=0", V1, _json({"instances": [{"prompt": "a", "n": 0}]}), 400, "between 1 and 4"),
    ("v1 n=1000", V1, _json({"instances": [{"prompt": "a", "n": 1000}]}), 400, "between 1 and 4"),
    ("oai n=0", OAI, _json({"prompt": "a", "n": 0}), 400, "n"),
    ("oai n=1000", OAI, _json({"prompt": "a", "n": 1000}), 400, "between 1 and 4"),
    ("v2 n=1000", V2, _v2(_prompt(["a"]), {"name": "n", "shape": [1], "datatype": "INT32", "data": [1000]}),
     400, "inputs.n"),
    ("v1 too many instances", V1, _json({"instances": ["a"] * 17}), 400, "limit"),
    ("oai empty prompt", OAI, _json({"prompt": "   "}), 400, "empty"),
    ("oai huge prompt", OAI, _json({"prompt": "red " * 1500}), 400, "characters"),
    ("v1 huge prompt", V1, _json({"instances": ["a" * 4001]}), 400, "4000"),
    ("oai huge body", OAI, _json({"prompt": "a" * (MAX_BODY + 10)}), 413, "larger"),
    ("v1 huge body", V1, _json({"instances": ["a"] * 50000}), 413, "larger"),
    ("v2 huge body", V2, _v2(_prompt(["a" * 100] * 3000)), 413, "larger"),
    # sizes and formats
    ("oai unknown size", OAI, _json({"prompt": "a", "size": "1024x1024"}), 400, "size"),
    ("oai non-square size", OAI, _json({"prompt": "a", "size": "64x32"}), 400, "size"),
    ("v1 unknown size", V1, _json({"instances": [{"prompt": "a", "size": "banana"}]}), 400, "size"),
    ("oai url format", OAI, _json({"prompt": "a", "response_format": "url"}), 400, "b64_json"),
    ("oai other model", OAI, _json({"prompt": "a", "model": "dall-e-3"}), 404, "model"),
    # unicode junk
    ("oai lone surrogate", OAI, _raw(b'{"prompt": "a red \\ud800 circle"}'), 400, "surrogate"),
    ("v1 lone surrogate", V1, _raw(b'{"instances": ["\\udfff"]}'), 400, "surrogate"),
    ("oai NUL", OAI, _json({"prompt": "a red\u0000circle"}), 400, "NUL"),
    ("oai invalid utf-8 bytes", OAI, _raw(b'{"prompt": "\xff\xfe red"}'), 400, "JSON"),
    ("v1 invalid utf-8 bytes", V1, _raw(b'{"instances": ["\xff\xfe"]}'), 400, ""),
    # unsafe prompts
    ("oai blocklisted", OAI, _json({"prompt": "a NSFW red circle"}), 400, "content_policy_violation"),
    ("oai blocklist dodge", OAI, _json({"prompt": "a n\u200bude figure"}), 400, "prompt.blocklist"),
    ("oai fullwidth dodge", OAI, _json({"prompt": "ｇｏｒｅ everywhere"}), 400, "prompt.blocklist"),
    ("oai e-mail", OAI, _json({"prompt": "a red circle for jane.doe@example.com"}), 400, "prompt.pattern"),
    ("v1 concept", V1, _json({"instances": ["graphic violence and gore"]}), 400, "content_policy_violation"),
    ("v2 concept", V2, _v2(_prompt(["self-harm"])), 400, "prompt.concept"),
    # wrong content type / method / model
    ("v1 text/plain", V1, _raw(b"a red circle", "text/plain"), 415, "JSON"),
    ("oai form data", OAI, {"data": {"prompt": "a red circle"}}, 415, "JSON"),
    ("v2 text/plain", V2, _raw(b"a red circle", "text/plain"), 400, ""),
    ("v1 unknown model", "/v1/models/other:predict", _json({"instances": ["a"]}), 404, "other"),
    # binary V2 tensors that do not add up
    ("v2 binary length prefix past the data", V2, _v2_binary(_bytes_el(b"a red circle", 1000)), 400, "malformed"),
    ("v2 binary trailing bytes", V2, _v2_binary(_bytes_el(b"a red circle") + b"\x00\x00"), 400, "malformed"),
    ("v2 binary invalid utf-8", V2, _v2_binary(_bytes_el(b"\xff\xfe")), 400, "UTF-8"),
    ("v2 binary size past the body", V2, _v2_binary(_bytes_el(b"a red circle"), size=10_000), 400, "binary_data_size"),
    ("v2 binary bytes after the inputs", V2, _v2_binary(_bytes_el(b"a red circle") + b"junk", size=16), 400,
     "binary_data_size"),
    # V2 parameters and outputs this server does not know (V1 and OpenAI refuse unknown fields too)
    ("v2 unknown request parameter", V2, _json({"inputs": [_prompt(["a red circle"])], "parameters": {"steps": 9999}}),
     400, "parameters.steps"),
    ("v2 unknown input parameter", V2, _v2({**_prompt(["a red circle"]), "parameters": {"foo": 1}}), 400, "foo"),
    ("v2 unknown output", V2, _json({"inputs": [_prompt(["a red circle"])], "outputs": [{"name": "nope"}]}),
     400, "nope"),
    # OpenAI's quality and style: its values or null
    ("oai unknown quality", OAI, _json({"prompt": "a red circle", "quality": "ultra"}), 400, "quality"),
    ("oai unknown style", OAI, _json({"prompt": "a red circle", "style": "pastel"}), 400, "style"),
    # longer than the model reads (the tiny tokenizer: 96 positions): refused, never truncated
    ("oai more tokens than the model reads", OAI, _json({"prompt": "a red circle " * 40, "rewrite": False}), 400,
     "at most 94 tokens"),
    ("v1 more tokens than the model reads", V1, _json({"instances": ["a blue square " * 40]}), 400, "tokens"),
    # disguises the normalisation undoes: plurals, accents and other combining marks, dotted card numbers
    ("oai blocklisted plural", OAI, _json({"prompt": "a nudes party"}), 400, "prompt.blocklist"),
    ("oai underscore-joined", OAI, _json({"prompt": "gore_fest"}), 400, "prompt.blocklist"),
    ("oai combining accent", OAI, _json({"prompt": "a nu\u0301de woman"}), 400, "prompt.blocklist"),
    ("oai strike-through", OAI, _json({"prompt": "n\u0336u\u0336d\u0336e\u0336"}), 400, "prompt.blocklist"),
    ("oai dotted card number", OAI, _json({"prompt": "a red circle 4111.1111.1111.1111"}), 400, "prompt.pattern"),
    ("v1 spaced-out concept", V1, _json({"instances": ["explicit  sexual   content"]}), 400, "prompt.concept"),
    # the model repository API: a served model is fixed by its deployment
    ("v2 repository unload", "/v2/repository/models/easel/unload", _json({}), 403, "disabled"),
    ("v2 repository load", "/v2/repository/models/easel/load", _json({}), 403, "disabled"),
    ("v2 repository index", "/v2/repository/index", _json({}), 403, "disabled"),
]


def _error_text(resp: httpx.Response) -> str:
    body = resp.json()          # every error is JSON
    return json.dumps(body)


@pytest.mark.parametrize("name,path,kw,status,word", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_gets_the_right_4xx(server, name, path, kw, status, word):
    r = httpx.post(server.base_url + path, timeout=60, **kw)
    assert r.status_code == status, (name, r.status_code, r.text[:500])
    text = _error_text(r)
    assert word.lower() in text.lower(), (name, text[:500])
    if path == OAI:   # OpenAI's error shape, so openai.APIStatusError carries message and code
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_declared_and_streamed_bodies_over_the_limit(server):
    import socket
    from urllib.parse import urlparse
    # a Content-Length far over the limit is refused before the body is read
    u = urlparse(server.base_url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 999999999\r\n\r\n{{\"instances\": [".encode())
        head = s.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head[:200]
    # a chunked body (no Content-Length) is cut off once it passes the limit
    chunks = (b'{"prompt": "' if i == 0 else b"a" * 10_000 for i in range(40))
    r = httpx.post(server.base_url + OAI, content=chunks, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    chunks = (b'{"instances": ["' if i == 0 else b"a" * 10_000 for i in range(40))
    r = httpx.post(server.base_url + V1, content=chunks, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["code"] == "request_too_large"


def test_the_served_model_cannot_be_unloaded(server):
    """An unload (refused) leaves the model serving and ready on every route."""
    r = httpx.post(f"{server.base_url}/v2/repository/models/{MODEL}/unload", json={}, timeout=10)
    assert r.status_code == 403 and "fixed by its deployment" in r.json()["error"]
    assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=10).status_code == 200
    assert httpx.get(f"{server.base_url}/v2/models/{MODEL}/ready", timeout=10).status_code == 200
    r = httpx.post(server.base_url + V1, json={"instances": [{"prompt": "a red circle", "seed": 1}]}, timeout=120)
    assert r.status_code == 200, r.text[:300]


def test_readiness_follows_the_model(bundle_server):
    """A stopped model (its generator queue closed) is not ready, and says so on every route
    with a 503 rather than a 500."""
    srv = bundle_server
    assert httpx.get(f"{srv.base_url}/v2/health/ready", timeout=10).status_code == 200
    srv.model.stop()
    assert httpx.get(f"{srv.base_url}/v2/health/ready", timeout=10).status_code == 503
    assert httpx.get(f"{srv.base_url}/v2/models/{MODEL}/ready", timeout=10).status_code == 503
    assert httpx.post(srv.base_url + OAI, json={"prompt": "a red circle"}, timeout=60).status_code == 503
    assert httpx.post(srv.base_url + V1, json={"instances": ["a red circle"]}, timeout=60).status_code == 503


@pytest.fixture
def bundle_server(tmp_path_factory):
    srv = start_in_thread(serve_bundle(tmp_path_factory), name=MODEL, config=server_config(tmp_path_factory))
    yield srv
    srv.stop()


def test_json_content_type_with_parameters_or_capitals(server):
    body = json.dumps({"instances": [{"prompt": "a red circle", "seed": 1, "rewrite": False}]})
    for ctype in ("application/json; charset=utf-8", "Application/JSON", "application/json;charset=UTF-8"):
        r = httpx.post(server.base_url + V1, content=body, headers={"content-type": ctype}, timeout=120)
        assert r.status_code == 200, (ctype, r.status_code, r.text[:300])
    r = httpx.post(server.base_url + OAI, content=json.dumps({"prompt": "a red circle", "seed": 1}),
                   headers={"content-type": "Application/JSON; charset=utf-8"}, timeout=120)
    assert r.status_code == 200, r.text[:300]
    r = httpx.post(server.base_url + OAI, content=b"prompt=x", headers={"content-type": "application/jsonp"}, timeout=10)
    assert r.status_code == 415


def test_v2_unknown_output_is_refused_before_generating(server):
    calls = server.model.batcher.calls
    r = httpx.post(server.base_url + V2, timeout=60, json={"inputs": [_prompt(["a red circle"])],
                                                           "outputs": [{"name": "image"}, {"name": "nope"}]})
    assert r.status_code == 400 and "outputs[1].name" in r.json()["error"]
    assert server.model.batcher.calls == calls


def test_v2_accepts_the_parameters_kserve_and_triton_clients_send(server):
    r = httpx.post(server.base_url + V2, timeout=120, json={
        "inputs": [_prompt(["a red circle"])],
        "outputs": [{"name": "seed", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": False}})
    assert r.status_code == 200, r.text[:300]
    assert [o["name"] for o in r.json()["outputs"]] == ["seed"]


def test_v2_metadata_lists_the_tensors(server):
    meta = httpx.get(f"{server.base_url}/v2/models/{MODEL}", timeout=10).json()
    inputs = {t["name"]: t["datatype"] for t in meta["inputs"]}
    outputs = {t["name"]: t["datatype"] for t in meta["outputs"]}
    assert inputs["prompt"] == "BYTES" and {"n", "seed", "size", "rewrite"} <= set(inputs)
    assert outputs["image"] == "BYTES" and {"prompt_index", "clip_score", "withheld", "revised_prompt", "seed",
                                            "rewrite_note"} <= set(outputs)
    # what the metadata lists is what an answer holds
    r = httpx.post(server.base_url + V2, timeout=120, json={"inputs": [_prompt(["a red circle"])]}).json()
    assert {o["name"] for o in r["outputs"]} == set(outputs)


def test_get_on_a_post_route_and_unknown_paths(server):
    assert httpx.get(server.base_url + OAI, timeout=10).status_code == 405
    assert httpx.get(server.base_url + "/v1/nothing", timeout=10).status_code == 404


def test_server_is_healthy_after_the_hostile_suite(server):
    from prometheus_client.parser import text_string_to_metric_families
    assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=10).status_code == 200
    assert httpx.get(f"{server.base_url}/v1/models/{MODEL}", timeout=10).json()["ready"] is True
    r = httpx.post(server.base_url + OAI, json={"prompt": "a red circle", "seed": 1}, timeout=120)
    assert r.status_code == 200 and r.json()["data"][0]["b64_json"]
    # nothing the clients sent produced a 5xx, and the refusals were counted by policy
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(server.base_url + "/metrics").text)}
    statuses = [s.labels["status"] for s in fams["easel_requests"].samples if s.name == "easel_requests_total"]
    assert statuses and not any(st.startswith("5") for st in statuses), statuses
    policies = {s.labels["policy"] for s in fams["easel_refusals"].samples if s.name == "easel_refusals_total"}
    assert {"prompt.blocklist", "prompt.pattern", "prompt.concept"} <= policies


def test_a_drawn_seed_is_accepted_and_reported(server):
    """What a KServe transformer forwards for an unseeded request: its drawn seed, marked so the
    predictor may merge it with others; the answer reports that seed."""
    r = httpx.post(server.base_url + V1, timeout=120,
                   json={"instances": [{"prompt": "a red circle", "seed": 7, "seed_drawn": True}]})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["predictions"][0]["seed"] == 7
    v2 = httpx.post(server.base_url + V2, timeout=120, json={"inputs": [
        _prompt(["a red circle"]), {"name": "seed", "shape": [1], "datatype": "INT64", "data": [7]},
        {"name": "seed_drawn", "shape": [1], "datatype": "BOOL", "data": [True]}]})
    assert v2.status_code == 200, v2.text[:300]
