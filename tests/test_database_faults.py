"""With PostgreSQL cut off, the API answers 503 in the envelope quickly; when it is back, the
same processes serve again without a restart."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from .helpers import completion_body, free_port, make_key, seed, start_gunicorn, stop_server
from .relay import TcpRelay
from .upstream_double import UpstreamDouble


def timed(call) -> tuple[httpx.Response, float]:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def test_database_cut_off_then_back(backend: str, database_url: str) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite is embedded: there is no connection to cut")
    url = sa.engine.make_url(database_url)
    relay = TcpRelay((url.host or "127.0.0.1", url.port or 5432), free_port())
    relay.start()
    seed(completion_body("c1"))
    key = make_key(name="faults")
    relayed = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    upstream = UpstreamDouble().start()
    server = start_gunicorn(
        {"DATABASE_URL": relayed, "DATABASE_TIMEOUT": "2", "UPSTREAM_BASE_URL": upstream.url}, workers=2, threads=4
    )
    created = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "store": True}
    try:
        with httpx.Client(base_url=server.v1, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            calls = {
                "list": lambda: http.get("/chat/completions"),
                "retrieve": lambda: http.get("/chat/completions/c1"),
                "update": lambda: http.post("/chat/completions/c1", json={"metadata": {"a": "b"}}),
                # store: true writes on the driver's own connection (store.driver), not the Session's
                "create": lambda: http.post("/chat/completions", json=created),
                "health": lambda: http.get(f"{server.url}/healthz"),
            }
            for call in calls.values():
                assert call().status_code == 200

            relay.stop()
            slowest = 0.0
            for name, call in calls.items():
                for _ in range(3):  # every pooled connection, in both workers, meets the cut
                    response, elapsed = timed(call)
                    assert response.status_code == 503, (name, response.text)
                    error = response.json()["error"]
                    assert error["type"] == "server_error" and set(error) == {"message", "type", "param", "code"}
                    assert elapsed < 5, (name, elapsed)
                    slowest = max(slowest, elapsed)

            relay.start()
            back = time.monotonic()
            deadline = back + 15
            while calls["list"]().status_code != 200:
                assert time.monotonic() < deadline, "the app did not recover once the database was back"
                time.sleep(0.2)
            print(f"\nfigures: 15 requests while cut off, all 503, slowest {slowest * 1000:.0f} ms; serving again {(time.monotonic() - back) * 1000:.0f} ms after the database came back")
            for name, call in calls.items():
                for _ in range(4):
                    assert call().status_code == 200, name
            assert http.get("/chat/completions/c1").json()["metadata"] == {"a": "b"}
            # 1 create before the cut and 4 after it were stored, none of the 3 refused while cut off.
            assert len(http.get("/chat/completions", params={"limit": 100}).json()["data"]) == 1 + 1 + 4
    finally:
        stop_server(server)
        relay.stop()
        upstream.stop()
