"""The image endpoints' wire protocols, apart from any model: request and result records,
client errors, V1 / V2 parsing (validated against the serving settings) and encoding, and
the PNG helpers responses use. The OpenAI route (openai_route.py) has its own format and the
same request records.

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
  The OpenAI route (openai_route.py) parses its own format into the same ImageRequests and
  calls the same request path (EaselModel.serve) once.

Withheld images keep their place in the answer, with no image and the policy and reason, so a
client always sees n entries per prompt and knows why one is missing.

Seeds: a request's seed makes its images reproducible (seeded requests are generated alone, see
batching.py); without one the server draws a seed and reports it ("seed" in the answer).
"""
from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from PIL import Image

from model_code.serve.config import parse_size

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
    embedding: Any = None            # the CLIP embedding reranking computed (D,): image safety reuses it


@dataclass
class ImageResult:
    request: ImageRequest
    images: list[ImageOut]
    seed: int | None
    size: int


@dataclass
class Envelope:
    """One V1/V2 call as it passes KServe's hooks: what its protocol needs to answer (format, ids,
    requested outputs), the parsed requests, and, once served, their results and the model info.
    preprocess makes it, predict fills it, postprocess encodes it: state passes explicitly."""
    protocol: str                     # "v1" | "v2"
    requests: list[ImageRequest]
    request_id: str | None = None
    requested_outputs: Any = None
    binary_outputs: bool = False
    results: list[ImageResult] | None = None
    info: dict = field(default_factory=dict)


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


def _bounded_int(value, lo: int, hi: int, param: str, default):
    """An integer request field in [lo, hi], or `default` when absent; else a 400 naming it."""
    if value is None:
        return default
    if not _is_int(value):
        raise bad_request(param, f"must be an integer, got {value!r}"[:200])
    if not lo <= value <= hi:
        raise bad_request(param, f"must be between {lo} and {hi}, got {value}")
    return int(value)


def check_n(n, cfg: dict, param: str = "n") -> int:
    return _bounded_int(n, 1, cfg["max_n"], param, default=1)


def check_seed(seed, cfg: dict, param: str = "seed") -> int | None:
    return _bounded_int(seed, 0, cfg["seed_max"], param, default=None)


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



# ---------------------------------------------------------------- responses
def b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode("ascii")


def encode_v1(results: list[ImageResult], info: dict) -> dict:
    preds = []
    for res in results:
        items = []
        for o in res.images:
            item = {"b64_json": b64(o.png), "clip_score": o.clip_score}
            if o.withheld:
                item["withheld"] = o.withheld
            items.append(item)
        preds.append({"prompt": res.request.prompt, "revised_prompt": res.request.generation_prompt,
                      "seed": res.seed, "size": f"{res.size}x{res.size}", "images": items})
    return {"predictions": preds, "model": dict(info)}


def encode_v2(results: list[ImageResult], state: Envelope, name: str, info: dict) -> InferResponse:
    images, index, scores, withheld = [], [], [], []
    for i, res in enumerate(results):
        for o in res.images:
            images.append(b64(o.png) or "")
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


def encode(env: Envelope, name: str):
    """A served envelope -> its protocol's response."""
    return encode_v2(env.results, env, name, env.info) if env.protocol == "v2" else encode_v1(env.results, env.info)


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
    for data, i, s in zip(images, index, scores):
        im = decode_png_b64(data.decode() if isinstance(data, bytes) else data)
        results[int(i)].images.append(ImageOut(im, float(s)))
        results[int(i)].size = im.size[0]
    return results, {"name": resp.model_name, "version": resp.model_version}
