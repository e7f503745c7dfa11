"""Hardening: session cookie flags, keys stored hashed, and no secret in any log line."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from webapp import create_app
from webapp.extensions import db
from webapp.models import ApiKey, User

from .admin_helpers import PASSWORD, USERNAME, csrf_token, make_user, sign_in
from .helpers import TEST_SECRET_KEY, completion_body, make_key, seed, start_gunicorn, stop_server


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
