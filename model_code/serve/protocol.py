"""The image endpoints' KServe wire protocols, apart from any model: V1 / V2 parsing into the
request records of records.py (validated against the serving settings), and the encoding of
results (and, behind a transformer, the decoding of a predictor's answer). The OpenAI route
(openai_route.py) has its own format and the same records.

Wire formats
  V1  POST /v1/models/NAME:predict
      {"instances": [{"prompt": str, "n": 1, "seed": int?, "size": "64x64"?, "rewrite": true?}]}
      (an instance may also be a bare prompt string)
   -> {"predictions": [{"prompt", "revised_prompt", "seed", "size", "rewrite_note"?,
                        "images": [{"b64_json", "clip_score"} |
                                   {"b64_json": null, "clip_score", "withheld": {"policy", "reason"}}]}],
       "model": {"name", "version", "recipe", "dataset_version", "gate", "safety"}}
  V2  POST /v2/models/NAME/infer, inputs: "prompt" BYTES [B] (required); "n", "seed" INT* and
      "size" BYTES ("" = the default) and "rewrite" BOOL, each [1] (all prompts) or [B]
      (V2_INPUTS; GET /v2/models/NAME lists them). Parameters: only what KServe/Triton clients
      send (request: binary_data_output; input: binary_data_size; output: binary_data); any
      other key is refused, as V1 and OpenAI refuse unknown fields. "outputs" may name only
      V2_OUTPUTS (checked before anything is generated).
   -> outputs: "image" BYTES [I] (base64 PNG, "" when withheld), "prompt_index" INT32 [I],
      "clip_score" FP32 [I], "withheld" BYTES [I] ("" or "policy: reason"),
      "revised_prompt" BYTES [B], "seed" INT64 [B], "rewrite_note" BYTES [B] ("" or V1's
      rewrite_note)
  The OpenAI route (openai_route.py) parses its own format into the same ImageRequests and
  calls the same request path (EaselModel.serve) once.

"rewrite_note" says why a prompt went to the model as written instead of rewritten (a word the
Shapes world has no meaning for, a negation or comparison a rewrite would contradict, a prompt it
cannot satisfy), or names the words a successful rewrite left out ("next"); absent otherwise.

Withheld images keep their place in the answer, with no image and the policy and reason, so a
client always sees n entries per prompt and knows why one is missing.

Seeds: a request's seed makes its images reproducible (seeded requests are generated alone, see
batching.py); without one the server draws a seed and reports it ("seed" in the answer). A KServe
transformer forwards the seed it drew with "seed_drawn": true, so the predictor may still merge
that request with others (a drawn seed promises its revised prompt, not a call of its own).
"""
from __future__ import annotations

import math

import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from model_code.serve.config import parse_size
from model_code.serve.records import (Envelope, ImageOut, ImageRequest, ImageResult, ServeError, _is_int, b64,
                                      bad_request, check_bool, check_n, check_prompt, check_seed, check_size,
                                      decode_png_b64, rewrite_opt_out)

INSTANCE_KEYS = ("prompt", "n", "seed", "size", "rewrite", "seed_drawn")


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
    seed = check_seed(obj.get("seed"), cfg, pre + "seed")
    return ImageRequest(prompt=check_prompt(obj["prompt"], cfg, pre + "prompt"),
                        n=check_n(obj.get("n"), cfg, pre + "n"), seed=seed,
                        seed_drawn=check_seed_drawn(check_bool(obj.get("seed_drawn"), pre + "seed_drawn"), seed,
                                                    pre + "seed_drawn"),
                        size=check_size(obj.get("size"), cfg, pre + "size"),
                        rewrite=rewrite_default if rw is None else rw)


def check_seed_drawn(drawn: bool | None, seed: int | None, param: str) -> bool:
    """`seed_drawn`: the seed was drawn by a server (a KServe transformer in front of this one),
    not chosen by a client, so the request may share a generator call with others."""
    if drawn and seed is None:
        raise bad_request(param, "is true, but there is no seed: it marks a seed a server drew")
    return bool(drawn)


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


_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_V2_TYPES = {"prompt": ("BYTES",), "size": ("BYTES",), "rewrite": ("BOOL",), "n": _INTS, "seed": _INTS,
             "seed_drawn": ("BOOL",)}
