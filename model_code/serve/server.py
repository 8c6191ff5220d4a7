"""The Easel model server: KServe's V1 and V2 endpoints, the OpenAI-compatible image route and
/metrics, on one FastAPI app served by uvicorn on the host given (127.0.0.1 by default).

    serve("models:/easel-dalle@production")                         # blocks; `easel serve`
    srv = start_in_thread(bundle_dir, name="easel")                   # tests: a free port
    srv.base_url  ->  "http://127.0.0.1:PORT";  srv.stop()

Why not kserve.ModelServer: it always binds 0.0.0.0 and serves one module-level FastAPI app
per process. Here each server gets its own app, model repository and metrics registry (a
transformer and its predictor can share a test process), built from KServe's own endpoint
registration, data plane and exception handlers.

Roles: "predictor" (the whole request path, or generation only with generate_only=True behind
a transformer) and "transformer" (validation, safety, rewriting and provenance in front of the
predictor at predictor_host, which it calls over V1 or V2).
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import errors as kerrors
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

from model_code.serve.metrics import MetricsMiddleware, ServeMetrics
from model_code.serve.model import EaselModel, EaselTransformer
from model_code.serve.records import ServeError, media_type
from model_code.serve.openai_route import ROUTE as OPENAI_ROUTE, register_openai_route

log = logging.getLogger(__name__)

ROLES = ("predictor", "transformer")


class _ClientSafeDataPlane(DataPlane):
    """KServe's data plane, with every failure to *decode* a request reported as the client's
    (400): KServe turns e.g. a non-numeric inference-header-content-length or a binary V2 body
    without "inputs" into a ValueError / KeyError, a BYTES length prefix past its data into a
    struct.error and invalid UTF-8 in a binary BYTES tensor into an InferenceError, which its
    handlers answer with a 500. Server readiness is the models' readiness (KServe's is always
    true outside a transformer)."""

    def decode(self, body, headers, *args, **kwargs):
        if headers and "content-type" in headers:
            # KServe compares the raw header with "application/json": parameters and case differ
            # legally ("application/json; charset=utf-8", "Application/JSON")
            headers = {**headers, "content-type": media_type(headers["content-type"])}
        try:
            decoded = super().decode(body, headers, *args, **kwargs)
            if isinstance(body, (bytes, bytearray)) and isinstance(decoded[0], InferRequest):
                _check_binary_sizes(body, headers)
            return decoded
        except kerrors.InvalidInput:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError, OverflowError,
                struct.error, kerrors.InferenceError) as e:
            raise kerrors.InvalidInput(f"malformed request: {type(e).__name__}: {e}"[:500]) from None

    async def ready(self) -> bool:
        models = self.model_registry.get_models().values()
        return bool(models) and all([await m.healthy() for m in models]) and await super().ready()

    def metadata(self):
        # the model repository extension is not served here (_close_repository_api)
        return {**super().metadata(), "extensions": []}


def _check_binary_sizes(body: bytes, headers: dict) -> None:
    """KServe slices each binary input by its binary_data_size without comparing the sum with
    the body: a size past the end reads short, extra bytes are ignored. Both are refused."""
    import orjson
    n = int(headers["inference-header-content-length"])
    declared = sum(int((i.get("parameters") or {}).get("binary_data_size") or 0)
                   for i in orjson.loads(body[:n])["inputs"] if i.get("data") is None)
    if declared != len(body) - n:
        raise kerrors.InvalidInput(f"malformed request: the inputs' binary_data_size add up to {declared} bytes, "
                                   f"but {len(body) - n} bytes follow the JSON header")


class BodyLimitMiddleware:
    """413 for request bodies over max_bytes, declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, scope, send) -> None:
        msg = f"the request body is larger than {self.max_bytes} bytes"
        resp = (JSONResponse({"error": {"message": msg, "type": "invalid_request_error", "param": None,
                                          "code": "request_too_large"}}, status_code=413)
                if scope.get("path", "").startswith(OPENAI_ROUTE) else
                JSONResponse({"error": msg, "code": "request_too_large"}, status_code=413))
        await resp(scope, _noop_receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = self.max_bytes + 1   # a lying header is refused like a big body
                if declared > self.max_bytes:
                    return await self._reject(scope, send)
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, send)


class _TooLarge(Exception):
    pass


async def _noop_receive():
    return {"type": "http.disconnect"}


# ---------------------------------------------------------------- the app
def _error_handlers(app: FastAPI) -> None:
    async def serve_error(request: Request, exc: ServeError):
        if request.url.path.startswith(OPENAI_ROUTE):
            from model_code.serve.openai_route import error_response
            return error_response(exc.status, exc.message, exc.code, exc.param, exc.type)
        return JSONResponse({"error": exc.message, "code": exc.code, "param": exc.param},
                              status_code=exc.status)

    async def validation_error(request: Request, exc: RequestValidationError):
        # FastAPI's own 422 echoes the whole input back; name the first bad field instead
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{loc}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg", "invalid request"))
        return JSONResponse({"error": msg, "code": "invalid_request", "param": loc or None}, status_code=422)

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(kerrors.InvalidInput, kerrors.invalid_input_handler)
    app.add_exception_handler(kerrors.ModelNotFound, kerrors.model_not_found_handler)
    app.add_exception_handler(kerrors.ModelNotReady, kerrors.model_not_ready_handler)
    app.add_exception_handler(kerrors.ServerNotReady, kerrors.server_not_ready_handler)
    app.add_exception_handler(kerrors.ServerNotLive, kerrors.server_not_live_handler)
    app.add_exception_handler(kerrors.UnsupportedProtocol, kerrors.unsupported_protocol_error_handler)
    app.add_exception_handler(NotImplementedError, kerrors.not_implemented_error_handler)
    app.add_exception_handler(Exception, kerrors.generic_exception_handler)


