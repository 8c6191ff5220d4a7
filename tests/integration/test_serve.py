"""The Easel model server with real clients on 127.0.0.1: the official `openai` client, KServe's
InferenceRESTClient (V1 and V2) and plain HTTP; C2PA provenance on every image; dynamic
batching (the batch-size metric) with seeded results equal to unbatched ones; 503 when the queue
is full; a transformer in front of a generate-only predictor on two ports; a model served from
the MLflow registry (models:/NAME/VERSION) whose images name that version.

One tiny untrained unCLIP bundle (1 prior step, 1 decoder step, no upsampler: 32x32 noise) is
built per session and shared with test_serve_hostile.py."""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import os
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from model_code.serve import batching, provenance
from model_code.serve.config import serve_config
from model_code.serve.rewrite import preserves
from model_code.registry.resolve import resolve_model
from model_code.serve.server import start_in_thread

MODEL = "easel"
# KServe's own V1 endpoint returns FastAPI's deprecated ORJSONResponse
pytestmark = pytest.mark.filterwarnings("ignore:ORJSONResponse is deprecated")
SAMPLING = dict(prior_steps=1, decoder_steps=1, upsample=False, candidates=2)


# ---------------------------------------------------------------- shared fixtures
def serve_bundle(tmp_path_factory) -> str:
    """The session's tiny unCLIP bundle (built once, found on disk by later modules)."""
    from tests.bundles import tiny_bundle
    root = tmp_path_factory.getbasetemp() / "serve-shared"
    bundle = root / "bundle-unclip"
    if not (bundle / "bundle.json").is_file():
        # eps prediction: one untrained decoder step leaves 32x32 noise, which the untrained CLIP's
        # auto-calibrated image safety lets through; an x0 decoder's one-step draft is a flat smear
        # that it may withhold (the withholding itself is tested below, on purpose)
        tiny_bundle(str(root), "unclip", overrides={"decoder": {"prediction_type": "epsilon"}}, **SAMPLING)
    return str(bundle)


