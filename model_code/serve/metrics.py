"""Prometheus metrics of one server: requests, latency, batch sizes, refusals by policy code.

Each server owns a CollectorRegistry (two servers in one process, as in the transformer /
predictor test, keep separate counts); /metrics exposes it followed by KServe's own
process-wide histograms (preprocess/predict/postprocess latency per model).

    easel_requests_total{route, status}          every HTTP request, by route family and status
    easel_request_seconds{route}                 end-to-end latency as the server sees it
    easel_batch_prompts                          prompts per Generator.generate call
    easel_batch_requests                         client requests merged into one call
    easel_generate_seconds                       time inside Generator.generate
    easel_queue_depth                            requests waiting for the generator
    easel_queue_rejections_total                 requests refused with 503 (queue full)
    easel_refusals_total{policy}                 prompts refused, by policy code
    easel_withheld_total{policy}                 generated images withheld, by policy code
    easel_rewrites_total{source}                 prompts rewritten (builtin | chat | fallback)
"""
from __future__ import annotations

import time

from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def route_of(path: str) -> str:
    """A small fixed set of label values (never the raw path: unbounded label cardinality)."""
    if path.startswith("/v1/images/"):
        return "openai"
    if path.startswith("/v1/models") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models") and path.endswith("/infer"):
        return "v2"
    if path == "/metrics":
        return "metrics"
    return "other"


class ServeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("easel_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("easel_request_seconds", "request latency", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_prompts = Histogram("easel_batch_prompts", "prompts per Generator.generate call",
                                       buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("easel_batch_requests", "requests merged per generate call",
                                        buckets=_BATCH_BUCKETS, registry=r)
        self.generate_seconds = Histogram("easel_generate_seconds", "time in Generator.generate",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("easel_queue_depth", "requests waiting for the generator", registry=r)
        self.queue_rejections = Counter("easel_queue_rejections", "requests refused: queue full", registry=r)
        self.refusals = Counter("easel_refusals", "prompts refused", ["policy"], registry=r)
        self.withheld = Counter("easel_withheld", "generated images withheld", ["policy"], registry=r)
        self.rewrites = Counter("easel_rewrites", "prompts rewritten", ["source"], registry=r)

    def exposition(self) -> tuple[bytes, str]:
        """Our registry, then KServe's process-wide one."""
        return generate_latest(self.registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware: count and time every HTTP request by route family and status."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, t0, status = route_of(scope.get("path", "")), time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
