"""The official openai SDK, unchanged, against a live gunicorn server."""

from __future__ import annotations

import openai
import pytest

from .helpers import LiveServer, completion_body, make_key, seed
from .sdk import sdk_client

SECOND = 1_700_000_000


@pytest.fixture
def client(live_server: LiveServer) -> openai.OpenAI:
    return sdk_client(live_server.v1, make_key(name="sdk"))


@pytest.fixture
def tied(app) -> list[str]:
    """48 completions that share one created second (and two stragglers around them)."""
    ids = [f"chatcmpl-tie-{i:02d}" for i in range(48)]
    seed(completion_body("chatcmpl-before", created=SECOND - 1))
    seed(*(completion_body(cid, created=SECOND, model="gpt-a" if i % 3 else "gpt-b", metadata={"i": str(i), "parity": str(i % 2)}) for i, cid in enumerate(ids)))
    seed(completion_body("chatcmpl-after", created=SECOND + 1))
    return ["chatcmpl-before", *ids, "chatcmpl-after"]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_auto_paging_over_ties_returns_each_once_in_order(client: openai.OpenAI, tied: list[str], order: str) -> None:
    seen = [c.id for c in client.chat.completions.list(limit=7, order=order)]
    assert seen == (tied if order == "asc" else tied[::-1])


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_survives_deletes_between_pages(client: openai.OpenAI, tied: list[str], order: str) -> None:
    expected = tied if order == "asc" else tied[::-1]
    page = client.chat.completions.list(limit=7, order=order)
    seen = [c.id for c in page.data]
    skipped: set[str] = set()
    while page.has_next_page():
        # Delete the cursor itself and a row not yet reached: the cursor still pages on,
        # and the row deleted ahead is simply not there.
        client.chat.completions.delete(seen[-1])
        upcoming = [cid for cid in expected if cid not in seen and cid not in skipped]
        if len(upcoming) > 1:
            client.chat.completions.delete(upcoming[1])
            skipped.add(upcoming[1])
        page = page.get_next_page()
        seen += [c.id for c in page.data]
    assert skipped and seen == [cid for cid in expected if cid not in skipped]


def test_filters(client: openai.OpenAI, tied: list[str]) -> None:
    even_b = [c.id for c in client.chat.completions.list(model="gpt-b", metadata={"parity": "0"}, limit=100)]
    assert even_b == [f"chatcmpl-tie-{i:02d}" for i in range(48) if i % 3 == 0 and i % 2 == 0]
    assert [c.id for c in client.chat.completions.list(metadata={"i": "5", "parity": "1"})] == ["chatcmpl-tie-05"]
    assert list(client.chat.completions.list(metadata={"i": "5", "parity": "0"})) == []


def test_update_then_retrieve(client: openai.OpenAI, tied: list[str]) -> None:
    updated = client.chat.completions.update("chatcmpl-tie-03", metadata={"label": "good"})
    assert updated.metadata == {"label": "good"}
    assert client.chat.completions.retrieve("chatcmpl-tie-03").metadata == {"label": "good"}
    assert client.chat.completions.update("chatcmpl-tie-03", metadata=None).metadata == {}


def test_bad_metadata_is_a_bad_request(client: openai.OpenAI, tied: list[str]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.update("chatcmpl-tie-03", metadata={"k" * 65: "v"})
    assert info.value.code == "property_name_above_max_length"
    assert info.value.param == "metadata." + "k" * 65


def test_delete_then_not_found(client: openai.OpenAI, tied: list[str]) -> None:
    deleted = client.chat.completions.delete("chatcmpl-tie-04")
    assert deleted.deleted and deleted.id == "chatcmpl-tie-04"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve("chatcmpl-tie-04")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete("chatcmpl-tie-04")


def test_messages_paging(client: openai.OpenAI, app) -> None:
    messages = [{"role": "user" if i % 2 else "system", "content": f"m{i}"} for i in range(11)]
    seed(completion_body("chatcmpl-long", messages=messages))
    listed = list(client.chat.completions.messages.list("chatcmpl-long", limit=3))
    assert [(m.id, m.content) for m in listed] == [(f"chatcmpl-long-{i}", f"m{i}") for i in range(11)]
    backwards = list(client.chat.completions.messages.list("chatcmpl-long", limit=4, order="desc"))
    assert [m.id for m in backwards] == [f"chatcmpl-long-{i}" for i in range(10, -1, -1)]


def test_missing_or_wrong_key_is_authentication_error(live_server: LiveServer, app) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk_client(live_server.v1, None).chat.completions.list()
    with pytest.raises(openai.AuthenticationError) as info:
        sdk_client(live_server.v1, "cs-not-a-key").chat.completions.list()
    assert info.value.code == "invalid_api_key"


def test_read_only_key_is_permission_denied(live_server: LiveServer, tied: list[str]) -> None:
    reader = sdk_client(live_server.v1, make_key(name="reader", read_only=True))
    assert reader.chat.completions.retrieve("chatcmpl-tie-01").id == "chatcmpl-tie-01"
    with pytest.raises(openai.PermissionDeniedError):
        reader.chat.completions.update("chatcmpl-tie-01", metadata={"a": "b"})
    with pytest.raises(openai.PermissionDeniedError):
        reader.chat.completions.delete("chatcmpl-tie-01")