# the V2 model metadata (GET /v2/models/NAME): B prompts; -1 = variable; n, seed, size and
# rewrite take 1 value (for all prompts) or B; INT64 stands for any integer type
V2_INPUTS = ({"name": "prompt", "datatype": "BYTES", "shape": [-1]},
             {"name": "n", "datatype": "INT64", "shape": [-1]},
             {"name": "seed", "datatype": "INT64", "shape": [-1]},
             {"name": "size", "datatype": "BYTES", "shape": [-1]},
             {"name": "rewrite", "datatype": "BOOL", "shape": [-1]},
             {"name": "seed_drawn", "datatype": "BOOL", "shape": [-1]})
V2_OUTPUTS = ({"name": "image", "datatype": "BYTES", "shape": [-1]},
              {"name": "prompt_index", "datatype": "INT32", "shape": [-1]},
              {"name": "clip_score", "datatype": "FP32", "shape": [-1]},
              {"name": "withheld", "datatype": "BYTES", "shape": [-1]},
              {"name": "revised_prompt", "datatype": "BYTES", "shape": [-1]},
              {"name": "seed", "datatype": "INT64", "shape": [-1]},
              {"name": "rewrite_note", "datatype": "BYTES", "shape": [-1]})
# parameters KServe's and Triton's clients send (binary tensors); anything else is refused
_V2_PARAMETERS = {"request": ("binary_data_output",), "input": ("binary_data_size",), "output": ("binary_data",)}


def _check_parameters(params, where: str, kind: str) -> None:
    if not params:
        return
    if not isinstance(params, dict):
        raise bad_request(where, f"must be an object, got {type(params).__name__}")
    unknown = [k for k in params if k not in _V2_PARAMETERS[kind]]
    if unknown:
        raise bad_request(f"{where}.{unknown[0]}"[:120], f"unknown parameter; accepted: {', '.join(_V2_PARAMETERS[kind])}")


def _check_requested_outputs(req: InferRequest) -> None:
    known = [o["name"] for o in V2_OUTPUTS]
    for i, out in enumerate(req.request_outputs or []):
        if out.name not in known:
            raise bad_request(f"outputs[{i}].name", f"unknown output {str(out.name)[:60]!r}; "
                                                    f"this model returns {', '.join(known)}")
        _check_parameters(out.parameters, f"outputs[{i}].parameters", "output")


def parse_v2(req: InferRequest, cfg: dict, headers: dict | None) -> list[ImageRequest]:
    _check_parameters(req.parameters, "parameters", "request")
    _check_requested_outputs(req)
    inputs = {}
    for inp in req.inputs:
        _check_parameters(inp.parameters, f"inputs.{inp.name}.parameters"[:80], "input")
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
        seed = check_seed(at("seed"), cfg, "inputs.seed")
        out.append(ImageRequest(prompt=check_prompt(text(p, f"inputs.prompt[{i}]"), cfg, f"inputs.prompt[{i}]"),
                                n=check_n(at("n"), cfg, "inputs.n"), seed=seed,
                                seed_drawn=check_seed_drawn(check_bool(at("seed_drawn"), "inputs.seed_drawn"), seed,
                                                            "inputs.seed_drawn"),
                                size=check_size(text(at("size"), "inputs.size") or None, cfg, "inputs.size"),
                                rewrite=default if rw is None else rw))
    return out


# ---------------------------------------------------------------- responses
def encode_v1(results: list[ImageResult], info: dict) -> dict:
    preds = []
    for res in results:
        items = []
        for o in res.images:
            item = {"b64_json": b64(o.png), "clip_score": o.clip_score}
            if o.withheld:
                item["withheld"] = o.withheld
            items.append(item)
        pred = {"prompt": res.request.prompt, "revised_prompt": res.request.generation_prompt,
                "seed": res.seed, "size": f"{res.size}x{res.size}", "images": items}
        if res.request.rewrite_note:
            pred["rewrite_note"] = res.request.rewrite_note
        preds.append(pred)
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
            InferOutput("seed", [len(results)], "INT64", [r.seed if r.seed is not None else -1 for r in results]),
            InferOutput("rewrite_note", [len(results)], "BYTES", [r.request.rewrite_note for r in results])]
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
