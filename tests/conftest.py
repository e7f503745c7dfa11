"""Fixtures: one migrated database per backend, a fresh (emptied) one for each test,
the app and its clients, API keys, seeded completions and a live gunicorn server.

Every test that uses ``app`` runs on SQLite and, when ``TEST_DATABASE_URL`` names a
PostgreSQL server, on PostgreSQL too. ``REQUIRE_POSTGRES=1`` turns a missing
PostgreSQL into a failure instead of a skip (``.ci/run`` sets it).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from webapp import create_app, store
from webapp.extensions import db, write_transaction

from .openapi import check_response

# The admin UI's fixtures, for every test module that asks for them by name.
from .admin_fixtures import admin, user  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
TEST_SECRET_KEY = "test-secret-key-not-for-production"
BACKENDS = ["sqlite", "postgresql"]


def require(flag: str, reason: str) -> None:
    """Skip with ``reason``, or fail when the environment variable ``flag`` is set (in CI)."""
    if os.environ.get(flag) == "1":
        pytest.fail(f"{reason} ({flag}=1 makes this a failure)")
    pytest.skip(reason)


def _postgres_admin_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database of each backend for the whole test session."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        _migrate(url)
        yield url
        return
    admin_url = _postgres_admin_url()
    if admin_url is None:
        require("REQUIRE_POSTGRES", "TEST_DATABASE_URL is not set: PostgreSQL tests skipped")
    from webapp.config import normalize_database_url

    maintenance = sa.create_engine(normalize_database_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"cs_test_{os.getpid()}_{secrets.token_hex(3)}"
    with maintenance.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(normalize_database_url(admin_url)).set(database=name).render_as_string(hide_password=False)
    try:
        _migrate(url)
        yield url
    finally:
        with maintenance.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        maintenance.dispose()


def _migrate(url: str) -> None:
    from flask_migrate import upgrade

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": TEST_SECRET_KEY, "TESTING": True})
    with app.app_context():
        upgrade()
        db.engine.dispose()


def empty_database() -> None:
    """Delete every row of every table, resetting sequences, in the current app's database."""
    # The rollup goes last: deleting completions moves it (triggers).
    tables = sorted(reversed(db.metadata.sorted_tables), key=lambda table: table.name == "completion_rollup")
    with write_transaction() as session:
        if db.engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in tables)
            session.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                session.execute(table.delete())
            session.execute(sa.text("DELETE FROM sqlite_sequence"))


class ValidatingClient(FlaskClient):
    """A test client that checks every ``/v1`` JSON answer against the OpenAPI document."""

    def open(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        response = super().open(*args, **kwargs)
        request = response.request
        if request.path.startswith("/v1") and response.is_json:
            check_response(request.method, request.path, response.status_code, response.get_json())
        return response


@pytest.fixture(scope="session")
def base_app(database_url: str) -> Iterator[Flask]:
    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY, "TESTING": True})
    app.test_client_class = ValidatingClient
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def app(base_app: Flask) -> Iterator[Flask]:
    """The app over an emptied database, with an app context pushed for the test body."""
    with base_app.app_context():
        empty_database()
        db.session.remove()
        yield base_app
        db.session.remove()


@pytest.fixture
def backend(app: Flask) -> str:
    """The database backend the current test runs on: ``sqlite`` or ``postgresql``."""
    return db.engine.dialect.name


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):  # type: ignore[no-untyped-def]
    return app.test_cli_runner()


def make_key(*, read_only: bool = False, name: str | None = None) -> str:
    """Create an API key in the current app's database and return its secret."""
    with write_transaction() as session:
        _key, secret = store.create_api_key(session, name=name or f"key-{uuid.uuid4().hex[:8]}", read_only=read_only)
    return secret


@pytest.fixture
def api_key(app: Flask) -> str:
    return make_key(name="test")


@pytest.fixture
def read_only_key(app: Flask) -> str:
    return make_key(name="reader", read_only=True)


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    """Headers for a read-write key."""
    return {"Authorization": f"Bearer {api_key}"}


def completion_body(
    completion_id: str,
    *,
    created: int = 1_700_000_000,
    model: str = "gpt-test",
    content: str = "Hello!",
    metadata: dict[str, str] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return a completion in the export (``store``) format, as the upstream would have answered."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        "service_tier": "default",
        "system_fingerprint": "fp_test",
        "request_id": f"req_{completion_id}",
        "seed": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "tools": None,
        "tool_choice": None,
        "response_format": None,
        "input_user": None,
        "metadata": metadata or {},
        "messages": messages
        if messages is not None
        else [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"Say hello ({completion_id})"},
        ],
    }


def seed(*records: dict[str, Any]) -> None:
    """Store completions (export-format records) in the current app's database, in order."""
    with write_transaction() as session:
        for record in records:
            store.save_completion(
                session, body=record, messages=record["messages"], metadata=record["metadata"], actor="test"
            )


@pytest.fixture
def seeded(app: Flask) -> list[dict[str, Any]]:
    """Five completions, two models, some metadata; created one second apart."""
    records = [
        completion_body(
            f"chatcmpl-{i}",
            created=1_700_000_000 + i,
            model="gpt-a" if i % 2 else "gpt-b",
            metadata={"team": "red" if i < 3 else "blue", "n": str(i)},
        )
        for i in range(5)
    ]
    seed(*records)
    return records


# --- A live server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


def start_gunicorn(env: dict[str, str], *, workers: int = 2, threads: int = 4, extra_args: list[str] | None = None) -> LiveServer:
    """Start gunicorn with ``wsgi:app`` on a free port and wait until /healthz answers.

    ``extra_args`` come after the defaults, so they win (gunicorn takes the last of a repeated flag).
    """
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "gthread", "--threads", str(threads), "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--graceful-timeout", "2", "--log-level", "warning", "--access-logfile", "/dev/null",
            *(extra_args or []),
            "wsgi:app",
        ],
        cwd=ROOT,
        env={**os.environ, "SECRET_KEY": TEST_SECRET_KEY, **env},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return LiveServer(url=url, process=process)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("gunicorn did not answer /healthz within 30 s")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def _live_server(database_url: str) -> Iterator[LiveServer]:
    server = start_gunicorn({"DATABASE_URL": database_url})
    yield server
    stop_server(server)


@pytest.fixture
def live_server(app: Flask, _live_server: LiveServer) -> LiveServer:
    """A gunicorn server (2 workers, 4 threads each) over the same emptied database as ``app``."""
    return _live_server
