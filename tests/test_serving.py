"""Serving through gunicorn.conf.py: request lines as long as valid requests get, and
instances that share a host without sharing gunicorn's control socket."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from flask.testing import FlaskClient

from webapp.validation import MAX_METADATA_KEY_LENGTH, MAX_METADATA_PAIRS, MAX_METADATA_VALUE_LENGTH, MAX_REQUEST_LINE

from .helpers import LiveServer, completion_body, make_key, seed, start_gunicorn, stop_server
from .openapi import check_response
from .sdk import sdk_client



def longest_filters(character: str) -> dict[str, str]:
    """Return 16 metadata pairs of 64 + 512 characters, all ``character`` but a distinct prefix."""
    return {
        f"{i:02d}" + character * (MAX_METADATA_KEY_LENGTH - 2): character * MAX_METADATA_VALUE_LENGTH
        for i in range(MAX_METADATA_PAIRS)
    }


def test_the_longest_filters_the_sdk_can_send_are_served(live_server: LiveServer) -> None:
    """16 filters of 64 + 512 characters: gunicorn's own limit (8,190 bytes at most) answered an
    HTML 414 from 14 such pairs on. With two-byte characters the line is 55 KB; the Python SDK
    (httpx) itself refuses URLs over 64 KiB, so this is the widest it sends."""
    filters = longest_filters("é")
    seed(completion_body("c1", metadata=filters), completion_body("c2"))
    client = sdk_client(live_server.v1, make_key(name="long"))
    page = client.chat.completions.list(metadata=filters, limit=100, order="desc", model="gpt-test")
    assert [c.id for c in page] == ["c1"]
    assert page.data[0].metadata == filters


def test_the_longest_valid_request_line_is_served(live_server: LiveServer) -> None:
    """Four-byte characters, 12 bytes each percent-encoded: a 110 KB line, sent as other clients would."""
    filters = longest_filters("😀")
    seed(completion_body("c1", metadata=filters))
    query = urlencode([(f"metadata[{key}]", value) for key, value in filters.items()] + [("limit", "100"), ("order", "desc")])
    assert len(query) > 110_000
    response, body = raw_get(live_server, f"/v1/chat/completions?{query}")
    assert response.status == 200, body
    assert [c["id"] for c in body["data"]] == ["c1"]


def raw_get(server: LiveServer, target: str) -> tuple[http.client.HTTPResponse, Any]:
    """GET ``target`` as sent (httpx, under the SDK, refuses URLs over 64 KiB); return the response and its JSON."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", target, headers={"Authorization": f"Bearer {make_key()}"})
        response = connection.getresponse()
        return response, json.loads(response.read())
    finally:
        connection.close()


def test_an_absurd_request_line_is_a_414_in_the_envelope(live_server: LiveServer) -> None:
    response, body = raw_get(live_server, "/v1/chat/completions?metadata%5Bk%5D=" + "x" * 1_000_000)
    assert response.status == 414
    assert response.getheader("content-type") == "application/json" and response.getheader("x-request-id")
    check_response("GET", "/v1/chat/completions", 414, body)
    assert body == {"error": {
        "message": f"Request line too long: it is longer than any valid request needs ({MAX_REQUEST_LINE} bytes).",
        "type": "invalid_request_error", "param": None, "code": None,
    }}


@pytest.mark.parametrize("extra, status", [(0, 200), (1, 414)], ids=["at-the-limit", "one-byte-more"])
def test_the_limit_is_the_longest_valid_request_line(client: FlaskClient, auth: dict, extra: int, status: int) -> None:
    base = "/v1/chat/completions?limit=5&order=desc&model="
    line_without_model = len(f"GET {base} HTTP/1.1")
    path = base + "m" * (MAX_REQUEST_LINE - line_without_model + extra)
    response = client.get(path, headers=auth)
    assert response.status_code == status


def test_two_instances_on_one_host_do_not_share_a_control_socket(database_url: str, tmp_path: Path) -> None:
    """gunicorn's control socket defaults to one path per user: off unless an instance names its own."""
    plain = start_gunicorn({"DATABASE_URL": database_url, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": ""}, workers=1, threads=1)
    own = tmp_path / "second.ctl"
    second = start_gunicorn({"DATABASE_URL": database_url, "GUNICORN_CONTROL_SOCKET": str(own)}, workers=1, threads=1)
    try:
        assert httpx.get(f"{plain.url}/healthz").status_code == 200
        assert httpx.get(f"{second.url}/healthz").status_code == 200
        assert not (tmp_path / ".gunicorn").exists()
        assert own.is_socket()
    finally:
        stop_server(plain)
        stop_server(second)


@pytest.mark.parametrize("header", ["SCRIPT_NAME", "PATH_INFO"])
def test_a_client_cannot_move_the_app_with_wsgi_headers(live_server: LiveServer, header: str) -> None:
    """gunicorn would believe these from 127.0.0.1 and answer 500 in HTML; they are dropped, the app answers."""
    connection = http.client.HTTPConnection(live_server.url.removeprefix("http://"), timeout=10)
    connection.request("DELETE", "/v1/chat/completions/0", headers={header: "0"})
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 401 and body["error"]["type"] == "invalid_request_error"
