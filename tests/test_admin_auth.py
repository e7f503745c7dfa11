"""Signing in and out of the admin UI, the guard on every page, CSRF, security headers and error pages."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from webapp import create_app
from webapp.admin.auth import CONTENT_SECURITY_POLICY, MAX_FAILED_SIGN_INS
from webapp.extensions import db
from webapp.models import User, UserSession, utcnow

from .admin_helpers import PASSWORD, USERNAME, Admin, csrf_token, sign_in, text
from .helpers import TEST_SECRET_KEY, completion_body, seed

PAGES = ["/", "/?model=gpt-a&metadata=team%3Dred", "/completions/c1", "/delete/c1", "/keys", "/keys/revoke?name=ci", "/bulk-changes", "/export?format=chat"]
FORMS = ["/completions/c1", "/delete/c1", "/bulk", "/bulk/apply", "/bulk-changes/1/undo", "/history/1/restore", "/keys", "/keys/revoke", "/logout"]


@pytest.mark.parametrize("url", PAGES)
def test_a_signed_out_visitor_is_sent_to_sign_in_and_back(client: FlaskClient, user: str, url: str) -> None:
    seed(completion_body("c1"))
    response = client.get(url)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    back = sign_in(client, next=response.headers["Location"].split("next=", 1)[1])
    assert back.status_code == 303
    assert back.headers["Location"] == url


@pytest.mark.parametrize("url", FORMS)
def test_a_signed_out_form_post_changes_nothing(client: FlaskClient, user: str, url: str) -> None:
    seed(completion_body("c1", metadata={"keep": "me"}))
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post(url, data={"csrf_token": token, "rows-0-key": "x", "rows-0-value": "y", "version": "1"})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    from webapp import store

    assert store.get_completion(db.session, completion_id="c1").metadata_map == {"keep": "me"}


def test_the_sign_in_page_has_labelled_fields(client: FlaskClient) -> None:
    page = client.get("/login").get_data(as_text=True)
    assert '<label for="username">Username</label>' in page and '<label for="password">Password</label>' in page
    assert 'name="username"' in page and 'name="password"' in page and 'type="password"' in page


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"])
def test_sign_in_never_redirects_off_site(client: FlaskClient, user: str, target: str) -> None:
    response = sign_in(client, next=target)
    assert response.status_code == 303 and response.headers["Location"] == "/"


@pytest.mark.parametrize("username, password", [(USERNAME, "wrong"), ("nobody", PASSWORD), ("nul\x00name", PASSWORD)])
def test_a_wrong_username_or_password_is_refused_alike(client: FlaskClient, user: str, username: str, password: str) -> None:
    response = sign_in(client, username, password)
    assert response.status_code == 200
    assert "Incorrect username or password." in text(response.get_data(as_text=True))
    assert client.get("/").status_code == 302


def test_empty_fields_are_reported_beside_them(client: FlaskClient, user: str) -> None:
    response = sign_in(client, "", "")
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert 'id="username-error" role="alert"' in page and "Enter your username." in page
    assert re.search(r'<input[^>]*aria-describedby="username-error"[^>]*aria-invalid="true"[^>]*id="username"', page)


def _user() -> User:
    db.session.expire_all()
    return db.session.scalars(select(User).where(User.username == USERNAME)).one()


def test_repeated_failures_lock_the_username_for_a_while(client: FlaskClient, user: str) -> None:
    for _ in range(MAX_FAILED_SIGN_INS):
        assert "Incorrect username or password." in text(sign_in(client, USERNAME, "guess").get_data(as_text=True))
    locked = sign_in(client, USERNAME, PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed sign-ins for this username. Try again in 15 minutes." in text(locked.get_data(as_text=True))
    assert client.get("/").status_code == 302
    # Another username is not affected, and the lock ends by itself.
    assert _user().locked_until is not None
    db.session.execute(update(User).values(locked_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert sign_in(client).status_code == 303
    assert client.get("/").status_code == 200
    assert (_user().failed_logins, _user().locked_until) == (0, None)


def test_a_success_clears_earlier_failures(client: FlaskClient, user: str) -> None:
    for _ in range(MAX_FAILED_SIGN_INS - 1):
        sign_in(client, USERNAME, "guess")
    assert _user().failed_logins == MAX_FAILED_SIGN_INS - 1
    assert sign_in(client).status_code == 303
    assert _user().failed_logins == 0


def _sid(client: FlaskClient) -> str:
    with client.session_transaction() as session:
        return session["sid"]


def test_each_sign_in_gets_a_new_session_and_sign_out_ends_it_on_the_server(client: FlaskClient, user: str) -> None:
    sign_in(client)
    first = _sid(client)
    sign_in(client)
    second = _sid(client)
    assert first != second
    assert first not in {row.id for row in db.session.scalars(select(UserSession))}, "only a hash is stored"
    stolen = client.get_cookie("session").value
    token = csrf_token(client.get("/").get_data(as_text=True))
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    assert "You are signed out." in text(client.get("/login").get_data(as_text=True))
    # The cookie from before signing out no longer signs anyone in.
    client.set_cookie("session", stolen)
    assert client.get("/").status_code == 302
    assert db.session.scalar(select(func.count()).select_from(UserSession)) == 1  # the first sign-in's, still live


def test_a_session_older_than_its_lifetime_is_over(app: Flask, admin: Admin) -> None:
    db.session.execute(update(UserSession).values(created_at=utcnow() - app.permanent_session_lifetime - timedelta(seconds=1)))
    db.session.commit()
    assert admin.get("/").status_code == 302


def test_sign_out_is_a_post(admin: Admin) -> None:
    assert admin.get("/logout").status_code == 405
    assert admin.get("/").status_code == 200


@pytest.mark.parametrize("url", FORMS)
def test_a_form_without_its_csrf_token_is_refused(admin: Admin, url: str) -> None:
    seed(completion_body("c1", metadata={"keep": "me"}))
    response = admin.post(url, {"rows-0-key": "x", "rows-0-value": "y", "version": "1", "name": "k"}, csrf=False)
    assert response.status_code == 403
    page = text(response.get_data(as_text=True))
    assert "The CSRF token is missing." in page and "Completion Store" in page
    assert admin.get("/").status_code == 200, "still signed in"
    from webapp import store

    assert store.get_completion(db.session, completion_id="c1").metadata_map == {"keep": "me"}


def test_a_wrong_csrf_token_is_refused(admin: Admin) -> None:
    seed(completion_body("c1"))
    response = admin.client.post("/delete/c1", data={"csrf_token": "forged"})
    assert response.status_code == 403
    assert admin.get("/completions/c1").status_code == 200


def test_the_sign_in_form_needs_its_token_too(client: FlaskClient, user: str) -> None:
    response = client.post("/login", data={"username": USERNAME, "password": PASSWORD})
    assert response.status_code == 403
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("url", ["/", "/login", "/keys", "/no-such-page", "/completions/missing"])
def test_html_pages_carry_the_security_headers(client: FlaskClient, user: str, url: str) -> None:
    sign_in(client)
    response = client.get(url)
    assert response.mimetype == "text/html"
    headers = response.headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("url", ["/", "/completions/c1", "/delete/c1", "/keys", "/login"])
def test_pages_hold_no_inline_script_or_style(client: FlaskClient, user: str, url: str) -> None:
    seed(completion_body("c1", metadata={"a": "b"}))
    if url != "/login":
        sign_in(client)
    page = client.get(url).get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "every script comes from static/"
    assert not re.search(r"\s(on\w+|style)=", page), "no inline handlers or styles"


def test_signed_in_pages_are_not_cached(admin: Admin) -> None:
    assert admin.get("/").headers["Cache-Control"] == "no-store"
    assert admin.get("/keys").headers["Cache-Control"] == "no-store"


def test_an_unknown_page_is_a_404_page_in_the_layout(admin: Admin) -> None:
    response = admin.get("/no-such-page")
    page = response.get_data(as_text=True)
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert 'class="site-header"' in page and "Sign out" in page and "404" in text(page)


def test_an_unknown_completion_is_a_404_page(admin: Admin) -> None:
    response = admin.get("/completions/missing")
    assert response.status_code == 404
    assert "No chat completion found with id 'missing'." in text(response.get_data(as_text=True))


def test_the_api_still_answers_json(admin: Admin) -> None:
    response = admin.get("/v1/no-such-route")
    assert response.status_code == 404 and response.is_json


def test_a_server_error_is_a_500_page_without_details(database_url: str, app: Flask) -> None:
    broken = create_app({"DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY})

    @broken.get("/broken")
    def _broken() -> None:
        raise RuntimeError("secret detail sk-should-not-leak")

    response = broken.test_client().get("/broken")
    page = response.get_data(as_text=True)
    assert response.status_code == 500 and response.mimetype == "text/html"
    assert "Something went wrong" in page and "sk-should-not-leak" not in page
    assert 'class="site-header"' in page
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
