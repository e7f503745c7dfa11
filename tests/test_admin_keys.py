"""The API keys page: list, create (secret shown once), revoke."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from webapp import store
from webapp.extensions import db
from webapp.models import ApiKey

from .admin_helpers import Admin, element, text
from .helpers import completion_body, make_key, seed


def test_the_page_lists_each_key_with_scope_and_dates(admin: Admin, client) -> None:
    secret = make_key(name="ci")
    make_key(name="reader", read_only=True)
    client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"})
    page = admin.page("/keys")
    rows = {m.group(1): text(m.group(0)) for m in re.finditer(r"<tr[^>]*>\s*<td data-label=\"Name\"><strong>([^<]+)</strong>.*?</tr>", page, re.S)}
    assert set(rows) == {"ci", "reader"}
    assert "read-write" in rows["ci"] and "just now" in rows["ci"] and secret[:8] in rows["ci"]
    assert "read-only" in rows["reader"] and "never" in rows["reader"]
    assert secret not in page


def test_create_shows_the_secret_once_and_it_works(admin: Admin, client) -> None:
    response = admin.post("/keys", {"name": "eval-runner"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    secret = element(page, "new-secret")
    assert secret.startswith("cs-") and "shown this once" in text(page)
    key = db.session.scalars(select(ApiKey).where(ApiKey.name == "eval-runner")).one()
    assert key.key_hash == store.hash_secret(secret) and not key.read_only
    seed(completion_body("c1"))
    assert client.post("/v1/chat/completions/c1", json={"metadata": {}}, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert secret not in admin.page("/keys"), "never shown again"


def test_create_read_only(admin: Admin, client) -> None:
    secret = element(admin.post("/keys", {"name": "viewer", "read_only": "y"}).get_data(as_text=True), "new-secret")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/chat/completions", headers=headers).status_code == 200
    seed(completion_body("c1"))
    assert client.delete("/v1/chat/completions/c1", headers=headers).status_code == 403


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "Invalid 'name': expected 1 to 100 characters"),
        (" padded", "Invalid 'name': expected 1 to 100 characters"),
        ("x" * 101, "Invalid 'name': expected 1 to 100 characters"),
        ("taken", "An API key named 'taken' exists already"),
    ],
)
def test_a_bad_name_is_refused_beside_the_field(admin: Admin, name: str, message: str) -> None:
    make_key(name="taken")
    response = admin.post("/keys", {"name": name})
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert message in element(page, "name-error")
    assert 'id="new-secret"' not in page
    assert db.session.scalars(select(ApiKey)).all().__len__() == 1


def test_the_command_line_keeps_the_same_name_rule(runner) -> None:
    result = runner.invoke(args=["keys", "create", "x" * 101])
    assert result.exit_code != 0 and "Invalid 'name': expected 1 to 100 characters" in result.output


def test_revoke_ends_a_key(admin: Admin, client) -> None:
    secret = make_key(name="old")
    response = admin.post("/keys/revoke", {"name": "old"})
    assert response.status_code == 303 and response.headers["Location"] == "/keys"
    page = admin.page("/keys")
    assert "Revoked API key 'old': requests using it now get 401." in text(page)
    assert "revoked" in text(page[page.index("<strong>old</strong>") :])
    assert client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


@pytest.mark.parametrize("name", ["ghost", "nul\x00name"])
def test_revoking_an_unknown_key_says_so(admin: Admin, name: str) -> None:
    admin.post("/keys/revoke", {"name": name})
    assert "No live API key named" in text(admin.page("/keys"))


def test_revoke_asks_first_on_a_page_of_its_own(admin: Admin, client) -> None:
    secret = make_key(name="ci")
    keys = admin.page("/keys")
    assert 'href="/keys/revoke?name=ci"' in keys and 'action="/keys/revoke"' not in keys, "the list only links to the question"
    page = admin.page("/keys/revoke?name=ci")
    assert element(page, "revoke-title") == "Revoke the API key 'ci'?"
    assert "Every program using it gets 401 from then on." in text(page)
    assert client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}).status_code == 200, "nothing revoked yet"
    assert admin.post("/keys/revoke", {"name": "ci"}).status_code == 303
    assert client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


@pytest.mark.parametrize("name", ["ghost", "", "nul\x00name"])
def test_the_revoke_question_for_no_live_key_goes_back_to_the_list(admin: Admin, name: str) -> None:
    response = admin.get("/keys/revoke", query_string={"name": name})
    assert response.status_code == 302 and response.headers["Location"] == "/keys"
    assert "No live API key named" in text(admin.page("/keys"))


def test_a_revoked_keys_name_can_be_used_again(admin: Admin, client, runner) -> None:
    old = make_key(name="ci")
    admin.post("/keys/revoke", {"name": "ci"})
    new = element(admin.post("/keys", {"name": "ci"}).get_data(as_text=True), "new-secret")
    assert client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    # Still one live key per name, from every door.
    assert "An API key named 'ci' exists already" in element(admin.post("/keys", {"name": "ci"}).get_data(as_text=True), "name-error")
    assert runner.invoke(args=["keys", "create", "ci"]).exit_code != 0
    assert runner.invoke(args=["keys", "revoke", "ci"]).exit_code == 0
    assert runner.invoke(args=["keys", "create", "ci"]).exit_code == 0
    assert [k.name for k in db.session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))] == ["ci"]
