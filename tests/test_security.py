"""Hardening: session cookie flags, keys stored hashed, and no secret in any log line."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from webapp import create_app
from webapp.extensions import db
from webapp.models import ApiKey, User
from webapp.store import MAX_SIGN_IN_ATTEMPTS

from .admin_helpers import PASSWORD, USERNAME, csrf_token, make_user, sign_in
from .helpers import ROOT, TEST_SECRET_KEY, LiveServer, completion_body, make_key, seed, start_gunicorn, stop_server


def session_cookie(response) -> str:  # type: ignore[no-untyped-def]
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies, "no session cookie was set"
    return cookies[-1]


def test_session_cookie_is_httponly_and_lax_and_not_secure_over_http(client: FlaskClient, user: str) -> None:
    cookie = session_cookie(sign_in(client))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_is_secure_over_https(app: Flask, user: str) -> None:
    client = app.test_client()
    page = client.get("/login", base_url="https://localhost").get_data(as_text=True)
    response = client.post(
        "/login",
        data={"username": USERNAME, "password": PASSWORD, "csrf_token": csrf_token(page)},
        base_url="https://localhost",
        # Over HTTPS Flask-WTF also checks that the form came from this site, as a browser says.
        headers={"Referer": "https://localhost/login"},
    )
    assert "Secure" in session_cookie(response)


def test_the_api_keeps_no_session_and_the_admin_keeps_its_own(client: FlaskClient, user: str) -> None:
    """Requests under /v1 get Flask's null session: a signed-in browser's cookie is not read,
    none is set or refreshed, and the admin pages keep their session beside them."""
    from flask import session
    from flask.sessions import NullSession

    sign_in(client)
    key = make_key()
    for path in ("/v1/chat/completions", "/v1", "/v1/nowhere"):
        response = client.get(path, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code in (200, 404)
        assert not response.headers.getlist("Set-Cookie") and "Cookie" not in response.headers.get("Vary", "")
    for path, sessionless in (("/v1/chat/completions", True), ("/v1x", False), ("/", False)):
        with client.application.test_request_context(path):
            assert isinstance(session._get_current_object(), NullSession) is sessionless  # type: ignore[attr-defined]
    assert client.get("/").status_code == 200  # still signed in


def test_behind_a_trusted_proxy_forwarded_https_counts(database_url: str, app: Flask, user: str) -> None:
    proxied = create_app({"DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY, "TRUSTED_PROXIES": 1})
    client = proxied.test_client()
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "store.example", "Referer": "https://store.example/login"}
    page = client.get("/login", headers=headers).get_data(as_text=True)
    response = client.post("/login", data={"username": USERNAME, "password": PASSWORD, "csrf_token": csrf_token(page)}, headers=headers)
    assert "Secure" in session_cookie(response)


def test_keys_and_passwords_are_stored_only_as_hashes(app: Flask) -> None:
    secret = make_key(name="hashed")
    make_user("hasher", "pw-never-stored")
    key = db.session.scalars(select(ApiKey)).one()
    stored_user = db.session.scalars(select(User)).one()
    assert secret not in (key.key_hash, key.prefix) and len(key.key_hash) == 64
    assert "pw-never-stored" not in stored_user.password_hash


def test_no_secret_reaches_the_logs(app: Flask, database_url: str, tmp_path: Path) -> None:
    """Run a server with debug logging and access logs, use every secret, then read the logs."""
    secret = make_key(name="logged")
    make_user("logger", "hunter2-password")
    seed(completion_body("c1"))
    log = tmp_path / "server.log"
    server = start_gunicorn(
        {"DATABASE_URL": database_url, "UPSTREAM_API_KEY": "sk-upstream-secret", "UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1"},
        workers=1,
        extra_args=["--log-level", "debug", "--access-logfile", str(log), "--error-logfile", str(log)],
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            auth = {"Authorization": f"Bearer {secret}"}
            http.get("/v1/chat/completions", headers=auth)
            http.post("/v1/chat/completions/c1", json={"metadata": {"a": "b"}}, headers=auth)
            http.get("/v1/chat/completions", headers={"Authorization": "Bearer cs-wrong-secret-attempt"})
            http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, headers=auth)
            page = http.get("/login").text
            http.post("/login", data={"username": "logger", "password": "hunter2-password", "csrf_token": csrf_token(page)})
            http.post("/login", data={"username": "logger", "password": "wrong-hunter3", "csrf_token": csrf_token(page)})
    finally:
        stop_server(server)
    written = log.read_text()
    assert "GET /v1/chat/completions" in written  # the log is really there
    for secret_text in (secret, "cs-wrong-secret-attempt", "hunter2-password", "wrong-hunter3", "sk-upstream-secret", TEST_SECRET_KEY):
        assert secret_text not in written, secret_text


def test_a_key_revoked_elsewhere_stops_working_within_the_cache_time(live_server, app: Flask) -> None:  # type: ignore[no-untyped-def]
    """Servers remember a good key for API_KEY_CACHE_SECONDS (2 s); a revocation from another process lands within that."""
    from webapp import store
    from webapp.extensions import write_transaction

    secret = make_key(name="soon-revoked")
    auth = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=live_server.v1, headers=auth, timeout=10) as http:
        for _ in range(4):  # both workers have seen it
            assert http.get("/chat/completions").status_code == 200
        with write_transaction() as session:
            store.revoke_api_key(session, name="soon-revoked")
        revoked_at = time.monotonic()
        while http.get("/chat/completions").status_code == 200:
            assert time.monotonic() - revoked_at < 3, "the revoked key still worked after 3 s"
            time.sleep(0.05)
        for _ in range(4):
            assert http.get("/chat/completions").status_code == 401


# --- Sign-in throttle, through live gunicorn behind a (pretend) trusted proxy ------------------


@pytest.fixture(scope="module")
def _proxied_server(database_url: str) -> Iterator[LiveServer]:
    server = start_gunicorn({"DATABASE_URL": database_url, "TRUSTED_PROXIES": "1"}, workers=2, threads=8)
    yield server
    stop_server(server)


@pytest.fixture
def proxied_server(app: Flask, _proxied_server: LiveServer) -> LiveServer:
    """gunicorn (2 workers, 8 threads each: 16 requests at once) with TRUSTED_PROXIES=1, over the emptied database."""
    return _proxied_server


class Browser:
    """A browser behind the proxy, at client address ``address``: it has loaded the sign-in form."""

    def __init__(self, server: LiveServer, address: str) -> None:
        self.http = httpx.Client(base_url=server.url, headers={"X-Forwarded-For": address}, timeout=30)
        self.token = csrf_token(self.http.get("/login").text)

    def sign_in(self, username: str, password: str) -> httpx.Response:
        return self.http.post("/login", data={"username": username, "password": password, "csrf_token": self.token})


def outcome(response: httpx.Response) -> str:
    """Return what a sign-in answer says: signed in, checked and wrong, or throttled."""
    if response.status_code == 303:
        return "signed in"
    if response.status_code == 200 and "Incorrect username or password." in response.text:
        return "checked"
    assert response.status_code == 429 and "Too many sign-in attempts." in response.text, response.status_code
    return "throttled"


def test_sixteen_concurrent_guesses_get_at_most_five_passwords_checked(proxied_server: LiveServer, user: str) -> None:
    browsers = [Browser(proxied_server, "203.0.113.7") for _ in range(16)]
    start = threading.Barrier(16)

    def guess(n: int) -> str:
        start.wait()
        return outcome(browsers[n].sign_in(USERNAME, f"guess-{n}"))

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(guess, range(16)))
    print(f"figures: 16 concurrent wrong sign-ins: {outcomes.count('checked')} checked, {outcomes.count('throttled')} throttled")
    assert outcomes.count("checked") == MAX_SIGN_IN_ATTEMPTS
    assert outcomes.count("throttled") == 16 - MAX_SIGN_IN_ATTEMPTS
    assert outcome(browsers[0].sign_in(USERNAME, PASSWORD)) == "throttled", "from that address even the right password waits"


def test_another_clients_guesses_do_not_lock_out_the_real_user(proxied_server: LiveServer, user: str) -> None:
    attacker, owner = Browser(proxied_server, "203.0.113.7"), Browser(proxied_server, "198.51.100.2")
    assert [outcome(attacker.sign_in(USERNAME, "guess")) for _ in range(8)] == ["checked"] * 5 + ["throttled"] * 3
    assert outcome(owner.sign_in(USERNAME, PASSWORD)) == "signed in"
    assert owner.http.get("/").status_code == 200


# --- Data at rest and serving -------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, whatever the test runner's is."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_instance_folder_is_private(umask_022: None) -> None:
    app = create_app({"DATABASE_URL": "sqlite://", "SECRET_KEY": TEST_SECRET_KEY})
    assert mode(Path(app.instance_path)) == 0o700


def test_the_database_files_are_private_after_db_upgrade(umask_022: None, tmp_path: Path) -> None:
    """``flask db upgrade`` under umask 022 makes the database, its -wal and -shm 0600."""
    path = tmp_path / "completions.db"
    url = f"sqlite:///{path}"
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", "db", "upgrade"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": url, "SECRET_KEY": TEST_SECRET_KEY}, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert mode(path) == 0o600
    # A server holding the database open in WAL mode: its -wal and -shm files are private too.
    served = create_app({"DATABASE_URL": url, "SECRET_KEY": TEST_SECRET_KEY})
    with served.app_context():
        make_key(name="wal")
        connection = db.engine.connect()
        try:
            connection.execute(sa.text("SELECT count(*) FROM api_keys"))
            wal, shm = path.with_name("completions.db-wal"), path.with_name("completions.db-shm")
            assert wal.exists() and shm.exists()
            assert (mode(wal), mode(shm)) == (0o600, 0o600)
        finally:
            connection.close()
            db.engine.dispose()


def test_files_an_older_version_left_readable_are_tightened(umask_022: None, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.touch(mode=0o644)
    path.with_name("old.db-wal").touch(mode=0o644)
    create_app({"DATABASE_URL": f"sqlite:///{path}", "SECRET_KEY": TEST_SECRET_KEY})
    assert mode(path) == 0o600 and mode(path.with_name("old.db-wal")) == 0o600


@pytest.mark.parametrize("bind, expected", [(None, "127.0.0.1:8000"), ("0.0.0.0:9000", "0.0.0.0:9000")])
def test_gunicorn_listens_on_this_machine_only_unless_told(monkeypatch: pytest.MonkeyPatch, bind: str | None, expected: str) -> None:
    if bind is None:
        monkeypatch.delenv("BIND", raising=False)
    else:
        monkeypatch.setenv("BIND", bind)
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == expected
