"""Hostile input on the API: odd ids, invalid UTF-8, huge and deep bodies, floods of filters."""

from __future__ import annotations

import json
import socket

import openai
import pytest
from flask.testing import FlaskClient

from .helpers import LiveServer, completion_body, make_key, seed
from .sdk import sdk_client

# Ids within the rule (DESIGN.md "Ids") that a URL or a query could still get wrong.
ODD_IDS = [
    "dots.in.the.id",
    "ünïcødé-✓-完成",
    "it's-\"quoted\";DROP-TABLE-completions;--",
    "100%25-percent",
    "ampersand&equals=plus+sign",
    "ends-with-messages",
    "messages",
]


def test_odd_ids_round_trip_through_the_sdk(live_server: LiveServer) -> None:
    seed(*(completion_body(cid, metadata={"odd": "yes"}) for cid in ODD_IDS))
    client = sdk_client(live_server.v1, make_key(name="odd"))
    assert [c.id for c in client.chat.completions.list(limit=100)] == ODD_IDS
    for cid in ODD_IDS:
        assert client.chat.completions.retrieve(cid).id == cid
        assert client.chat.completions.update(cid, metadata={"seen": cid[:20]}).metadata == {"seen": cid[:20]}
        assert [m.id for m in client.chat.completions.messages.list(cid)] == [f"{cid}-0", f"{cid}-1"]
        assert client.chat.completions.delete(cid).deleted
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(cid)
    assert list(client.chat.completions.list()) == []


def test_an_id_and_its_message_list_never_meet(live_server: LiveServer, runner, tmp_path) -> None:
    """Issue 12: after importing ``imp`` and ``imp/messages``, retrieving ``imp/messages`` gave
    ``imp``'s message list. Now the import refuses the slash id, and the URL means the list."""
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(completion_body(cid)) for cid in ["imp", "imp/messages"]) + "\n")
    result = runner.invoke(args=["import", str(path)])
    assert "line 2: Invalid 'id': an id must not contain '/'." in result.output
    client = sdk_client(live_server.v1, make_key(name="slash"))
    assert [c.id for c in client.chat.completions.list()] == ["imp"]
    assert [m.id for m in client.chat.completions.messages.list("imp")] == ["imp-0", "imp-1"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.retrieve("imp/messages/messages")
    assert caught.value.body["message"] == "No chat completion found with id 'imp/messages'."


def test_invalid_utf8_body_is_a_400(client: FlaskClient, auth: dict) -> None:
    seed(completion_body("c1"))
    response = client.post("/v1/chat/completions/c1", data=b'{"metadata": {"a": "\xff\xfe"}}', headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.get_json()["error"]["param"] is None


def test_invalid_utf8_in_the_query_is_harmless(client: FlaskClient, auth: dict) -> None:
    response = client.get("/v1/chat/completions?metadata%5Bk%5D=%ff%fe&model=%c3%28", headers=auth)
    assert response.status_code == 200 and response.get_json()["data"] == []


def test_hundreds_of_metadata_filters_are_refused(client: FlaskClient, auth: dict) -> None:
    query = [(f"metadata[k{i}]", "v") for i in range(300)]
    response = client.get("/v1/chat/completions", query_string=query, headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "object_above_max_properties"


def test_an_oversized_body_is_refused_before_it_is_read(live_server: LiveServer) -> None:
    """Announce 64 MiB, send a little: the 413 comes back without the server waiting for the rest."""
    key = make_key(name="big")
    host, port = live_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions/c1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {64 * 1024 * 1024}\r\n\r\n".encode()
            + b'{"metadata": {"a": "'
        )
        received = b""
        while b'"error"' not in received and (chunk := sock.recv(65536)):
            received += chunk
        head = received.decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    assert '"error"' in head and "x-request-id" in head.lower()


def test_nul_characters_never_reach_the_database_as_text(client: FlaskClient, auth: dict) -> None:
    """PostgreSQL text cannot hold NUL: ids with it are simply not found, filters and metadata refuse it."""
    seed(completion_body("c1", messages=[{"role": "user", "content": "a\x00b"}]))
    assert client.get("/v1/chat/completions/a%00b", headers=auth).status_code == 404
    assert client.delete("/v1/chat/completions/a%00b", headers=auth).status_code == 404
    assert client.get("/v1/chat/completions?model=a%00b", headers=auth).status_code == 400
    assert client.post("/v1/chat/completions/c1", json={"metadata": {"k": "a\x00b"}}, headers=auth).status_code == 400
    # Inside stored JSON a NUL is kept as written.
    assert client.get("/v1/chat/completions/c1/messages", headers=auth).get_json()["data"][0]["content"] == "a\x00b"
