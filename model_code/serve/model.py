"""The KServe models: `EaselModel` (the predictor) and `EaselTransformer` (safety, rewriting and
provenance in front of a predictor that only generates).

The request path (DESIGN.md, "serve"):
    validate -> prompt safety -> rewrite -> generate `candidates` and keep the n CLIP likes best
    (Generator.generate) -> resize to the requested size -> image safety -> C2PA-signed PNG

KServe's hooks carry it: preprocess (validate, safety, rewrite), predict (generate, through the
dynamic batcher), postprocess (image safety, provenance, the protocol's response). A standalone
predictor (`easel serve`) runs all three. Split in two (`--role transformer` in front of
`--role predictor --generate-only`), the transformer runs preprocess and postprocess and
forwards the checked, rewritten prompts to the predictor, which only generates.

Wire formats
  V1  POST /v1/models/NAME:predict
      {"instances": [{"prompt": str, "n": 1, "seed": int?, "size": "64x64"?, "rewrite": true?}]}
      (an instance may also be a bare prompt string)
   -> {"predictions": [{"prompt", "revised_prompt", "seed", "size",
                        "images": [{"b64_json", "clip_score"} |
                                   {"b64_json": null, "clip_score", "withheld": {"policy", "reason"}}]}],
       "model": {"name", "version", "recipe", "dataset_version"}}
  V2  POST /v2/models/NAME/infer, inputs: "prompt" BYTES [B] (required); "n", "seed" INT* and
      "size" BYTES ("" = the default) and "rewrite" BOOL, each [1] (all prompts) or [B]
   -> outputs: "image" BYTES [I] (base64 PNG, "" when withheld), "prompt_index" INT32 [I],
      "clip_score" FP32 [I], "withheld" BYTES [I] ("" or "policy: reason"),
      "revised_prompt" BYTES [B], "seed" INT64 [B]
  The OpenAI route (openai_route.py) runs the same path through the V1 format.

Withheld images keep their place in the answer, with no image and the policy and reason, so a
client always sees n entries per prompt and knows why one is missing.

Seeds: a request's seed makes its images reproducible (seeded requests are generated alone, see
batching.py); without one the server draws a seed and reports it ("seed" in the answer).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import glob
import io
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from PIL import Image

from model_code import storage
from model_code.serve import batching, provenance, rewrite as rewrite_mod
from model_code.serve.config import parse_size, serve_config
from model_code.serve.safety import ClipEmbedder, Safety

log = logging.getLogger(__name__)

INSTANCE_KEYS = ("prompt", "n", "seed", "size", "rewrite")
REWRITE_HEADER = "x-easel-rewrite"          # "false" / "0" / "off": keep the prompt as given
MODEL_MOUNT = "/mnt/models"                 # where KServe's storage initializer puts storageUri


# ---------------------------------------------------------------- errors a client can cause
class ServeError(Exception):
    """A request that cannot be served, with the HTTP status and OpenAI-style code/param.
    server.py renders it (KServe's {"error": ...} shape, or OpenAI's on the OpenAI route)."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", param: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")


def bad_request(param: str, message: str) -> ServeError:
    return ServeError(400, f"{param}: {message}" if param else message, "invalid_request", param or None)


# ---------------------------------------------------------------- request / result records
@dataclass
class ImageRequest:
    """One prompt's request after validation."""
    prompt: str
    n: int = 1
    seed: int | None = None
    size: int | None = None          # side in pixels; None = the predictor's default
    rewrite: bool = True
    revised_prompt: str | None = None
    rewrite_source: str = ""

    @property
    def generation_prompt(self) -> str:
        return self.revised_prompt or self.prompt

    def wire(self) -> dict:
        """The instance a transformer sends to a generate-only predictor."""
        d = {"prompt": self.generation_prompt, "n": self.n, "rewrite": False}
        if self.seed is not None:
            d["seed"] = self.seed
        if self.size is not None:
            d["size"] = f"{self.size}x{self.size}"
        return d


