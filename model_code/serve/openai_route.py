"""OpenAI-compatible image generation: POST /v1/images/generations, so the official `openai`
client works against an Easel server:

    client = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
    r = client.images.generate(model="easel", prompt="a red circle", n=2, size="64x64",
                               response_format="b64_json", extra_body={"seed": 7})
    r.data[0].b64_json, r.data[0].revised_prompt

Request fields: prompt (required), model (the served name, optional), n, size, response_format
(only "b64_json": this server keeps no image store to link to), seed, user, quality and style
(OpenAI's values only, checked, then ignored: the Shapes models have one quality and one style;
quality: standard, hd, auto, low, medium, high; style: vivid, natural), and the Easel extra
`rewrite` (false keeps the prompt as given; the header x-easel-rewrite: false does the same).
Unknown fields are refused, so a typo is never silently dropped.

Answer: {"created", "data": [{"b64_json", "revised_prompt", "rewrite_note"?}...], "model",
"model_version", "seed"}; rewrite_note (as V1's) says why the prompt went as written. An image withheld by the image safety check keeps its place with "b64_json": null and
"withheld": {"policy", "reason"}. Errors use OpenAI's shape
{"error": {"message", "type", "param", "code"}}; a refused prompt is a 400 with code
"content_policy_violation", as OpenAI's API answers.

The route parses its own format into one ImageRequest and calls the model's request path
(EaselModel.serve) once, as V1 and V2 do, so it behaves the same on a standalone predictor and on
a transformer.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Literal, Optional

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from model_code.serve.records import (ImageRequest, ServeError, b64, check_n, check_prompt, check_seed, check_size,
                                      is_json, rewrite_opt_out)

log = logging.getLogger(__name__)

ROUTE = "/v1/images/generations"


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr
    model: Optional[StrictStr] = None
    n: Optional[StrictInt] = None
    size: Optional[StrictStr] = None
    response_format: Optional[StrictStr] = None
    seed: Optional[StrictInt] = None
    user: Optional[StrictStr] = None
    # OpenAI's values (dall-e-3 and gpt-image); checked so a client's typo is not silently dropped
    quality: Optional[Literal["standard", "hd", "auto", "low", "medium", "high"]] = None
    style: Optional[Literal["vivid", "natural"]] = None
    rewrite: Optional[StrictBool] = None


class ImageItem(BaseModel):
    b64_json: Optional[str] = None
    revised_prompt: str
    withheld: Optional[dict] = None
    rewrite_note: Optional[str] = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageItem]
    model: str
    model_version: str
    seed: Optional[int] = None


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   type_: str | None = None) -> JSONResponse:
    type_ = type_ or ("invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(status_code=status,
                          content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def _validation_error(e: ValidationError) -> ServeError:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ())) or None
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        msg = "unknown field"
    elif kind == "missing":
        msg = "is required"
    else:
        got = repr(err.get("input"))
        msg = f"{err.get('msg', 'invalid value')}, got {got[:80] + '...' if len(got) > 80 else got}"
    return ServeError(400, f"{param}: {msg}" if param else msg, "invalid_request", param)


def parse_request(body: bytes, content_type: str, cfg: dict, served_name: str,
                  headers: dict | None = None) -> ImageRequest:
    """The body -> the one ImageRequest it asks for (validated: a 4xx ServeError names the field)."""
    if not is_json(content_type):
        raise ServeError(415, "the request body must be JSON (Content-Type: application/json)",
                         "unsupported_media_type")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ServeError(400, f"the request body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(obj, dict):
        raise ServeError(400, f"the request body must be a JSON object, got {type(obj).__name__}", "invalid_request")
    try:
        req = ImagesRequest.model_validate(obj)
    except ValidationError as e:
        raise _validation_error(e) from None
    if req.model is not None and req.model != served_name:
        raise ServeError(404, f"model: this server serves {served_name!r}, not {req.model[:100]!r}",
                         "model_not_found", "model")
    if req.response_format not in (None, "b64_json"):
        raise ServeError(400, f"response_format: only 'b64_json' is supported (this server keeps no image "
                              f"store to link to), got {req.response_format[:40]!r}", "invalid_request",
                         "response_format")
    rewrite = req.rewrite if req.rewrite is not None else not rewrite_opt_out(headers)
    return ImageRequest(prompt=check_prompt(req.prompt, cfg), n=check_n(req.n, cfg), seed=check_seed(req.seed, cfg),
                        size=check_size(req.size, cfg), rewrite=rewrite)


def register_openai_route(app: FastAPI, get_model: Callable[[], object]) -> None:
    """Add POST /v1/images/generations; get_model() returns the served EaselModel."""

    async def images_generations(request: Request):
        model = get_model()
        body = await request.body()   # outside the try: a body over the limit is the middleware's 413
        try:
            if not await model.healthy():
                raise ServeError(503, f"model {model.name} is not ready", "model_not_ready")
            headers = dict(request.headers.items())
            req = parse_request(body, headers.get("content-type", ""), model.cfg, model.name, headers)
            (res,), info = await model.serve([req], headers)
        except ServeError as e:
            return error_response(e.status, e.message, e.code, e.param, e.type)
        except Exception:  # a bug, not the client's fault: logged with its traceback
            log.exception("image generation failed")
            return error_response(500, "the server failed to generate the images", "server_error")
        data = [ImageItem(b64_json=b64(o.png), revised_prompt=res.request.generation_prompt, withheld=o.withheld,
                          rewrite_note=res.request.rewrite_note or None)
                for o in res.images]
        out = ImagesResponse(created=int(time.time()), data=data, model=str(info.get("name") or model.name),
                             model_version=str(info.get("version") or ""), seed=res.seed)
        body = out.model_dump(exclude_none=False)
        for item in body["data"]:   # present only when there is a note, as in V1
            if item["rewrite_note"] is None:
                del item["rewrite_note"]
        return JSONResponse(body)

    app.add_api_route(ROUTE, images_generations, methods=["POST"], response_model=None,
                      name="images_generations")
