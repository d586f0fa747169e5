"""Prometheus metrics for `gpt2kit serve` (GET /metrics), kept by prometheus_client, an optional dependency.

Names follow vLLM's, with a `gpt2kit:` prefix, so a dashboard written for vLLM needs only the prefix changed:

| metric | type | what |
|---|---|---|
| `gpt2kit:http_requests_total{endpoint, status}` | counter | HTTP requests answered, by route and status code |
| `gpt2kit:prompt_tokens_total` | counter | prompt tokens prefilled (a prompt with n sequences counts once) |
| `gpt2kit:generation_tokens_total` | counter | tokens generated |
| `gpt2kit:embedding_tokens_total` | counter | tokens embedded |
| `gpt2kit:sequences_cancelled_total` | counter | sequences dropped because their client went away |
| `gpt2kit:num_requests_running` | gauge | prompts with sequences in the running batch |
| `gpt2kit:num_requests_waiting` | gauge | prompts and embedding requests queued (what --max-queue bounds) |
| `gpt2kit:e2e_request_latency_seconds{endpoint}` | histogram | arrival to last byte, successful model requests |
| `gpt2kit:time_to_first_token_seconds{endpoint}` | histogram | arrival to the first generated token |

The counters and gauges of the engine are read from it when scraped (`EngineCollector`), so they cost the
engine thread nothing; the HTTP ones are kept by `Instrument`, an ASGI middleware outside everything else
(401s and 413s are counted too). Every server has its own registry, so several can live in one process.
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "gpt2kit[serve]" (or prometheus_client)'
START_KEY = "gpt2kit.start"  # the ASGI scope key holding the request's arrival time (time.perf_counter)
# The endpoints whose latency is a model's: the ones the histograms are about.
MODEL_ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")
# vLLM's buckets, cut to what a CPU server sees.
TTFT_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
)
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    60.0,
    120.0,
)


class EngineCollector:
    """The engine's counters and queues, read at scrape time (a prometheus_client custom collector)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        e, s = self.engine, self.engine.stats
        running = len({id(seq.request) for seq in list(e.active)})  # a copy: the engine thread changes it
        yield GaugeMetricFamily(
            "gpt2kit:num_requests_running", "Prompts with sequences in the running batch.", value=running
        )
        yield GaugeMetricFamily(
            "gpt2kit:num_requests_waiting",
            "Prompts and embedding requests waiting in the queues (bounded by --max-queue).",
            value=e.queued,
        )
        for name, doc, value in (
            ("prompt_tokens", "Prompt tokens prefilled (a prompt with n sequences counts once).", s.prompt_tokens),
            ("generation_tokens", "Tokens generated.", s.tokens),
            ("embedding_tokens", "Tokens embedded.", s.embed_tokens),
            ("sequences_cancelled", "Sequences dropped because their client went away.", s.cancelled),
        ):  # fmt: skip
            yield CounterMetricFamily(f"gpt2kit:{name}", doc, value=value)


class Metrics:
    """The server's registry: HTTP counters and histograms it keeps, and the engine's collector."""

    def __init__(self, engine) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpt2kit:http_requests",
            "HTTP requests answered, by endpoint (the route) and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gpt2kit:e2e_request_latency_seconds",
            "Seconds from a request's arrival to its response's last byte (successful model requests).",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "gpt2kit:time_to_first_token_seconds",
            "Seconds from a generation request's arrival to its first generated token.",
            ["endpoint"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine))

    def first_token(self, scope: dict[str, Any], endpoint: str) -> None:
        start = scope.get(START_KEY)
        if start is not None:
            self.ttft.labels(endpoint).observe(time.perf_counter() - start)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the text format the scraper asked for (Prometheus' or OpenMetrics): (body,
        content type)."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def create(engine) -> Metrics | None:
    """Metrics for the engine, or None (with a log line) when prometheus_client is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        logger.info("GET /metrics is off: prometheus_client is not installed (%s)", INSTALL_HINT)
        return None
    return Metrics(engine)


class Instrument:
    """ASGI middleware: stamps each request's arrival in its scope (START_KEY) and, with metrics, counts it
    by endpoint and status and times the model endpoints."""

    def __init__(self, app, metrics: Metrics | None, routes) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = list(routes)

    def endpoint(self, path: str) -> str:
        """The route's path template (a bounded set of label values), or "other"."""
        for route in self.routes:
            if route.path_regex.match(path):
                return route.path
        return "other"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = scope[START_KEY] = time.perf_counter()
        if self.metrics is None:
            return await self.app(scope, receive, send)
        status = 500  # what uvicorn answers when the app sends nothing

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            endpoint = self.endpoint(scope["path"])
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if endpoint in MODEL_ENDPOINTS and status == 200:
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
