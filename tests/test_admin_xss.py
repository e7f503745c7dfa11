"""Hostile text in every field the UI shows is rendered as text, on every page that shows it."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from .admin_helpers import Admin
from .helpers import completion_body, make_key, seed

PAYLOAD = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"
HOSTILE_ID = f"chatcmpl-{PAYLOAD}"


@pytest.fixture
def hostile(admin: Admin, client: FlaskClient) -> dict:
    """A completion with the payload in every string the pages show, changed by a key whose name is hostile too."""
    record = completion_body(
        HOSTILE_ID,
        model=f"model-{PAYLOAD}",
        content=f"reply {PAYLOAD}",
        metadata={f"key{PAYLOAD}"[:64]: f"value {PAYLOAD}", "label": SCRIPT},
        messages=[
            {"role": "system", "content": f"system {PAYLOAD}"},
            {"role": "user", "name": f"name {PAYLOAD}", "content": [
                {"type": "text", "text": f"part {PAYLOAD}"},
                {"type": "image_url", "image_url": {"url": f"javascript:alert(3)//{PAYLOAD}"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call {PAYLOAD}", "type": "function", "function": {"name": f"fn {PAYLOAD}", "arguments": f'{{"q": "{SCRIPT}"}}'}},
            ]},
            {"role": "tool", "tool_call_id": f"call {PAYLOAD}", "content": f"result {PAYLOAD}"},
            {"role": PAYLOAD, "content": "odd role"},
        ],
    )
    record["system_fingerprint"] = f"fp {PAYLOAD}"
    record["input_user"] = f"user {PAYLOAD}"
    record["request_id"] = f"req {PAYLOAD}"
    record["tools"] = [{"type": "function", "function": {"name": f"tool {PAYLOAD}", "description": SCRIPT}}]
    seed(record)
    secret = make_key(name=f"key {PAYLOAD}")
    client.post(
        f"/v1/chat/completions/{quote(HOSTILE_ID, safe='')}",
        json={"metadata": {"changed": PAYLOAD}},
        headers={"Authorization": f"Bearer {secret}"},
    )
    return record


class Elements(HTMLParser):
    """Every element a browser would build from the page, with its attributes."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def assert_inert(page: str) -> None:
    """No element the payload could have made: no event handler, no inline or foreign script, no javascript: URL."""
    for tag, attrs in Elements(page).found:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        assert tag != "img" or attrs.get("src") != "x", attrs
        if tag == "script":
            assert attrs.get("src", "").startswith("/static/"), attrs
        for name in ("href", "src", "action", "formaction"):
            assert not (attrs.get(name) or "").strip().lower().startswith("javascript:"), attrs
    assert "<script>alert" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page, "the payload is shown, as text"


@pytest.mark.parametrize(
    "url",
    [
        "/",
        f"/?model={quote('model-' + PAYLOAD)}",
        f"/?metadata={quote('changed=' + PAYLOAD)}",
        f"/completions/{quote(HOSTILE_ID, safe='')}",
        f"/delete/{quote(HOSTILE_ID, safe='')}",
        "/keys",
    ],
)
def test_hostile_text_is_inert_everywhere(admin: Admin, hostile: dict, url: str) -> None:
    assert_inert(admin.page(url))
