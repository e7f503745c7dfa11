"""Helpers for the admin UI tests: a user, a signed-in browser that posts forms with the
CSRF token its pages carry, and small readers of what a page shows.

The ``user`` and ``admin`` fixtures that use them are in ``tests/fixtures/admin.py``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from werkzeug.datastructures import MultiDict
from werkzeug.test import TestResponse

from webapp import store
from webapp.extensions import db, write_transaction

USERNAME = "ann"
PASSWORD = "correct horse battery staple"

_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_TAGS = re.compile(r"<[^>]+>")


def make_user(username: str = USERNAME, password: str = PASSWORD) -> None:
    """Create an admin user in the current app's database."""
    with write_transaction() as session:
        store.create_user(session, username=username, password=password)


def metadata_of(completion_id: str) -> dict[str, str]:
    """Return what the database holds now as a completion's metadata (a fresh read, whoever wrote)."""
    db.session.rollback()
    return dict(store.get_completion(db.session, completion_id=completion_id).metadata_map or {})


def csrf_token(page: str) -> str:
    """Return the CSRF token a rendered page carries in its forms."""
    match = _CSRF.search(page)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def text(page: str) -> str:
    """Return what a person reads on a page: the text without tags, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(_TAGS.sub(" ", page)).split())


def element(page: str, element_id: str) -> str:
    """Return the readable text of the element with ``id`` (up to its first closing tag of the same name)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>', page)
    assert match, f"no element with id {element_id!r}"
    end = page.index(f"</{match.group(1)}>", match.end())
    return text(page[match.end() : end])


def sign_in(client: FlaskClient, username: str = USERNAME, password: str = PASSWORD, *, next: str | None = None) -> TestResponse:
    """Submit the sign-in form as a browser would (token taken from the form page)."""
    url = "/login" + (f"?next={next}" if next else "")
    # Signed in already, /login sends the browser on: any page's form carries the session's token.
    token = csrf_token(client.get(url, follow_redirects=True).get_data(as_text=True))
    return client.post(url, data={"username": username, "password": password, "csrf_token": token})


@dataclass
class Admin:
    """A signed-in browser: GETs pages and POSTs forms with the session's CSRF token."""

    client: FlaskClient
    token: str

    def get(self, url: str, **kwargs: Any) -> TestResponse:
        return self.client.get(url, **kwargs)

    def page(self, url: str, **kwargs: Any) -> str:
        """GET a page that must answer 200 and return its HTML."""
        response = self.client.get(url, **kwargs)
        assert response.status_code == 200, (url, response.status_code)
        return response.get_data(as_text=True)

    def post(
        self, url: str, data: Mapping[str, Any] | list[tuple[str, str]] | None = None, *, csrf: bool = True, **kwargs: Any
    ) -> TestResponse:
        """POST a form (a mapping, or (name, value) pairs as a page's form sends them); ``csrf=False``
        leaves the token out, as a forged cross-site form would."""
        form = MultiDict(data) if isinstance(data, list) else MultiDict(dict(data or {}))
        if csrf:
            form.setlist("csrf_token", [self.token])
        return self.client.post(url, data=form, **kwargs)


def metadata_form(pairs: Mapping[str, str] | list[tuple[str, str]], *, version: int | str, **extra: str) -> dict[str, str]:
    """Return the detail page's metadata form fields for these rows, as the browser sends them."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    data = {"version": str(version), **extra}
    for index, (key, value) in enumerate(items):
        data[f"rows-{index}-key"] = key
        data[f"rows-{index}-value"] = value
    return data


def detail_url(completion_id: str) -> str:
    """Return the detail page's URL of a completion, quoted as the app quotes it."""
    from urllib.parse import quote

    return "/completions/" + quote(completion_id, safe="/")


_FORM = re.compile(r"<form\b[^>]*>.*?</form>", re.S)
_INPUT = re.compile(r"<input\b[^>]*>")
_ATTR = re.compile(r'(\w[\w-]*)="([^"]*)"')


def form_fields(page: str, action: str) -> list[tuple[str, str]]:
    """Return the (name, value) pairs a browser would send from the page's form posting to ``action``:
    hidden and text inputs, and checked boxes and radios (no button)."""
    for form in _FORM.findall(page):
        attrs = dict(_ATTR.findall(form[: form.index(">")]))
        if html.unescape(attrs.get("action", "")) != action:
            continue
        pairs = []
        for tag in _INPUT.findall(form):
            field = {name: html.unescape(value) for name, value in _ATTR.findall(tag)}
            kind = field.get("type", "text")
            if "name" not in field or (kind in ("checkbox", "radio") and " checked" not in tag):
                continue
            pairs.append((field["name"], field.get("value", "")))
        return pairs
    raise AssertionError(f"no form posts to {action!r}")