REPOSITORY_PREFIX = "/v2/repository"


def _close_repository_api(app: FastAPI) -> None:
    """KServe registers the V2 model-repository API (index, load, unload) with its endpoints; here
    any client could unload the served model. A served model is fixed by its deployment (a new
    version is a new rollout), so the whole prefix answers 403. Called before KServe's endpoints
    are registered: the first route that matches answers, so theirs are never reached."""

    async def refused(path: str) -> JSONResponse:
        return JSONResponse({"error": "the model repository API (load, unload, index) is disabled: the served "
                                      "model is fixed by its deployment", "code": "forbidden", "param": None},
                            status_code=403)

    app.add_api_route(REPOSITORY_PREFIX + "{path:path}", refused,
                      methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)


def build_app(model: EaselModel, metrics: ServeMetrics) -> FastAPI:
    """A FastAPI app serving one loaded model: /, /metrics, V1, V2, /v1/images/generations."""
    app = FastAPI(title="Easel model server", docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=JSONResponse)
    repo = ModelRepository()
    repo.update(model)
    dataplane = _ClientSafeDataPlane(model_registry=repo)

    async def metrics_endpoint() -> Response:
        body, ctype = metrics.exposition()
        return Response(content=body, media_type=ctype)

    app.add_api_route("/", dataplane.live, methods=["GET"])
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    _close_repository_api(app)
    register_v1_endpoints(app, dataplane, None)
    register_v2_endpoints(app, dataplane, None)
    register_openai_route(app, lambda: model)
    _error_handlers(app)
    # outermost first: every request is counted, even one refused for its size
    app.add_middleware(BodyLimitMiddleware, max_bytes=model.cfg["max_body_bytes"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.model, app.state.metrics = model, metrics
    return app


def make_model(model_uri: str | None, name: str = "easel", role: str = "predictor",
               predictor_host: str | None = None, config: dict | None = None, generate_only: bool = False,
               predictor_protocol: str = "v1", metrics: ServeMetrics | None = None) -> EaselModel:
    """The loaded model of a role."""
    if role not in ROLES:
        raise ValueError(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(name, str) or not name.strip() or "/" in name or ":" in name:
        raise ValueError(f"name: the served model name must be a non-empty string without '/' or ':', got {name!r}")
    if role == "transformer":
        model = EaselTransformer(name, model_uri, predictor_host, config, protocol=predictor_protocol,
                                 metrics=metrics)
    else:
        if predictor_host:
            raise ValueError("predictor_host: only a transformer forwards to a predictor")
        model = EaselModel(name, model_uri, config, generate_only=generate_only, metrics=metrics)
    model.load()
    return model


def _uvicorn_config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    # log_config=None: uvicorn leaves the process's logging alone; asyncio loop (no uvloop needed)
    return uvicorn.Config(app, host=host, port=port, log_config=None, loop="asyncio", lifespan="off",
                          timeout_keep_alive=65, access_log=False)


def serve(model_uri: str | None, name: str = "easel", host: str = "127.0.0.1", port: int = 8080,
          role: str = "predictor", predictor_host: str | None = None, config: dict | None = None,
          generate_only: bool = False, predictor_protocol: str = "v1") -> None:
    """Load the model and serve it until interrupted (SIGINT/SIGTERM)."""
    metrics = ServeMetrics()
    model = make_model(model_uri, name, role, predictor_host, config, generate_only, predictor_protocol, metrics)
    _apply_threads(model.cfg)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines", host)
    log.info("serving %s (%s) on http://%s:%d", name, role, host, port)
    try:
        uvicorn.Server(_uvicorn_config(build_app(model, metrics), host, port)).run()
    finally:
        model.stop()


def _apply_threads(cfg: dict) -> None:
    """serve.torch_threads, for a server that owns its process."""
    if cfg.get("torch_threads"):
        import torch
        torch.set_num_threads(int(cfg["torch_threads"]))


@dataclass
class RunningServer:
    base_url: str
    port: int
    model: EaselModel
    metrics: ServeMetrics
    stop: Callable[[], None]


def start_in_thread(model_uri: str | None, name: str = "easel", host: str = "127.0.0.1", port: int = 0,
                    role: str = "predictor", predictor_host: str | None = None, config: dict | None = None,
                    generate_only: bool = False, predictor_protocol: str = "v1",
                    timeout: float = 60.0) -> RunningServer:
    """Serve in a daemon thread (port 0: a free port); returns once it accepts connections."""
    metrics = ServeMetrics()
    # torch_threads is not applied here: it would change the torch settings of the caller's process
    model = make_model(model_uri, name, role, predictor_host, config, generate_only, predictor_protocol, metrics)
    server = uvicorn.Server(_uvicorn_config(build_app(model, metrics), host, port))
    thread = threading.Thread(target=server.run, name=f"easel-serve-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server for {name} exited during start-up (port {port} taken?)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server for {name} did not start within {timeout:.0f} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=15)
        model.stop()

    return RunningServer(f"http://{host}:{bound}", bound, model, metrics, stop)
