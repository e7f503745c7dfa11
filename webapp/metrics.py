"""Prometheus metrics: what the app counts, and ``GET /metrics`` in Prometheus' text format.

Under gunicorn every worker process counts on its own; ``prometheus_client``'s multiprocess
mode adds them up at scrape time from files in ``PROMETHEUS_MULTIPROC_DIR``, which
``gunicorn.conf.py`` sets up, empties at start and tidies when a worker exits. Without that
variable (``flask run``, the tests' client) the counts live in this process.

Labels are bounded: the route template (never the URL, so no completion id), the method and
the status. Nothing here sees a header, a key or a body.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from .extensions import db
from .models import CompletionRollup

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# A long stream or a slow upstream takes minutes: the buckets reach that far.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "completion_store_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "completion_store_http_request_duration_seconds",
    "Seconds from a request's arrival to its answer's headers (a stream's body goes on after), by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_LATENCY = Histogram(
    "completion_store_upstream_request_duration_seconds",
    "Seconds until the upstream model server's answer headers arrived, by whether the create streams.",
    ["stream"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "completion_store_upstream_errors",
    "Upstream requests that failed, by the upstream's status, or 'timeout' or 'unreachable' when it gave none.",
    ["status"],
)
COMPLETIONS_STORED = Counter(
    "completion_store_completions_stored",
    "Completions stored through POST /v1/chat/completions, by whether they were streamed.",
    ["stream"],
)
STREAMS_OPEN = Gauge(
    "completion_store_streams_open",
    "Streaming creates being relayed right now.",
    multiprocess_mode="livesum",
)

_STARTED = "completion_store.metrics.started"
UNMATCHED = "unmatched"


# --- Counting -----------------------------------------------------------------------------


def _before_request() -> None:
    g.setdefault(_STARTED, time.perf_counter())


def _after_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    started = g.get(_STARTED)
    REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    if started is not None:
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
    return response


def upstream_answered(seconds: float, *, stream: bool, status: int) -> None:
    """Time and count an upstream answer that took ``seconds`` to its status and headers."""
    UPSTREAM_LATENCY.labels("true" if stream else "false").observe(seconds)
    if status >= 400:
        UPSTREAM_ERRORS.labels(str(status)).inc()


def upstream_failed(reason: str) -> None:
    """Count an upstream request that got no answer: ``timeout`` or ``unreachable``."""
    UPSTREAM_ERRORS.labels(reason).inc()


def completion_stored(*, stream: bool) -> None:
    """Count a completion stored by a create (call it once its transaction committed)."""
    COMPLETIONS_STORED.labels("true" if stream else "false").inc()


# --- Reading ------------------------------------------------------------------------------


class StoreCollector:
    """What the database holds, read at scrape time: live completions, and whether it answered."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("completion_store_database_up", "1 when the database answered this scrape, else 0.")
        live = GaugeMetricFamily("completion_store_completions", "Live (not deleted) completions in the store.")
        try:
            total = self.session.scalar(select(func.sum(CompletionRollup.completions)).where(CompletionRollup.span == 86400))
            self.session.rollback()
        except Exception:  # a scrape must answer while the database does not
            self.session.rollback()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        live.add_metric([], int(total or 0))
        yield up
        yield live


def exposition(session: Any) -> bytes:
    """Return every metric in Prometheus' text format: all worker processes' counts and the store's."""
    if os.environ.get(MULTIPROC_DIR):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    store_registry = CollectorRegistry()
    store_registry.register(StoreCollector(session))
    return generate_latest(registry) + generate_latest(store_registry)


def _authorized() -> bool:
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        return True
    sent = request.headers.get("Authorization", "")
    return sent.startswith("Bearer ") and hmac.compare_digest(sent[len("Bearer "):].encode(), token.encode())


def init_app(app: Flask) -> None:
    """Count every request of ``app`` and serve ``GET /metrics`` (behind ``METRICS_TOKEN`` when set)."""
    app.before_request(_before_request)
    app.after_request(_after_request)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus' text format. With ``METRICS_TOKEN`` set, only ``Authorization: Bearer <token>`` may read it."""
        if not _authorized():
            return Response(
                "A bearer token is required: set it in Prometheus' scrape config (authorization.credentials).\n",
                status=401,
                mimetype="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"', "Cache-Control": "no-store"},
            )
        return Response(exposition(db.session), content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
