"""Plain helpers for the tests: test data, the database, a live gunicorn server.

Fixtures live in ``tests/fixtures/`` (loaded by ``conftest.py``); these are the functions
and classes the tests and fixtures import by name.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from webapp import store
from webapp.extensions import db, write_transaction

from .openapi import check_response

ROOT = Path(__file__).resolve().parents[1]
TEST_SECRET_KEY = "test-secret-key-not-for-production"


def require(flag: str, reason: str) -> None:
    """Skip with ``reason``, or fail when the environment variable ``flag`` is set (in CI)."""
    if os.environ.get(flag) == "1":
        pytest.fail(f"{reason} ({flag}=1 makes this a failure)")
    pytest.skip(reason)


@contextmanager
def scratch_database(backend: str, directory: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database of ``backend`` (``sqlite``: a file in
    ``directory``; ``postgresql``: on the ``TEST_DATABASE_URL`` server), dropped afterwards.

    Skips without ``TEST_DATABASE_URL`` (fails with ``REQUIRE_POSTGRES=1``).
    """
    if backend == "sqlite":
        yield f"sqlite:///{directory / f'scratch-{uuid.uuid4().hex[:8]}.db'}"
        return
    admin_url = os.environ.get("TEST_DATABASE_URL") or None
    if admin_url is None:
        require("REQUIRE_POSTGRES", "TEST_DATABASE_URL is not set: PostgreSQL tests skipped")
    from webapp.config import normalize_database_url

    maintenance = sa.create_engine(normalize_database_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"cs_test_{os.getpid()}_{secrets.token_hex(3)}"
    with maintenance.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(normalize_database_url(admin_url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with maintenance.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        maintenance.dispose()


def migrate_database(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations on ``url`` up to ``revision``."""
    from flask_migrate import upgrade

    from webapp import create_app

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": TEST_SECRET_KEY, "TESTING": True})
    with app.app_context():
        upgrade(revision=revision)
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


def make_key(*, read_only: bool = False, name: str | None = None) -> str:
    """Create an API key in the current app's database and return its secret."""
    with write_transaction() as session:
        _key, secret = store.create_api_key(session, name=name or f"key-{uuid.uuid4().hex[:8]}", read_only=read_only)
    return secret


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


FINE_TUNING_ROLES = ("system", "developer", "user", "assistant", "tool")


def check_fine_tuning_line(line: dict[str, Any]) -> None:
    """Assert that a ``chat`` export line has the shape of OpenAI's chat fine-tuning format:
    ``messages`` (roles it knows; an assistant message with content, tool calls or a refusal;
    a tool message answering a call), and ``tools``/``parallel_tool_calls`` of their types when present."""
    assert set(line) <= {"messages", "tools", "parallel_tool_calls"}, line
    assert isinstance(line["messages"], list) and line["messages"], line
    for message in line["messages"]:
        assert message["role"] in FINE_TUNING_ROLES, message
        if message["role"] == "assistant":
            assert any(message.get(name) is not None for name in ("content", "tool_calls", "refusal")), message
            for call in message.get("tool_calls") or []:
                assert call["type"] == "function" and isinstance(call["function"]["arguments"], str), call
        if message["role"] == "tool":
            assert isinstance(message["tool_call_id"], str), message
    assert line["messages"][-1]["role"] == "assistant", "each example ends with the reply it teaches"
    if "tools" in line:
        assert all(tool["type"] == "function" and tool["function"]["name"] for tool in line["tools"]), line
    if "parallel_tool_calls" in line:
        assert isinstance(line["parallel_tool_calls"], bool)
