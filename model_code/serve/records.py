"""What the image endpoints exchange, apart from any wire format: client errors (ServeError, a
4xx/5xx with a message naming the field), the request and result records every protocol parses
into and encodes from, field validation against the serving settings, and the PNG helpers.
protocol.py (V1/V2) and openai_route.py (OpenAI) build on it."""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from model_code.serve.config import parse_size

REWRITE_HEADER = "x-easel-rewrite"          # "false" / "0" / "off": keep the prompt as given


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
    seed_drawn: bool = False         # the server drew `seed` (the client sent none)
    size: int | None = None          # side in pixels; None = the predictor's default
    rewrite: bool = True
    revised_prompt: str | None = None
    rewrite_source: str = ""
    rewrite_note: str = ""           # why a prompt was kept as written ("no word for: teal"), the words a rewrite left out, or ""

    @property
    def generation_prompt(self) -> str:
        return self.revised_prompt or self.prompt

    def wire(self) -> dict:
        """The instance a transformer sends to a generate-only predictor."""
        d = {"prompt": self.generation_prompt, "n": self.n, "rewrite": False}
        if self.seed is not None:
            d["seed"] = self.seed
            if self.seed_drawn:   # the predictor may still merge it with other requests
                d["seed_drawn"] = True
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


def media_type(content_type: str | None) -> str:
    """A Content-Type's media type as compared: parameters dropped, lower case, no spaces
    ("Application/JSON; charset=utf-8" -> "application/json")."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    mt = media_type(content_type)
    return mt == "application/json" or (mt.startswith("application/") and mt.endswith("+json"))


def rewrite_opt_out(headers: dict | None) -> bool:
    v = (headers or {}).get(REWRITE_HEADER)
    return v is not None and v.strip().lower() in ("0", "false", "off", "no")


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


def b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode("ascii")
