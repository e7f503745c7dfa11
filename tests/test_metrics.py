"""``GET /metrics``: Prometheus' text format, counted across gunicorn workers, with bounded labels
and no secret or content in it; ``METRICS_TOKEN`` guards it when set."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import LiveServer, make_key, seed, completion_body, start_gunicorn, stop_server
from .upstream_double import Failure, Scripted, UpstreamDouble

UPSTREAM_KEY = "sk-upstream-metrics-secret"
METRICS_TOKEN = "scrape-me-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of an exposition: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def requests_counted(text: str, route: str, status: str, method: str = "GET") -> float:
    key = ("completion_store_http_requests_total", (("method", method), ("route", route), ("status", status)))
    return samples(text).get(key, 0.0)


# --- In one process (the test client) -----------------------------------------------------


def test_requests_are_counted_by_route_template_and_status(client: Any, auth: dict[str, str]) -> None:
    seed(completion_body("chatcmpl-secret-id"))
    before = client.get("/metrics").get_data(as_text=True)
    route = "/v1/chat/completions/<path:completion_id>"
    for _ in range(3):
        assert client.get("/v1/chat/completions/chatcmpl-secret-id", headers=auth).status_code == 200
    assert client.get("/v1/chat/completions/nope", headers=auth).status_code == 404
    assert client.get("/no/such/page").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    after = response.get_data(as_text=True)
    assert requests_counted(after, route, "200") - requests_counted(before, route, "200") == 3
    assert requests_counted(after, route, "404") - requests_counted(before, route, "404") == 1
    assert requests_counted(after, "unmatched", "404") - requests_counted(before, "unmatched", "404") == 1
    assert samples(after)[("completion_store_completions", ())] == 1
    assert samples(after)[("completion_store_database_up", ())] == 1
    assert "chatcmpl-secret-id" not in after and "nope" not in after and "/no/such" not in after
    assert auth["Authorization"].split()[1] not in after
    histogram = ("completion_store_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))
    assert samples(after)[histogram] - samples(before).get(histogram, 0) == 4


def test_a_metrics_token_guards_it(client: Any, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "METRICS_TOKEN", METRICS_TOKEN)
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert allowed.status_code == 200
    assert METRICS_TOKEN not in allowed.get_data(as_text=True)


# --- Across two gunicorn workers ----------------------------------------------------------


@pytest.fixture
def upstream_double() -> Iterator[UpstreamDouble]:
    double = UpstreamDouble().start()
    yield double
    double.stop()


@pytest.fixture
def two_workers(app: Any, database_url: str, upstream_double: UpstreamDouble, tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    """gunicorn with two workers, its metrics folder in tmp_path (left by an earlier run: emptied at start)."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"left over from an earlier run")
    server = start_gunicorn(
        {"DATABASE_URL": database_url, "UPSTREAM_BASE_URL": upstream_double.url, "UPSTREAM_API_KEY": UPSTREAM_KEY, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        workers=2,
        threads=2,
    )
    yield server, folder
    stop_server(server)


def scrape(server: LiveServer) -> str:
    response = httpx.get(f"{server.url}/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    return response.text


def worker_pids(server: LiveServer) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.process.pid)], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def test_counts_add_up_across_two_workers_and_survive_one_dying(two_workers: tuple[LiveServer, Path], upstream_double: UpstreamDouble) -> None:
    server, folder = two_workers
    key = make_key(name="metrics-test")
    def counting_pids() -> set[str]:
        return {name.rsplit("_", 1)[-1] for name in os.listdir(folder) if name.startswith("counter_")}

    refused = 0
    while refused < 40 or (len(counting_pids()) < 2 and refused < 1000):  # a new connection each, until both workers took some
        assert httpx.get(f"{server.v1}/chat/completions", headers={"Connection": "close"}).status_code == 401
        refused += 1
    create = {"model": "gpt-test", "messages": [{"role": "user", "content": "a very private question"}], "store": True}
    headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
    assert httpx.post(f"{server.v1}/chat/completions", json=create, headers=headers).status_code == 200
    assert httpx.post(f"{server.v1}/chat/completions", json={**create, "stream": True}, headers=headers).status_code == 200
    upstream_double.reset(Failure(500, {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}))
    assert httpx.post(f"{server.v1}/chat/completions", json=create, headers=headers).status_code == 500
    upstream_double.reset(Scripted())

    assert len(counting_pids()) == 2, f"both workers counted ({sorted(os.listdir(folder))}); the leftover file was removed"
    for _ in range(6):  # whichever worker answers, it tells the sum of both
        text = scrape(server)
        assert requests_counted(text, "/v1/chat/completions", "401") == refused
    found = samples(text)
    assert found[("completion_store_completions_stored_total", (("stream", "false"),))] == 1
    assert found[("completion_store_completions_stored_total", (("stream", "true"),))] == 1
    assert found[("completion_store_upstream_errors_total", (("status", "500"),))] == 1
    assert found[("completion_store_upstream_request_duration_seconds_count", (("stream", "false"),))] == 2
    assert found[("completion_store_streams_open", ())] == 0
    assert requests_counted(text, "/v1/chat/completions", "200", method="POST") == 2
    for secret in (key, UPSTREAM_KEY, "a very private question", "Hello"):
        assert secret not in text
    assert "chatcmpl" not in text

    victim = worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (victim in worker_pids(server) or len(worker_pids(server)) < 2):
        time.sleep(0.1)
    time.sleep(1.0)  # the new worker loads the app
    for _ in range(4):
        assert requests_counted(scrape(server), "/v1/chat/completions", "401") == refused, "a dead worker's counts still count"
