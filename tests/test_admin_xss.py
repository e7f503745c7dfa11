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


MARKDOWN_PAYLOADS = [
    "<script>alert(4)</script>",
    "[click](javascript:alert(5))",
    "[click](JaVaScRiPt:alert(6))",
    "[click](vbscript:msgbox(7))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCg4KTwvc2NyaXB0Pg==)",
    "![x](x onerror=alert(9))",
    '![x](https://evil.example/x.png "t") and <img src=x onerror=alert(1)>',
    "[a]: javascript:alert(10)\n\n[ref][a]",
    "<a href=\"javascript:alert(11)\">raw</a>",
    "```html\n<script>alert(12)</script>\n```",
    "| <b onmouseover=alert(13)>x</b> |\n|---|\n| y |",
]


@pytest.mark.parametrize("payload", MARKDOWN_PAYLOADS)
def test_markdown_borne_payloads_are_inert(admin: Admin, payload: str) -> None:
    seed(completion_body("md", content=payload + "\n\n" + PAYLOAD, messages=[{"role": "user", "content": payload + "\n\n" + PAYLOAD}]))
    page = admin.page("/completions/md")
    assert_inert(page)
    for tag, attrs in Elements(page).found:
        for name in ("href", "src"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("vbscript:", "data:text", "https://evil")) or (tag == "a" and value.startswith("https://evil")), attrs
        assert tag != "img" or (attrs.get("src") or "").startswith(("/static/", "data:image/")), "no image is fetched from elsewhere"


def test_the_bulk_changes_and_revoke_pages_show_hostile_text_as_text(admin: Admin, hostile: dict) -> None:
    from webapp import store
    from webapp.extensions import write_transaction

    store.run_bulk_change(
        write_transaction, selection=store.Selection(ids=(HOSTILE_ID, f"gone {PAYLOAD}")), action="set",
        key=f"k{PAYLOAD}"[:64], value=PAYLOAD, actor=f"user:{PAYLOAD}", scope=f"scope {PAYLOAD}", requested=1,
    )
    assert_inert(admin.page("/bulk-changes"))
    assert_inert(admin.page(f"/keys/revoke?name={quote('key ' + PAYLOAD)}"))