@dataclass
class ImageOut:
    image: Image.Image | None        # None once withheld
    clip_score: float | None
    png: bytes | None = None         # encoded (and signed) PNG
    withheld: dict | None = None     # {"policy", "reason"}


@dataclass
class ImageResult:
    request: ImageRequest
    images: list[ImageOut]
    seed: int | None
    size: int


@dataclass
class _State:
    """What preprocess learns that postprocess needs (same request, same task)."""
    protocol: str                     # "v1" | "v2"
    requests: list[ImageRequest]
    request_id: str | None = None
    requested_outputs: Any = None
    binary_outputs: bool = False


_STATE: contextvars.ContextVar[_State | None] = contextvars.ContextVar("easel_request", default=None)


# ---------------------------------------------------------------- validation
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_prompt(prompt, cfg: dict, param: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise bad_request(param, f"must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise bad_request(param, "must not be empty")
    if len(prompt) > cfg["max_prompt_chars"]:
        raise bad_request(param, f"is {len(prompt)} characters long; the limit is {cfg['max_prompt_chars']}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(param, "is not valid Unicode (it contains an unpaired surrogate)") from None
    if "\x00" in prompt:
        raise bad_request(param, "must not contain NUL characters")
    return prompt


def check_n(n, cfg: dict, param: str = "n") -> int:
    if n is None:
        return 1
    if not _is_int(n):
        raise bad_request(param, f"must be an integer, got {n!r}"[:200])
    if not 1 <= n <= cfg["max_n"]:
        raise bad_request(param, f"must be between 1 and {cfg['max_n']}, got {n}")
    return int(n)


def check_seed(seed, cfg: dict, param: str = "seed") -> int | None:
    if seed is None:
        return None
    if not _is_int(seed):
        raise bad_request(param, f"must be an integer, got {seed!r}"[:200])
    if not 0 <= seed <= cfg["seed_max"]:
        raise bad_request(param, f"must be between 0 and {cfg['seed_max']}, got {seed}")
    return int(seed)


def check_size(size, cfg: dict, param: str = "size") -> int | None:
    if size is None:
        return None
    if not isinstance(size, str) or size not in cfg["sizes"]:
        raise bad_request(param, f"must be one of {', '.join(cfg['sizes'])}, got {size!r}"[:300])
    return parse_size(size)


def check_bool(v, param: str) -> bool | None:
    if v is None or isinstance(v, (bool, np.bool_)):
        return None if v is None else bool(v)
    raise bad_request(param, f"must be true or false, got {v!r}"[:200])


def rewrite_opt_out(headers: dict | None) -> bool:
    v = (headers or {}).get(REWRITE_HEADER)
    return v is not None and v.strip().lower() in ("0", "false", "off", "no")


def parse_instance(obj, cfg: dict, where: str = "", rewrite_default: bool = True) -> ImageRequest:
    """One V1 instance (a dict or a bare prompt) -> ImageRequest; errors name the field."""
    pre = f"{where}." if where else ""
    if isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        raise bad_request(where or "instance", f"must be an object with a 'prompt' (or a prompt string), "
                                               f"got {type(obj).__name__}")
    unknown = [k for k in obj if k not in INSTANCE_KEYS]
    if unknown:
        raise bad_request(pre + str(unknown[0])[:60], f"unknown field; expected {', '.join(INSTANCE_KEYS)}")
    if "prompt" not in obj:
        raise bad_request(pre + "prompt", "is required")
    rw = check_bool(obj.get("rewrite"), pre + "rewrite")
    return ImageRequest(prompt=check_prompt(obj["prompt"], cfg, pre + "prompt"),
                        n=check_n(obj.get("n"), cfg, pre + "n"),
                        seed=check_seed(obj.get("seed"), cfg, pre + "seed"),
                        size=check_size(obj.get("size"), cfg, pre + "size"),
                        rewrite=rewrite_default if rw is None else rw)


def parse_v1(payload, cfg: dict, headers: dict | None) -> list[ImageRequest]:
    if isinstance(payload, (bytes, bytearray)):
        # KServe hands over the raw body when the content type is not JSON
        raise ServeError(415, "the request body must be JSON (Content-Type: application/json)",
                         "unsupported_media_type")
    if not isinstance(payload, dict):
        raise bad_request("", f"the request must be a JSON object with 'instances', got {type(payload).__name__}")
    if "instances" not in payload:
        raise bad_request("instances", "is required: a list of {prompt, n, seed, size, rewrite} objects")
    inst = payload["instances"]
    if not isinstance(inst, list) or not inst:
        raise bad_request("instances", "must be a non-empty list")
    if len(inst) > cfg["max_instances"]:
        raise bad_request("instances", f"holds {len(inst)} prompts; the limit is {cfg['max_instances']}")
    extra = [k for k in payload if k != "instances"]
    if extra:
        raise bad_request(str(extra[0])[:60], "unknown field; expected instances")
    default = not rewrite_opt_out(headers)
    return [parse_instance(o, cfg, f"instances[{i}]", default) for i, o in enumerate(inst)]


def _flat(inp) -> list:
    """An InferInput's values as a flat list (JSON data may be nested; binary data is numpy)."""
    data = inp.data
    if data is None:
        raise bad_request(f"inputs.{inp.name}", "has no data")
    if isinstance(data, np.ndarray):
        vals = data.reshape(-1).tolist()
    else:
        vals, stack = [], [data]
        while stack:   # iterative flatten: a hostile nesting depth cannot overflow the stack
            x = stack.pop()
            if isinstance(x, (list, tuple)):
                stack.extend(reversed(x))
            else:
                vals.append(x)
    shape = inp.shape
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise bad_request(f"inputs.{inp.name}.shape", f"must be a list of non-negative integers, got {shape!r}")
    if math.prod(shape) != len(vals):
        raise bad_request(f"inputs.{inp.name}", f"shape {shape} does not match its {len(vals)} values")
    return vals


_V2_TYPES = {"prompt": ("BYTES",), "size": ("BYTES",), "rewrite": ("BOOL",),
             "n": ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"),
             "seed": ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")}


def parse_v2(req: InferRequest, cfg: dict, headers: dict | None) -> list[ImageRequest]:
    inputs = {}
    for inp in req.inputs:
        if inp.name not in _V2_TYPES:
            raise bad_request(f"inputs.{inp.name}"[:80], f"unknown input; expected {', '.join(_V2_TYPES)}")
        if inp.datatype not in _V2_TYPES[inp.name]:
            raise bad_request(f"inputs.{inp.name}.datatype", f"must be {' or '.join(_V2_TYPES[inp.name])}, "
                                                             f"got {inp.datatype}"[:200])
        if inp.name in inputs:
            raise bad_request(f"inputs.{inp.name}", "is given twice")
        inputs[inp.name] = _flat(inp)
    if "prompt" not in inputs:
        raise bad_request("inputs.prompt", "is required (BYTES, one element per prompt)")
    prompts = inputs.pop("prompt")
    if not prompts:
        raise bad_request("inputs.prompt", "must hold at least one prompt")
    if len(prompts) > cfg["max_instances"]:
        raise bad_request("inputs.prompt", f"holds {len(prompts)} prompts; the limit is {cfg['max_instances']}")
    for name, vals in inputs.items():
        if len(vals) not in (1, len(prompts)):
            raise bad_request(f"inputs.{name}", f"must hold 1 value or one per prompt ({len(prompts)}), got {len(vals)}")

    def text(v, param):
        if isinstance(v, (bytes, bytearray)):
            try:
                return bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request(param, "is not valid UTF-8") from None
        return v

    default = not rewrite_opt_out(headers)
    out = []
    for i, p in enumerate(prompts):
        def at(name):
            vals = inputs.get(name)
            return None if vals is None else vals[0 if len(vals) == 1 else i]
        rw = check_bool(at("rewrite"), "inputs.rewrite")
        out.append(ImageRequest(prompt=check_prompt(text(p, f"inputs.prompt[{i}]"), cfg, f"inputs.prompt[{i}]"),
                                n=check_n(at("n"), cfg, "inputs.n"),
                                seed=check_seed(at("seed"), cfg, "inputs.seed"),
                                size=check_size(text(at("size"), "inputs.size") or None, cfg, "inputs.size"),
                                rewrite=default if rw is None else rw))
    return out


# ---------------------------------------------------------------- model URIs
@dataclass
class ResolvedModel:
    bundle: str                       # local dir or s3:// prefix with bundle.json
    name: str | None = None           # registered model name
    version: str | None = None        # registered model version
    tags: dict = field(default_factory=dict)
    tmp: Any = None                   # keeps a download directory alive
    gated: bool | None = None         # registry versions: passed gate on record (None: not a registry URI)


def find_bundle(local_dir: str) -> str:
    """The bundle inside a directory: the directory itself, the `bundle` artifact of an MLflow
    pyfunc model (model_code.registry.pyfunc), or a single bundle one or two levels down."""
    if os.path.isfile(os.path.join(local_dir, "bundle.json")):
        return local_dir
    mlmodel = os.path.join(local_dir, "MLmodel")
    if os.path.isfile(mlmodel):
        import yaml
        with open(mlmodel) as f:
            spec = yaml.safe_load(f) or {}
        from model_code.registry.pyfunc import BUNDLE_ARTIFACT
        rel = (((spec.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}) \
            .get(BUNDLE_ARTIFACT, {}).get("path")
        if rel and os.path.isfile(os.path.join(local_dir, rel, "bundle.json")):
            return os.path.join(local_dir, rel)
    found = sorted({os.path.dirname(p) for depth in ("*", os.path.join("*", "*"))
                    for p in glob.glob(os.path.join(local_dir, depth, "bundle.json"))})
    if len(found) == 1:
        return found[0]
    raise ValueError(f"model: no Easel bundle (bundle.json) in {local_dir}"
                     + (f"; several candidates: {found}" if found else ""))


def resolve_model(uri: str, allow_ungated: bool = False) -> ResolvedModel:
    """models:/NAME@ALIAS | models:/NAME/VERSION | a local dir | file:// | s3://prefix |
    /mnt/models (KServe's storage initializer) -> the bundle it holds. A registry version must
    have a passed gate on record (registry.check_gated) unless allow_ungated."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("model: a model URI is required (models:/NAME@ALIAS, a directory or s3://...)")
    if uri.startswith("models:/"):
        import mlflow
        from model_code import tracking
        tracking.configure()
        from model_code.registry.registry import check_gated
        name, version, tags = _registry_version(uri)
        gated = check_gated(name, version, tags, allow_ungated)
        tmp = tempfile.TemporaryDirectory(prefix="easel-model-")
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp.name)
        return ResolvedModel(find_bundle(local), name, version, tags, tmp, gated)
    if storage.is_remote(uri):
        if storage.exists(storage.join(uri, "bundle.json")):
            return ResolvedModel(uri)   # Generator.load reads s3:// bundles itself
        tmp = tempfile.TemporaryDirectory(prefix="easel-model-")
        local = storage.get_dir(uri, tmp.name)
        return ResolvedModel(find_bundle(local), tmp=tmp)
    path = storage.local_path(uri)
    if not os.path.isdir(path):
        raise ValueError(f"model: {uri} is not a directory, a models:/ URI or an s3:// prefix")
    return ResolvedModel(find_bundle(path))


def _registry_version(uri: str) -> tuple[str, str, dict]:
    from model_code import tracking
    rest = uri[len("models:/"):]
    c = tracking.client()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = c.get_model_version_by_alias(name, alias)
    else:
        name, _, version = rest.partition("/")
        mv = c.get_model_version(name, version)
    return name, str(mv.version), dict(mv.tags or {})


# ---------------------------------------------------------------- image helpers
def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_png_b64(b64: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        im.load()
    except (binascii.Error, ValueError, OSError) as e:
        raise ServeError(502, f"the predictor returned an undecodable image: {e}", "bad_predictor_response") from e
    return im.convert("RGB")


def resize(image: Image.Image, side: int) -> Image.Image:
    if image.size == (side, side):
        return image
    # LANCZOS when shrinking, BICUBIC when growing (the tiny models make 32 px images)
    return image.resize((side, side), Image.LANCZOS if side < image.size[0] else Image.BICUBIC)


# ---------------------------------------------------------------- the predictor
class EaselModel(kserve.Model):
    """A generation bundle behind KServe's V1/V2 protocols.

    model_uri: see resolve_model. config: overrides of the serve config (serve_config: the
    bundle's preset supplies the defaults, then EASEL_SERVE_CONFIG and the environment). generate_only: the
    predictor behind an EaselTransformer (no safety, rewriting or provenance here)."""

    def __init__(self, name: str, model_uri: str | None, config: dict | None = None,
                 generate_only: bool = False, metrics=None):
        super().__init__(name)
        self.model_uri, self._config_in, self.generate_only = model_uri, config, generate_only
        self.cfg: dict = {}
        self.metrics = metrics
        self.generator = self.safety = self.rewriter = self.signer = self.batcher = None
        self.resolved: ResolvedModel | None = None
        self.info: dict[str, str] = {}

    # -------------------------------------------------------------- loading
    def _make_config(self, meta: dict) -> dict:
        # the bundle's own resolved serve: section; bundles older than that name their preset
        section = ((meta["config"] or {}).get("serve") or {}) if "config" in meta else None
        return serve_config(meta.get("preset"), overrides=self._config_in, section=section)

    def _model_info(self, meta: dict) -> dict[str, str]:
        r = self.resolved
        lineage = meta.get("lineage") or {}
        return {"name": (r.name if r and r.name else self.name),
                "version": (r.version if r and r.version else str(lineage.get("version") or "local")),
                "recipe": meta.get("recipe", ""),
                "dataset_version": str((r.tags.get("easel.dataset_version") if r else None)
                                       or lineage.get("dataset_version") or "unknown"),
                # a registry version served without a passed gate says so wherever info goes
                "gate": ("n/a" if r is None or r.gated is None else "passed" if r.gated
                         else "UNGATED (served with --allow-ungated)")}

    def _allow_ungated(self) -> bool:
        # the bundle's preset cannot grant this: defaults, EASEL_SERVE_CONFIG, env, --allow-ungated
        return bool(serve_config(None, overrides=self._config_in)["allow_ungated"])

    def load(self) -> bool:
        from model_code.generate import Generator
        self.resolved = resolve_model(self.model_uri, self._allow_ungated())
        self.generator = Generator.load(self.resolved.bundle)
        self.cfg = self._make_config(self.generator.meta)
        self.info = self._model_info(self.generator.meta)
        native = f"{self.generator.image_size}x{self.generator.image_size}"
        self.default_size = parse_size(self.cfg["default_size"] or
                                       (native if native in self.cfg["sizes"] else self.cfg["sizes"][0]))
        if not self.generate_only:
            self._load_policies(ClipEmbedder(self.generator.tokenizer, self.generator.clip))
        self.batcher = batching.Batcher(self.generator.generate, max_batch=self.cfg["max_batch"],
                                        window_s=self.cfg["batch_window_ms"] / 1000.0,
                                        queue_size=self.cfg["queue_size"], metrics=self.metrics)
        self.ready = True
        log.info("model %s ready: %s version %s (%s), gate %s, bundle %s", self.name, self.info["name"],
                 self.info["version"], self.info["recipe"], self.info["gate"], self.resolved.bundle)
        return self.ready

    def _load_policies(self, embedder: ClipEmbedder | None) -> None:
        self.safety = Safety(self.cfg["safety"], embedder)
        self.rewriter = rewrite_mod.rewriter_from_config(self.cfg)
        self.signer = provenance.signer_from_config(self.cfg)

    def stop(self):
        if self.batcher is not None:
            self.batcher.close()

    # -------------------------------------------------------------- preprocess
    def parse(self, payload, headers) -> _State:
        if isinstance(payload, InferRequest):
            reqs = parse_v2(payload, self.cfg, headers)
            return _State("v2", reqs, payload.id, payload.request_outputs,
                          bool(payload.use_binary_outputs))
        return _State("v1", parse_v1(payload, self.cfg, headers))

    def check_and_rewrite(self, reqs: list[ImageRequest]) -> None:
        """Prompt safety, then rewriting (in a worker thread: CLIP runs here). Refusal -> 400."""
        verdicts = self.safety.check_prompts([r.prompt for r in reqs])
        for i, v in enumerate(verdicts):
            if not v.allowed:
                if self.metrics:
                    self.metrics.refusals.labels(v.policy).inc()
                where = "prompt" if len(reqs) == 1 else f"prompt[{i}]"
                raise ServeError(400, f"Your request was rejected by the safety system ({v.policy}): {v.reason}",
                                 "content_policy_violation", where)
        for r in reqs:
            if r.rewrite and self.rewriter is not None:
                rw = self.rewriter.rewrite(r.prompt, r.seed)
                r.revised_prompt, r.rewrite_source = rw.text, rw.source
                if self.metrics:
                    self.metrics.rewrites.labels(rw.source).inc()
            else:
                r.revised_prompt, r.rewrite_source = r.prompt, "off"
        # a chat endpoint's rewrite is model output: check it like a prompt before using it
        chat = [r for r in reqs if r.rewrite_source == "chat"]
        if chat:
            for r, v in zip(chat, self.safety.check_prompts([r.revised_prompt for r in chat])):
                if not v.allowed:
                    r.revised_prompt, r.rewrite_source = r.prompt, "unsafe-rewrite-dropped"

    async def preprocess(self, payload, headers=None):
        state = self.parse(payload, headers)
        if not self.generate_only:
            await asyncio.to_thread(self.check_and_rewrite, state.requests)
        _STATE.set(state)
        return state.requests

    # -------------------------------------------------------------- predict
    async def generate(self, reqs: list[ImageRequest]) -> list[ImageResult]:
        settings = dict(self.cfg["sampling"])
        cand = self.cfg["candidates"]

        async def one(r: ImageRequest) -> ImageResult:
            try:
                (gen,), seed = await self.batcher.submit([r.generation_prompt], r.n, cand, r.seed, settings)
            except batching.QueueFull as e:
                raise ServeError(503, str(e), "server_busy", type_="server_error") from e
            side = r.size or self.default_size
            outs = [ImageOut(resize(im, side), float(s)) for im, s in zip(gen.images, gen.scores)]
            return ImageResult(r, outs, seed, side)

        return list(await asyncio.gather(*(one(r) for r in reqs)))

    async def predict(self, payload, headers=None, response_headers=None):
        return await self.generate(payload)

    # -------------------------------------------------------------- postprocess
    def finish(self, results: list[ImageResult], info: dict) -> None:
        """Image safety, then PNG + C2PA for every image kept (worker thread)."""
        for res in results:
            if not self.generate_only and self.safety is not None:
                verdicts = self.safety.check_images([o.image for o in res.images])
                for o, v in zip(res.images, verdicts):
                    if not v.allowed:
                        o.image, o.withheld = None, {"policy": v.policy, "reason": v.reason}
                        if self.metrics:
                            self.metrics.withheld.labels(v.policy).inc()
            for o in res.images:
                if o.image is None:
                    continue
                png = png_bytes(o.image)
                if self.signer is not None and not self.generate_only:
                    png = self.signer.sign(png, provenance.ProvenanceInfo(
                        model=info["name"], model_version=info["version"], recipe=info.get("recipe", ""),
                        dataset_version=info.get("dataset_version", "unknown"), prompt=res.request.prompt,
                        revised_prompt=res.request.generation_prompt, seed=res.seed, clip_score=o.clip_score,
                        # an image from a version served with --allow-ungated says so in its provenance
                        extra={"gate": info.get("gate", "n/a")}))
                o.png = png

    async def postprocess(self, result, headers=None, response_headers=None):
        state = _STATE.get()
        await asyncio.to_thread(self.finish, result, self.info)
        return encode(state, result, self.name, self.info)


# ---------------------------------------------------------------- responses
def _b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode("ascii")


def encode_v1(results: list[ImageResult], info: dict) -> dict:
    preds = []
    for res in results:
        items = []
        for o in res.images:
            item = {"b64_json": _b64(o.png), "clip_score": o.clip_score}
            if o.withheld:
                item["withheld"] = o.withheld
            items.append(item)
        preds.append({"prompt": res.request.prompt, "revised_prompt": res.request.generation_prompt,
                      "seed": res.seed, "size": f"{res.size}x{res.size}", "images": items})
    return {"predictions": preds, "model": dict(info)}


def encode_v2(results: list[ImageResult], state: _State, name: str, info: dict) -> InferResponse:
    images, index, scores, withheld = [], [], [], []
    for i, res in enumerate(results):
        for o in res.images:
            images.append(_b64(o.png) or "")
            index.append(i)
            scores.append(float(o.clip_score or 0.0))
            withheld.append(f"{o.withheld['policy']}: {o.withheld['reason']}" if o.withheld else "")
    outs = [InferOutput("image", [len(images)], "BYTES", images),
            InferOutput("prompt_index", [len(index)], "INT32", index),
            InferOutput("clip_score", [len(scores)], "FP32", scores),
            InferOutput("withheld", [len(withheld)], "BYTES", withheld),
            InferOutput("revised_prompt", [len(results)], "BYTES", [r.request.generation_prompt for r in results]),
            InferOutput("seed", [len(results)], "INT64", [r.seed if r.seed is not None else -1 for r in results])]
    return InferResponse(response_id=state.request_id or "", model_name=name, infer_outputs=outs,
                         model_version=info.get("version"), use_binary_outputs=state.binary_outputs,
                         requested_outputs=state.requested_outputs)


def encode(state: _State, results: list[ImageResult], name: str, info: dict):
    return encode_v2(results, state, name, info) if state.protocol == "v2" else encode_v1(results, info)


def decode_v1(resp: dict, reqs: list[ImageRequest]) -> tuple[list[ImageResult], dict]:
    """A generate-only predictor's V1 answer -> results (images decoded) and its model info."""
    preds = resp.get("predictions") if isinstance(resp, dict) else None
    if not isinstance(preds, list) or len(preds) != len(reqs):
        raise ServeError(502, "the predictor's answer does not match the request", "bad_predictor_response")
    out = []
    for r, p in zip(reqs, preds):
        imgs = [ImageOut(decode_png_b64(it["b64_json"]), it.get("clip_score")) for it in p["images"]]
        out.append(ImageResult(r, imgs, p.get("seed"), parse_size(p["size"])))
    return out, dict(resp.get("model") or {})


def decode_v2(resp: InferResponse, reqs: list[ImageRequest]) -> tuple[list[ImageResult], dict]:
    outs = {o.name: o for o in resp.outputs}

    def vals(name):
        o = outs.get(name)
        if o is None:
            raise ServeError(502, f"the predictor's answer lacks output {name!r}", "bad_predictor_response")
        d = o.data if o.data is not None else o.as_numpy()
        return (d.reshape(-1).tolist() if isinstance(d, np.ndarray) else list(d))

    images, index, scores, seeds = vals("image"), vals("prompt_index"), vals("clip_score"), vals("seed")
    results = [ImageResult(r, [], None if seeds[i] == -1 else int(seeds[i]), r.size or 0) for i, r in enumerate(reqs)]
    for b64, i, s in zip(images, index, scores):
        b64 = b64.decode() if isinstance(b64, bytes) else b64
        im = decode_png_b64(b64)
        results[int(i)].images.append(ImageOut(im, float(s)))
        results[int(i)].size = im.size[0]
    return results, {"name": resp.model_name, "version": resp.model_version}


# ---------------------------------------------------------------- the transformer
class EaselTransformer(EaselModel):
    """Validation, prompt safety and rewriting (preprocess) and image safety and provenance
    (postprocess) in front of a generate-only EaselModel at `predictor_host` (host:port).

    The transformer needs the bundle's CLIP for concept matching (model_uri: the same model);
    without a model_uri only the blocklist and patterns run (a warning says so)."""

    def __init__(self, name: str, model_uri: str | None, predictor_host: str, config: dict | None = None,
                 protocol: str = "v1", metrics=None, timeout_s: int = 600):
        super().__init__(name, model_uri, config, generate_only=False, metrics=metrics)
        from kserve.predictor_config import PredictorConfig
        if protocol not in ("v1", "v2"):
            raise ValueError(f"protocol: the transformer talks v1 or v2 to its predictor, got {protocol!r}")
        if not predictor_host:
            raise ValueError("predictor_host: a transformer needs its predictor's HOST:PORT")
        self._predictor = PredictorConfig(predictor_host=predictor_host, predictor_protocol=protocol,
                                          predictor_request_timeout_seconds=timeout_s)

    @property
    def predictor_config(self):
        # our own, not KServe's process-wide one: two servers may share this process (tests)
        return self._predictor

    def load(self) -> bool:
        from model_code.generate import read_bundle_meta
        embedder, meta = None, {}
        if self.model_uri:
            self.resolved = resolve_model(self.model_uri, self._allow_ungated())
            meta = read_bundle_meta(self.resolved.bundle)
            embedder = ClipEmbedder.from_bundle(self.resolved.bundle)
        else:
            log.warning("transformer without a model URI: no CLIP concept matching for prompts or images")
        self.cfg = self._make_config(meta)
        self.info = self._model_info(meta)
        self._load_policies(embedder)
        self.ready = True
        return True

    async def preprocess(self, payload, headers=None):
        reqs = await super().preprocess(payload, headers)
        wire = [r.wire() for r in reqs]
        if self._predictor.protocol == "v1":
            return {"instances": wire}
        from kserve.protocol.infer_type import InferInput
        k = len(wire)
        inputs = [InferInput("prompt", [k], "BYTES", [w["prompt"] for w in wire]),
                  InferInput("n", [k], "INT32", [w["n"] for w in wire]),
                  InferInput("rewrite", [1], "BOOL", [False])]
        # one [k] tensor per field: prompts without a seed get a fresh one (they would get a
        # random seed anyway; seeded, they run unbatched at the predictor)
        if any("seed" in w for w in wire):
            import secrets
            inputs.append(InferInput("seed", [k], "INT64",
                                     [w["seed"] if "seed" in w else secrets.randbelow(2**31) for w in wire]))
        if any("size" in w for w in wire):   # "" = the predictor's default size
            inputs.append(InferInput("size", [k], "BYTES", [w.get("size", "") for w in wire]))
        return InferRequest(model_name=self.name, infer_inputs=inputs, request_id=_STATE.get().request_id)

    async def predict(self, payload, headers=None, response_headers=None):
        import httpx
        try:
            return await kserve.Model.predict(self, payload, headers)
        except httpx.HTTPStatusError as e:   # the predictor's 4xx/5xx, passed on with its message
            try:
                body = e.response.json()
                msg = body.get("error") if isinstance(body, dict) else None
            except ValueError:
                msg = None
            status = e.response.status_code
            raise ServeError(status, f"predictor: {msg or e.response.text[:300]}",
                             "server_busy" if status == 503 else "predictor_error") from e
        except httpx.HTTPError as e:
            raise ServeError(502, f"the predictor at {self._predictor.predictor_host} did not answer: "
                                  f"{type(e).__name__}", "predictor_unavailable", type_="server_error") from e

    async def postprocess(self, result, headers=None, response_headers=None):
        state = _STATE.get()
        if isinstance(result, InferResponse):
            results, info = decode_v2(result, state.requests)
        else:
            results, info = decode_v1(result, state.requests)
        info = {**self.info, **{k: v for k, v in info.items() if v}}   # the predictor knows its version
        await asyncio.to_thread(self.finish, results, info)
        return encode(state, results, self.name, info)