def server_config(tmp_path_factory, **over) -> dict:
    cfg = {"torch_threads": 1, "batch_window_ms": 50.0,
           "provenance": {"dev_dir": str(tmp_path_factory.getbasetemp() / "serve-shared" / "c2pa")}}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return serve_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    srv = start_in_thread(bundle, name=MODEL, config=server_config(tmp_path_factory))
    yield srv
    srv.stop()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def metric(base_url: str, name: str, labels: dict | None = None) -> float:
    """One sample's value from /metrics (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families
    text = httpx.get(base_url + "/metrics", timeout=30).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return s.value
    return 0.0


def tamper_pixel_byte(png: bytes) -> bytes:
    """Flip one byte of the compressed pixel data (inside the first IDAT chunk)."""
    i = png.index(b"IDAT") + 4 + 10
    out = bytearray(png)
    out[i] ^= 0x01
    return bytes(out)


# ---------------------------------------------------------------- real clients
def test_openai_client_images_are_signed(server):
    import openai
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    prompt = "a red circle to the left of a blue square"
    r = client.images.generate(model=MODEL, prompt=prompt, n=2, size="64x64", response_format="b64_json",
                               extra_body={"seed": 11})
    assert len(r.data) == 2
    revised = r.data[0].revised_prompt
    assert revised != prompt and preserves(prompt, revised)      # DALL-E 3 style rewrite, constraints kept
    for item in r.data:
        png = base64.b64decode(item.b64_json)
        assert Image.open(io.BytesIO(png)).size == (64, 64)      # bundle makes 32 px; resized as asked
        v = provenance.verify(png)
        assert v["valid"], v
        gen = provenance.generation_assertion(v["manifest"])
        assert gen["model"] == MODEL and gen["dataset_version"] == "test" and gen["seed"] == 11
        assert gen["prompt_sha256"] == provenance.sha256_hex(prompt)
        actions = [a for a in v["manifest"]["assertions"] if a["label"].startswith("c2pa.actions")]
        assert actions[0]["data"]["actions"][0]["digitalSourceType"] == provenance.TRAINED_ALGORITHMIC_MEDIA
        tampered = provenance.verify(tamper_pixel_byte(png))
        assert not tampered["valid"] and tampered["state"] == "Invalid"
    # opting out of the rewrite keeps the prompt; same seed, different prompt -> the rewrite differs
    kept = client.images.generate(model=MODEL, prompt=prompt, response_format="b64_json",
                                  extra_body={"seed": 11, "rewrite": False})
    assert kept.data[0].revised_prompt == prompt
    header = client.images.generate(model=MODEL, prompt=prompt, response_format="b64_json",
                                    extra_headers={"x-easel-rewrite": "false"})
    assert header.data[0].revised_prompt == prompt
    # a refused prompt surfaces as openai.BadRequestError with OpenAI's code
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model=MODEL, prompt="a naked red circle", response_format="b64_json")
    assert e.value.code == "content_policy_violation" and "prompt.blocklist" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model=MODEL, prompt="a red circle", response_format="url")
    assert e.value.param == "response_format"


def test_kserve_client_v1_and_v2(server):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run():
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        try:
            r1 = await v1.infer(server.base_url, {"instances": [{"prompt": "a green star", "n": 1, "seed": 3},
                                                               "two yellow crosses", "a teal star"]},
                                model_name=MODEL)
            out = {}
            for binary in (False, True):
                prompt = InferInput("prompt", [2], "BYTES")
                prompt.set_data_from_numpy(np.array(["a green star", "a black square"], dtype=object),
                                           binary_data=binary)
                n = InferInput("n", [1], "INT32")
                n.set_data_from_numpy(np.array([2], dtype=np.int32), binary_data=binary)
                seed = InferInput("seed", [1], "INT64")
                seed.set_data_from_numpy(np.array([3], dtype=np.int64), binary_data=binary)
                out[binary] = await v2.infer(server.base_url, InferRequest(MODEL, [prompt, n, seed], request_id="r-1"),
                                             model_name=MODEL)
            return r1, out
        finally:
            await v1.close()
            await v2.close()

    r1, out = asyncio.run(run())
    preds = r1["predictions"]
    assert [len(p["images"]) for p in preds] == [1, 1, 1] and preds[0]["seed"] == 3
    assert preds[1]["prompt"] == "two yellow crosses" and isinstance(preds[1]["seed"], int)
    # a colour the world has no word for: the prompt goes to the model as written, and the answer says why
    assert "rewrite_note" not in preds[0] and preds[0]["revised_prompt"] != "a green star"
    assert preds[2]["revised_prompt"] == "a teal star" and "teal" in preds[2]["rewrite_note"]
    assert provenance.verify(base64.b64decode(preds[0]["images"][0]["b64_json"]))["valid"]
    for res in out.values():
        outs = {o.name: o for o in res.outputs}
        images = list(outs["image"].data)
        assert len(images) == 4 and list(outs["prompt_index"].data) == [0, 0, 1, 1]
        assert list(outs["seed"].data) == [3, 3] and len(outs["revised_prompt"].data) == 2
        assert all(provenance.verify(base64.b64decode(b))["valid"] for b in images)
    # JSON and binary tensors carry the same request: same seed -> same pixels
    a, b = (list({o.name: o for o in out[k].outputs}["image"].data) for k in (False, True))
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))


def test_seeded_requests_match_unbatched_generation(server):
    """A seeded request, sent among unseeded ones that get batched, gives exactly the images an
    in-process Generator.generate call gives for its prompt and seed."""
    seeded = {"prompt": "a purple triangle in the center", "n": 2, "seed": 42, "rewrite": False}
    url = f"{server.base_url}/v1/models/{MODEL}:predict"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(httpx.post, url, json={"instances": [seeded]}, timeout=120)]
        # unseeded prompts in the world's words: the tiny test CLIP's auto-calibrated concept
        # threshold is fitted to such prompts, and "a red circle 3" once landed above it
        futs += [pool.submit(httpx.post, url, json={"instances": [{"prompt": f"a {c} circle"}]}, timeout=120)
                 for c in ("red", "blue", "green", "yellow")]
        answers = [f.result() for f in futs]
    assert all(a.status_code == 200 for a in answers), [(a.status_code, a.text[-300:]) for a in answers if a.status_code != 200]
    gen = server.model.generator.generate([seeded["prompt"]], n=2, seed=42)[0]
    got = [pixels(it["b64_json"]) for it in answers[0].json()["predictions"][0]["images"]]
    want = [np.asarray(im) for im in gen.images]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_concurrent_requests_are_batched(server, monkeypatch):
    # a wide window: on a loaded machine the clients' requests may trickle in
    monkeypatch.setattr(server.model.batcher, "window_s", 0.5)
    url = f"{server.base_url}/v1/models/{MODEL}:predict"
    calls0 = server.model.batcher.calls
    merged0 = metric(server.base_url, "easel_batch_requests_sum")
    k = 6
    with concurrent.futures.ThreadPoolExecutor(k) as pool:
        answers = list(pool.map(lambda c: httpx.post(url, json={"instances": [{"prompt": f"a {c} star"}]},
                                                     timeout=120),
                                ("red", "orange", "yellow", "green", "blue", "purple")))
    assert all(a.status_code == 200 for a in answers), [a.text[-300:] for a in answers if a.status_code != 200]
    calls = server.model.batcher.calls - calls0
    merged = metric(server.base_url, "easel_batch_requests_sum") - merged0
    assert merged == k and calls < k, (calls, merged)       # k requests in fewer generate calls
    assert metric(server.base_url, "easel_batch_prompts_bucket", {"le": "1.0"}) < \
        metric(server.base_url, "easel_batch_prompts_count")  # some call carried > 1 prompt


def test_queue_full_answers_503_and_recovers(bundle, tmp_path_factory):
    # one waiting request fills the queue; the batch window holds it there for 2.5 s
    srv = start_in_thread(bundle, name=MODEL, config=server_config(tmp_path_factory, queue_size=1, max_instances=1,
                                                                   batch_window_ms=2500.0))
    try:
        url = f"{srv.base_url}/v1/models/{MODEL}:predict"
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, url, json={"instances": ["a red circle"]}, timeout=120)
            while srv.model.batcher.depth == 0:    # the first request is queued
                assert not first.done(), first.result().text
                time.sleep(0.005)
            second = httpx.post(srv.base_url + "/v1/images/generations", json={"prompt": "a red circle"}, timeout=60)
            assert second.status_code == 503
            err = second.json()["error"]
            assert err["code"] == "server_busy" and "queue is full" in err["message"]
            assert first.result().status_code == 200
        assert metric(srv.base_url, "easel_queue_rejections_total") == 1
        assert httpx.post(url, json={"instances": ["a red circle"]}, timeout=120).status_code == 200
    finally:
        srv.stop()


def test_the_reported_seed_of_an_unseeded_request_reproduces_it(server):
    """The server draws the seed before rewriting: sending the reported seed back gives the same
    revised prompt and the same pixels (on an idle server the request ran alone)."""
    url = f"{server.base_url}/v1/models/{MODEL}:predict"
    first = httpx.post(url, json={"instances": [{"prompt": "two yellow crosses", "n": 2}]}, timeout=120).json()
    p = first["predictions"][0]
    again = httpx.post(url, json={"instances": [{"prompt": "two yellow crosses", "n": 2, "seed": p["seed"]}]},
                       timeout=120).json()["predictions"][0]
    assert again["seed"] == p["seed"] and again["revised_prompt"] == p["revised_prompt"] != "two yellow crosses"
    assert all(np.array_equal(pixels(a["b64_json"]), pixels(b["b64_json"])) for a, b in zip(p["images"], again["images"]))


def test_a_rewrite_longer_than_the_model_reads_is_not_used(server, monkeypatch):
    """The prompt limit is the generator's (generate.TextLimit): a rewrite over it leaves the
    prompt as written, with a note on every protocol; a prompt over it is a 400 naming both counts."""
    from model_code.generate import TextLimit
    tok = server.model.generator.tokenizer
    monkeypatch.setattr(server.model, "text_limit", TextLimit(tok, 12))    # 10 prompt tokens
    prompt = "two yellow crosses"
    assert tok.count_tokens(prompt) <= 10
    v1 = httpx.post(f"{server.base_url}/v1/models/{MODEL}:predict", json={"instances": [prompt]}, timeout=120).json()
    p = v1["predictions"][0]
    assert p["revised_prompt"] == prompt and "at most 10 tokens" in p["rewrite_note"]
    oai = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": prompt}, timeout=120).json()
    assert oai["data"][0]["revised_prompt"] == prompt and "at most 10 tokens" in oai["data"][0]["rewrite_note"]
    v2 = httpx.post(f"{server.base_url}/v2/models/{MODEL}/infer", timeout=120, json={
        "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": [prompt]}]}).json()
    outs = {o["name"]: o["data"] for o in v2["outputs"]}
    assert outs["revised_prompt"] == [prompt] and "at most 10 tokens" in outs["rewrite_note"][0]
    long = "a red circle and a blue square and a green star"
    k = tok.count_tokens(long)
    assert k > 10
    r = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": long}, timeout=60)
    assert r.status_code == 400 and f"is {k} tokens long" in r.json()["error"]["message"]
    assert "at most 10 tokens" in r.json()["error"]["message"] and r.json()["error"]["param"] == "prompt"


def test_the_limit_of_a_dalle_generator_is_its_transformer_text_length(tmp_path_factory):
    """DALL-E's transformer reads text_len positions (fewer than the tokenizer's): that is the
    limit its server and a transformer role in front of it enforce, read from the bundle alone."""
    from model_code.generate import Generator, bundle_text_limit
    from tests.bundles import tiny_bundle
    root = tmp_path_factory.mktemp("dalle-limit")
    path = tiny_bundle(str(root), "dalle", overrides={"transformer": {"text_len": 24}}, candidates=1)
    gen = Generator.load(path)
    assert gen.text_limit.positions == 24 and gen.text_limit.max_tokens == 22
    assert bundle_text_limit(path, gen.tokenizer).positions == 24
    assert gen.encode_text(["a red circle"])[0].shape[1] == 24
    assert gen.text_limit.refusal("a red circle") is None and "at most 22 tokens" in gen.text_limit.refusal("red " * 30)


def test_a_request_refused_by_a_full_queue_leaves_nothing_queued(bundle, tmp_path_factory):
    """A request of several prompts is queued whole or not at all: a 503 leaves none of its
    prompts waiting or generating."""
    srv = start_in_thread(bundle, name=MODEL, config=server_config(tmp_path_factory, queue_size=2, max_instances=2,
                                                                   batch_window_ms=2500.0))
    try:
        url = f"{srv.base_url}/v1/models/{MODEL}:predict"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, url, json={"instances": ["a red circle"]}, timeout=120)
            while srv.model.batcher.depth == 0:
                assert not first.done(), first.result().text
                time.sleep(0.005)
            # two seeded prompts (each would run alone): one place is left
            r = httpx.post(url, json={"instances": [{"prompt": "a blue square", "seed": 1},
                                                    {"prompt": "a green star", "seed": 2}]}, timeout=60)
            assert r.status_code == 503 and "needs 2 places" in r.json()["error"]
            assert srv.model.batcher.depth == 1
            assert first.result().status_code == 200
        time.sleep(0.3)
        assert srv.model.batcher.calls == 1 and srv.model.batcher.depth == 0
    finally:
        srv.stop()


def test_transformer_in_front_of_generate_only_predictor(bundle, tmp_path_factory):
    cfg = server_config(tmp_path_factory)
    pred = start_in_thread(bundle, name=MODEL, config=cfg, generate_only=True)
    trans = start_in_thread(bundle, name=MODEL, config=cfg, role="transformer",
                            predictor_host=pred.base_url.removeprefix("http://"))
    try:
        import openai
        client = openai.OpenAI(base_url=trans.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.images.generate(model=MODEL, prompt="two orange squares", n=2, response_format="b64_json",
                                   extra_body={"seed": 5})
        assert len(r.data) == 2 and preserves("two orange squares", r.data[0].revised_prompt)
        for item in r.data:   # signed by the transformer
            assert provenance.verify(base64.b64decode(item.b64_json))["valid"]
        # the predictor alone only generates: no rewrite, no signature
        raw = httpx.post(f"{pred.base_url}/v1/models/{MODEL}:predict",
                         json={"instances": [{"prompt": "two orange squares", "seed": 5}]}, timeout=120).json()
        p = raw["predictions"][0]
        assert p["revised_prompt"] == "two orange squares"
        assert provenance.verify(base64.b64decode(p["images"][0]["b64_json"]))["state"] == "NoManifest"
        # the transformer forwarded the rewritten prompt: the same seed gives the same pixels
        direct = httpx.post(f"{pred.base_url}/v1/models/{MODEL}:predict",
                            json={"instances": [{"prompt": r.data[0].revised_prompt, "n": 2, "seed": 5}]},
                            timeout=120).json()["predictions"][0]["images"]
        assert all(np.array_equal(pixels(a.b64_json), pixels(b["b64_json"])) for a, b in zip(r.data, direct))
        # V2 to the transformer (it forwards over V1 and answers in V2)
        v2 = httpx.post(f"{trans.base_url}/v2/models/{MODEL}/infer", timeout=120, json={
            "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a cyan cross"]}]}).json()
        assert {o["name"]: o for o in v2["outputs"]}["image"]["shape"] == [1]
        # a refused prompt never reaches the predictor
        before = metric(pred.base_url, "easel_requests_total", {"route": "v1", "status": "200"})
        bad = httpx.post(f"{trans.base_url}/v1/models/{MODEL}:predict",
                         json={"instances": ["explicit sexual content"]}, timeout=60)
        assert bad.status_code == 400 and bad.json()["code"] == "content_policy_violation"
        assert "prompt.concept" in bad.json()["error"]
        assert metric(pred.base_url, "easel_requests_total", {"route": "v1", "status": "200"}) == before
        # a client error found by the predictor comes back as the same 4xx through the transformer
        # (the transformer validated n against the same limits: ask the predictor directly)
        assert httpx.post(f"{pred.base_url}/v1/models/{MODEL}:predict", json={"instances": [{"prompt": "x", "n": 99}]},
                          timeout=30).status_code == 400
        # the same split with the transformer -> predictor hop over V2 (JSON tensors): one
        # prompt seeded and sized, one not
        trans2 = start_in_thread(bundle, name=MODEL, config=cfg, role="transformer", predictor_protocol="v2",
                                 predictor_host=pred.base_url.removeprefix("http://"))
        try:
            r2 = httpx.post(f"{trans2.base_url}/v1/models/{MODEL}:predict", timeout=120, json={
                "instances": [{"prompt": "two orange squares", "n": 2, "seed": 5, "size": "64x64"},
                              {"prompt": "a cyan cross", "n": 2}]})
            assert r2.status_code == 200, r2.text
            p1, p2 = r2.json()["predictions"]
            assert (p1["seed"], p1["size"], p2["size"]) == (5, "64x64", "32x32")
            assert p1["revised_prompt"] == r.data[0].revised_prompt     # same rewrite, same seed...
            got = [pixels(it["b64_json"]) for it in p1["images"]]          # ...same pixels (64 px here)
            want = [np.asarray(Image.open(io.BytesIO(base64.b64decode(a.b64_json))).convert("RGB").resize(
                (64, 64), Image.BICUBIC)) for a in r.data]
            assert all(np.array_equal(g, w) for g, w in zip(got, want))
            assert all(provenance.verify(base64.b64decode(it["b64_json"]))["valid"] for it in p2["images"])
        finally:
            trans2.stop()
    finally:
        trans.stop()
        pred.stop()


def test_image_safety_withholds_flagged_images(server, monkeypatch):
    """An image too close to an unsafe concept keeps its place, without pixels, with the reason."""
    safety = server.model.safety
    monkeypatch.setattr(safety, "image_threshold", -1.0)     # every image is "too close"
    before = metric(server.base_url, "easel_withheld_total", {"policy": "image.concept"})
    r = httpx.post(server.base_url + "/v1/images/generations", json={"prompt": "a red circle", "n": 2},
                   timeout=120).json()
    assert [d["b64_json"] for d in r["data"]] == [None, None]
    assert all(d["withheld"]["policy"] == "image.concept" and "unsafe concept" in d["withheld"]["reason"]
               for d in r["data"])
    assert metric(server.base_url, "easel_withheld_total", {"policy": "image.concept"}) == before + 2


def test_model_from_the_registry_names_its_version(bundle, tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("serve-registry")
    monkeypatch.setenv("EASEL_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    from model_code.registry import register_bundle
    from model_code.registry.registry import GateError, record_gate
    from model_code.serve.model import EaselModel
    v = register_bundle(bundle, "easel-serve-test", {"dataset_version": "dvc-serve-1", "git_revision": "abc"})
    # no gate record yet: refused, unless --allow-ungated, which the model's info then says
    with pytest.raises(GateError, match=f"easel-serve-test version {v['version']} has no passed gate"):
        resolve_model(v["uri"])
    m = EaselModel(MODEL, v["uri"], config={**server_config(tmp_path_factory), "allow_ungated": True})
    m.load()
    assert m.info["gate"].startswith("UNGATED")
    m.stop()
    ungated = start_in_thread(v["uri"], name=MODEL, config={**server_config(tmp_path_factory), "allow_ungated": True})
    try:   # every image it serves carries the fact in its C2PA manifest
        r = httpx.post(ungated.base_url + "/v1/images/generations", json={"prompt": "a red circle", "seed": 1},
                       timeout=120).json()
        gen = provenance.generation_assertion(provenance.verify(base64.b64decode(r["data"][0]["b64_json"]))["manifest"])
        assert gen["gate"].startswith("UNGATED")
    finally:
        ungated.stop()
    record_gate("easel-serve-test", v["version"], {"verdict": "passed", "inputs": {}, "metrics": {},
                                                   "thresholds": {}, "reasons": []})
    srv = start_in_thread(v["uri"], name=MODEL, config=server_config(tmp_path_factory))
    try:
        r = httpx.post(srv.base_url + "/v1/images/generations", json={"prompt": "a red circle", "seed": 1},
                       timeout=120).json()
        assert r["model"] == "easel-serve-test" and r["model_version"] == v["version"]
        gen = provenance.generation_assertion(provenance.verify(base64.b64decode(r["data"][0]["b64_json"]))["manifest"])
        assert gen["model_version"] == v["version"] and gen["dataset_version"] == "dvc-serve-1"
        assert gen["gate"] == "passed"
    finally:
        srv.stop()
    # KServe's storage initializer copies a model's files to /mnt/models: there the MLflow model
    # directory (MLmodel + artifacts/) is found through its MLmodel
    import mlflow
    mnt = mlflow.artifacts.download_artifacts(artifact_uri=v["uri"], dst_path=str(home / "mnt-models"))
    found = resolve_model(mnt).bundle
    assert os.path.isfile(os.path.join(found, "bundle.json")) and os.path.dirname(found).endswith("artifacts")


def test_model_from_an_s3_prefix(bundle, s3_env, tmp_path_factory):
    from model_code import storage
    from model_code.serve.model import EaselModel
    base = s3_env.bucket("easel-serve") + "/models"
    storage.put_dir(bundle, base + "/direct")                          # bundle.json right there
    storage.put_dir(bundle, base + "/nested/artifacts/bundle-unclip")  # a bundle one level down
    for uri, downloaded in ((base + "/direct", False), (base + "/nested", True)):
        m = EaselModel(MODEL, uri, config=server_config(tmp_path_factory))
        m.load()
        try:
            assert m.ready and m.generator.image_size == 32 and m.info["dataset_version"] == "test"
            # a bundle at the prefix is read in place; otherwise the prefix is downloaded and searched
            assert storage.is_remote(m.resolved.bundle) != downloaded
            (gen,), seed = asyncio.run(m.batcher.submit(["a red circle"], 1, None, 3))
            assert seed == 3 and gen.images[0].size == (32, 32)
        finally:
            m.stop()


# ---------------------------------------------------------------- pieces without a server
def test_batcher_merges_unseeded_and_runs_seeded_alone():
    calls = []

    def generate(prompts, n, candidates, seed, **settings):
        calls.append((list(prompts), seed))
        return [f"{p}|{seed}" for p in prompts]

    async def run():
        b = batching.Batcher(generate, max_batch=8, window_s=0.05, queue_size=16)
        jobs = [b.submit([f"p{i}"], 1) for i in range(4)] + [b.submit(["s"], 1, seed=7), b.submit(["t"], 2)]
        out = await asyncio.gather(*jobs)
        b.close()
        return out

    out = asyncio.run(run())
    assert [r for r, _ in out][:4] == [[f"p{i}|{out[0][1]}"] for i in range(4)]   # one merged call
    assert out[4] == (["s|7"], 7)                                                    # alone, its seed
    assert sorted(len(p) for p, _ in calls) == [1, 1, 4]    # n=2 is another setting: its own call
    assert ([("s",)] == [tuple(p) for p, s in calls if s == 7])


def test_batcher_queue_full():
    async def run():
        b = batching.Batcher(lambda p, *a, **k: list(p), max_batch=4, window_s=1.0, queue_size=2)
        first = [asyncio.ensure_future(b.submit(["a"], 1)), asyncio.ensure_future(b.submit(["b"], 2))]
        await asyncio.sleep(0.01)
        with pytest.raises(batching.QueueFull, match="queue is full"):
            await b.submit(["c"], 3)
        done = await asyncio.gather(*first)
        b.close()
        return done

    assert [r for r, _ in asyncio.run(run())] == [["a"], ["b"]]


def test_serve_config_layers_and_errors(monkeypatch, tmp_path):
    cfg = serve_config("tiny", overrides={"max_n": 2})
    assert cfg["max_n"] == 2 and cfg["rewrite"]["enabled"] is True
    monkeypatch.setenv("EASEL_SERVE_MAX_N", "3")
    f = tmp_path / "serve.yaml"
    f.write_text("serve:\n  queue_size: 5\n  max_instances: 4\n  safety: {blocklist: [forbidden]}\n")
    monkeypatch.setenv("EASEL_SERVE_CONFIG", str(f))
    cfg = serve_config("tiny")
    assert (cfg["max_n"], cfg["queue_size"], cfg["safety"]["blocklist"]) == (3, 5, ["forbidden"])
    for bad, field in [({"max_n": 0}, "serve.max_n"), ({"sizes": ["64x32"]}, "size"),
                       ({"safety": {"patterns": ["("]}}, "patterns[0]"), ({"typo": 1}, "typo"),
                       ({"provenance": {"cert_chain": "/nope.pem", "key": "/nope.key"}}, "cert_chain"),
                       ({"provenance": {"cert_chain": "/nope.pem"}}, "set both"),
                       ({"max_instances": 32, "queue_size": 8}, "serve.max_instances .32. is larger than serve.queue_size"),
                       ({"rewrite": {"url": "http://x"}}, "rewrite.model")]:
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            serve_config("tiny", overrides=bad)


def test_serve_settings_come_from_the_bundle_not_the_preset_file(tmp_path):
    """A bundle keeps the resolved configuration it was built with: serving reads its serve:
    section even when the preset it names is unknown to this installation; an unknown preset
    name with no section of its own is an error naming the known presets."""
    from model_code.config import ConfigError
    from model_code.serve.model import EaselModel
    with pytest.raises(ConfigError, match="unknown preset 'my-own'.*tiny"):
        serve_config("my-own")
    cfg = serve_config("my-own", section={"max_n": 3}, env={})
    assert cfg["max_n"] == 3
    m = EaselModel(MODEL, "", config={"torch_threads": 1})
    assert m._make_config({"preset": "my-own", "config": {"serve": {"max_n": 2}}})["max_n"] == 2
    assert m._make_config({"preset": "tiny"})["max_n"] == serve_config("tiny")["max_n"]  # older bundles
    with pytest.raises(ValueError, match="serve: unknown setting"):
        from model_code.generate import save_bundle
        save_bundle(str(tmp_path / "b"), "dalle", {}, config={"serve": {"typo": 1}})


def test_cli_serve_accepts_kserve_argument_spellings():
    from easel.cli import build_parser
    a = build_parser().parse_args(["serve", "--model", "/mnt/models", "--role", "transformer",
                                   "--model_name", "m", "--predictor_host", "pred:80", "--http_port", "9000",
                                   "--workers", "1"])
    assert (a.model, a.name, a.predictor_host, a.port, a.role, a.host) == \
        ("/mnt/models", "m", "pred:80", 9000, "transformer", "127.0.0.1")
    assert build_parser().parse_args(["serve"]).model.startswith("models:/")




def test_an_unwritable_home_without_a_certificate_fails_with_one_clear_line(bundle, tmp_path):
    """The serving chart's read-only root file system: no signing certificate and nowhere to write
    a development chain is one line naming both fixes, not a traceback; a writable
    EASEL_C2PA_DEV_DIR (the chart's devChain emptyDir) or a certificate makes it start."""
    import subprocess
    import sys
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_C2PA")}
    env.update({"HOME": str(blocker / "home"), "EASEL_HOME": str(blocker / "easel"),
                "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))})
    r = subprocess.run([sys.executable, "-m", "easel.cli", "serve", "--model", bundle, "--host", "127.0.0.1",
                        "--port", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("easel: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "EASEL_C2PA_CERT_CHAIN" in lines[0] and "provenance.secretName" in lines[0]
    assert "EASEL_C2PA_DEV_DIR" in lines[0] and "provenance.devChain=true" in lines[0]
    # the chart's devChain: a writable directory of its own for the chain, the home still read-only
    from model_code.serve.model import EaselModel
    old = {k: os.environ.get(k) for k in ("HOME", "EASEL_HOME", "EASEL_C2PA_DEV_DIR")}
    os.environ.update({"HOME": env["HOME"], "EASEL_HOME": env["EASEL_HOME"],
                       "EASEL_C2PA_DEV_DIR": str(tmp_path / "c2pa-dev")})
    try:
        m = EaselModel(MODEL, bundle, config={"torch_threads": 1})
        assert m.load() and m.signer is not None
        m.stop()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert (tmp_path / "c2pa-dev" / "chain.pem").is_file()
