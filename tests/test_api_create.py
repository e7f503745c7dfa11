"""``POST /v1/chat/completions`` through the upstream: the official openai SDK against a
live gunicorn server whose upstream is a real HTTP server scripted per test, on every backend."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from sqlalchemy import select

from webapp import store, validation
from webapp.extensions import db, write_connection
from webapp.models import Completion, CompletionMetadata, MetadataChange
from webapp.errors import APIError
from webapp.upstream import Upstream, split_events

from .helpers import LiveServer, completion_body, make_key, seed, start_gunicorn, stop_server
from .openapi import check_response
from .sdk import sdk_client
from .upstream_double import MODEL, Choice, Failure, Hang, Scripted, ToolCall, UpstreamDouble, completion_json

UPSTREAM_KEY = "sk-upstream-test-secret"
UPSTREAM_TIMEOUT = 1.0
UPSTREAM_MAX_BYTES = 1_000_000
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello."},
]
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
    for name in ("get_weather", "get_time")
]


# --- Fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_double() -> Iterator[UpstreamDouble]:
    double = UpstreamDouble().start()
    yield double
    double.stop()


@pytest.fixture(scope="module")
def store_server(database_url: str, upstream_double: UpstreamDouble) -> Iterator[LiveServer]:
    """The store (gunicorn) in front of the double, with a short upstream timeout."""
    server = start_gunicorn({
        "DATABASE_URL": database_url,
        "UPSTREAM_BASE_URL": upstream_double.url,
        "UPSTREAM_API_KEY": UPSTREAM_KEY,
        "UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT),
        "UPSTREAM_MAX_BYTES": str(UPSTREAM_MAX_BYTES),
    })
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def unreachable_server(database_url: str) -> Iterator[LiveServer]:
    """The store in front of an upstream address that refuses connections."""
    with socket.socket() as bound_not_listening:
        # Holding the port keeps anything else from taking it; not listening refuses connections.
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        server = start_gunicorn(
            {"DATABASE_URL": database_url, "UPSTREAM_BASE_URL": f"http://127.0.0.1:{port}/v1"}, workers=1, threads=2
        )
        yield server
        stop_server(server)


@pytest.fixture
def upstream(app: Any, upstream_double: UpstreamDouble) -> UpstreamDouble:
    """The double, answering a short text, having received nothing yet; a clean database."""
    upstream_double.reset()
    return upstream_double


@pytest.fixture
def sdk(store_server: LiveServer, api_key: str) -> openai.OpenAI:
    return sdk_client(store_server.v1, api_key)


def stored_ids() -> list[str]:
    """Every completion id the database holds, deleted ones included."""
    db.session.rollback()
    return list(db.session.scalars(select(Completion.id).order_by(Completion.seq)))


def create(sdk: openai.OpenAI, **params: Any) -> Any:
    return sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **params)


def without(obj: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


# --- Non-streaming ------------------------------------------------------------------------


def test_store_true_keeps_the_answer_with_its_request(sdk: openai.OpenAI, upstream: UpstreamDouble) -> None:
    completion = create(
        sdk, store=True, metadata={"team": "red"}, temperature=0.5, seed=7, user="u-1",
        extra_body={"brand_new_param": {"x": [1, 2]}},
    )
    # The upstream's answer as it was, metadata added.
    assert completion.to_dict() == {**completion_json(Scripted(), "chatcmpl-double-1"), "metadata": {"team": "red"}}
    assert completion._request_id == "req_double_1"

    retrieved = sdk.chat.completions.retrieve(completion.id).to_dict()
    answered = completion.to_dict()
    assert {key: retrieved[key] for key in answered} == answered
    assert retrieved["request_id"] == "req_double_1"
    assert (retrieved["seed"], retrieved["temperature"], retrieved["input_user"], retrieved["tools"]) == (7, 0.5, "u-1", None)

    sent = upstream.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.body == {
        "model": MODEL, "messages": MESSAGES, "temperature": 0.5, "seed": 7, "user": "u-1",
        "brand_new_param": {"x": [1, 2]},
    }


def test_parallel_tool_calls_is_kept_when_set_for_the_fine_tuning_export(sdk: openai.OpenAI, upstream: UpstreamDouble) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    kept = create(sdk, store=True, tools=tools, parallel_tool_calls=False)
    unset = create(sdk, store=True, tools=tools)
    assert sdk.chat.completions.retrieve(kept.id).to_dict()["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in sdk.chat.completions.retrieve(unset.id).to_dict()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("store", [False, openai.NOT_GIVEN], ids=["store-false", "store-absent"])
def test_without_store_nothing_is_kept(sdk: openai.OpenAI, upstream: UpstreamDouble, store: Any, stream: bool) -> None:
    if stream:
        chunks = list(create(sdk, store=store, metadata={"team": "red"}, stream=True))
        completion_id, text = chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks)
    else:
        completion = create(sdk, store=store, metadata={"team": "red"})
        assert completion.metadata == {"team": "red"}
        completion_id, text = completion.id, completion.choices[0].message.content
    assert text == "Hello, world!"
    assert "store" not in upstream.received[0].body and "metadata" not in upstream.received[0].body
    assert stored_ids() == []
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.retrieve(completion_id)


def test_messages_of_a_created_completion(sdk: openai.OpenAI, upstream: UpstreamDouble) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again?"},
    ]
    completion = sdk.chat.completions.create(model=MODEL, messages=messages, store=True)
    page = sdk.chat.completions.messages.list(completion.id)
    assert [m.id for m in page.data] == [f"{completion.id}-{i}" for i in range(4)]
    assert [(m.role, m.content) for m in page.data] == [
        ("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello."), ("user", "Again?"),
    ]
    assert page.data[1].content_parts[1].text == " there"


# --- Streaming ----------------------------------------------------------------------------

TWO_TOOL_CALLS = Choice(
    tool_calls=(
        ToolCall("call_weather", "get_weather", ('{"ci', 'ty": "Pa', 'ris"}')),
        ToolCall("call_time", "get_time", ('{"tz"', ': "CET"}')),
    ),
    finish_reason="tool_calls",
)
STREAM_CASES = [
    pytest.param(Scripted(), {}, {}, id="text"),
    pytest.param(Scripted(choices=(TWO_TOOL_CALLS,)), {"tools": TOOLS}, {}, id="tool-calls-across-chunks"),
    pytest.param(
        Scripted(choices=(Choice(content=("Heads", "!")), Choice(content=("Tai", "ls", "!"), finish_reason="length"))),
        {"n": 2}, {}, id="n-2",
    ),
    pytest.param(Scripted(), {}, {"stream_options": {"include_usage": True}}, id="include-usage"),
    pytest.param(
        Scripted(choices=(Choice(content=("A", "B"), logprobs=True), Choice(refusal=("I can't ", "help."), logprobs=True))),
        {"n": 2, "logprobs": True}, {"stream_options": {"include_usage": True}}, id="refusal-logprobs-usage",
    ),
]


@pytest.mark.parametrize("script, params, stream_params", STREAM_CASES)
def test_a_stream_stores_what_a_plain_create_stores(
    sdk: openai.OpenAI, upstream: UpstreamDouble, script: Scripted, params: dict, stream_params: dict
) -> None:
    upstream.reset(script)
    plain = create(sdk, store=True, metadata={"k": "v"}, **params)
    chunks = list(create(sdk, store=True, metadata={"k": "v"}, stream=True, **params, **stream_params))
    streamed_id = chunks[0].id
    # The stream is over ([DONE] read): the completion is there already.
    from_stream = sdk.chat.completions.retrieve(streamed_id).to_dict()
    from_plain = sdk.chat.completions.retrieve(plain.id).to_dict()

    usage_sent = bool(stream_params.get("stream_options"))
    ignored = {"id", "request_id"} | (set() if usage_sent else {"usage"})
    assert without(from_stream, ignored) == without(from_plain, ignored)
    assert from_stream["request_id"] == "req_double_2" and from_stream["metadata"] == {"k": "v"}
    assert ("usage" in from_stream) is usage_sent
    texts = {c.index: "" for c in plain.choices}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {c.index: c.message.content or "" for c in plain.choices}
    assert [m.id for m in sdk.chat.completions.messages.list(streamed_id).data] == [f"{streamed_id}-0", f"{streamed_id}-1"]
    assert "store" not in upstream.received[1].body and "metadata" not in upstream.received[1].body
    assert upstream.received[1].body["stream"] is True


def test_every_event_passes_through_unchanged(store_server: LiveServer, api_key: str, upstream: UpstreamDouble) -> None:
    upstream.reset(Scripted(choices=(Choice(content=tuple("abcdefgh")),)))
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "store": True}
    with httpx.stream("POST", f"{store_server.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-request-id"] == "req_double_1"
        received = response.read()
    assert received == b"".join(upstream.received[0].sent)
    assert received.endswith(b"data: [DONE]\n\n")
    assert stored_ids() == ["chatcmpl-double-1"]


def test_the_first_chunk_arrives_before_the_upstream_has_finished(sdk: openai.OpenAI, upstream: UpstreamDouble) -> None:
    # Seven events, a quarter of a second apart: the upstream needs about 1.75 s.
    upstream.reset(Scripted(choices=(Choice(content=("one", " two", " three", " four")),), delay=0.25))
    started = time.monotonic()
    stream = create(sdk, stream=True)
    first = next(iter(stream))
    first_at = time.monotonic()
    rest = list(stream)
    finished_at = upstream.wait_until_ended().ended_at
    assert first.choices[0].delta.role == "assistant" and len(rest) == 5
    assert first_at - started < 0.9
    assert finished_at is not None and finished_at - first_at > 0.75


def test_a_client_that_goes_away_ends_the_upstream_request(store_server: LiveServer, api_key: str, upstream: UpstreamDouble) -> None:
    upstream.reset(Scripted(choices=(Choice(content=tuple("x" * 40)),), delay=0.05))
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "store": True}
    with httpx.stream("POST", f"{store_server.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"}) as response:
        assert next(response.iter_raw()).startswith(b"data: ")
    received = upstream.wait_until_ended()
    assert received.outcome == "client-gone"
    assert len(received.sent) < 20
    assert stored_ids() == []


# --- Failures -----------------------------------------------------------------------------

UPSTREAM_ERRORS = [
    pytest.param(
        Failure(500, {"error": {"message": "The server had an error.", "type": "server_error", "param": None, "code": None}}),
        500, {"message": "The server had an error.", "type": "server_error", "param": None, "code": None}, {},
        id="500",
    ),
    pytest.param(
        Failure(
            429,
            {"error": {"message": "Rate limit reached.", "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
            headers=(("retry-after", "7"), ("x-ratelimit-remaining-requests", "0")),
        ),
        429, {"message": "Rate limit reached.", "type": "requests", "param": None, "code": "rate_limit_exceeded"},
        {"retry-after": "7", "x-ratelimit-remaining-requests": "0"},
        id="429",
    ),
    pytest.param(
        Failure(400, {"error": {"message": "Unknown model.", "type": "invalid_request_error", "param": "model", "code": 404}}),
        400, {"message": "Unknown model.", "type": "invalid_request_error", "param": "model", "code": "404"}, {},
        id="400-numeric-code",
    ),
    pytest.param(
        Failure(503, b"upstream connect error"),
        503,
        {"message": "The upstream model server answered 503 Service Unavailable: upstream connect error", "type": "server_error", "param": None, "code": None},
        {},
        id="not-an-envelope",
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("failure, status, error, headers", UPSTREAM_ERRORS)
def test_upstream_errors_come_back_with_their_status(
    sdk: openai.OpenAI, upstream: UpstreamDouble, failure: Failure, status: int, error: dict, headers: dict, stream: bool
) -> None:
    upstream.reset(failure)
    with pytest.raises(openai.APIStatusError) as caught:
        create(sdk, store=True, stream=stream)
    assert caught.value.status_code == status
    assert caught.value.body == error
    assert {name: caught.value.response.headers.get(name) for name in headers} == headers
    assert stored_ids() == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_unreachable_upstream_is_a_502(unreachable_server: LiveServer, api_key: str, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        create(sdk_client(unreachable_server.v1, api_key), store=True, stream=stream)
    assert caught.value.status_code == 502
    assert caught.value.type == "server_error"
    assert stored_ids() == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_silent_upstream_is_a_504(sdk: openai.OpenAI, upstream: UpstreamDouble, stream: bool) -> None:
    upstream.reset(Hang(UPSTREAM_TIMEOUT + 0.5))
    with pytest.raises(openai.APIStatusError) as caught:
        create(sdk, store=True, stream=stream)
    assert caught.value.status_code == 504
    assert caught.value.type == "server_error"
    assert stored_ids() == []


CUT_SHORT = [
    pytest.param(Scripted(reset_after=2), "could not be reached", id="reset"),
    pytest.param(Scripted(stall_after=2, stall=UPSTREAM_TIMEOUT + 0.5), "did not answer in time", id="silent"),
    pytest.param(Scripted(error_after=2), "The model overloaded.", id="upstream-error-event"),
]


@pytest.mark.parametrize("script, message", CUT_SHORT)
def test_a_stream_cut_short_ends_with_an_error_and_stores_nothing(
    sdk: openai.OpenAI, upstream: UpstreamDouble, script: Scripted, message: str
) -> None:
    upstream.reset(script)
    chunks = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in create(sdk, store=True, stream=True):
            chunks.append(chunk)
    assert len(chunks) == 2
    assert message in caught.value.message
    assert stored_ids() == []


# --- Refused before the upstream ------------------------------------------------------------

BAD_CREATES = [
    pytest.param({"messages": MESSAGES}, "model", "missing_required_parameter", id="no-model"),
    pytest.param({"model": MODEL}, "messages", "missing_required_parameter", id="no-messages"),
    pytest.param({"model": MODEL, "messages": MESSAGES, "metadata": {"k": 1}}, "metadata.k", "invalid_type", id="bad-metadata"),
    pytest.param({"model": MODEL, "messages": MESSAGES, "store": "yes"}, "store", "invalid_type", id="store-not-boolean"),
]


@pytest.mark.parametrize("body, param, code", BAD_CREATES)
def test_a_bad_create_never_reaches_the_upstream(
    store_server: LiveServer, api_key: str, upstream: UpstreamDouble, body: dict, param: str, code: str
) -> None:
    response = httpx.post(f"{store_server.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"})
    check_response("POST", "/v1/chat/completions", response.status_code, response.json())
    assert response.status_code == 400
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code)
    assert upstream.received == []


def test_a_read_only_key_cannot_create(store_server: LiveServer, upstream: UpstreamDouble) -> None:
    reader = sdk_client(store_server.v1, make_key(name="reader", read_only=True))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        create(reader, store=True)
    assert caught.value.body["code"] == "insufficient_permissions"
    assert caught.value.message.endswith(
        "The API key 'reader' is read-only. Creating a chat completion forwards it to the upstream model server, "
        "which is paid for, so it needs a key with write access."
    )
    assert upstream.received == []


# --- The upstream refuses the store's own key; the key never reaches a client -------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("status", [401, 403])
def test_an_upstream_refusing_the_stores_key_is_a_502_that_says_so(
    sdk: openai.OpenAI, upstream: UpstreamDouble, status: int, stream: bool
) -> None:
    upstream.reset(Failure(status, {"error": {
        "message": f"Incorrect API key provided: {UPSTREAM_KEY}.", "type": "invalid_request_error", "param": None,
        "code": "invalid_api_key",
    }}))
    # A client that retries as the SDK does by default (a 502 twice more).
    retrying = openai.OpenAI(base_url=str(sdk.base_url), api_key=sdk.api_key, max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        create(retrying, store=True, stream=stream)
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "server_error" and caught.value.body["code"] is None
    assert caught.value.body["message"].startswith("The upstream model server refused this server's own key (UPSTREAM_API_KEY)")
    assert "Your API key for this store is fine" in caught.value.body["message"]
    assert UPSTREAM_KEY not in caught.value.response.text
    # Retrying cannot help, so the SDK is told not to (it would retry a 502 twice on its own).
    assert len(upstream.received) == 1
    assert stored_ids() == []


ESCAPED_KEY = "".join(f"\\u{ord(c):04x}" for c in UPSTREAM_KEY)
ECHOES = [
    pytest.param(Failure(400, {"error": {"message": f"Bad request with headers {{'Authorization': 'Bearer {UPSTREAM_KEY}'}}",
                                          "type": "invalid_request_error", "param": UPSTREAM_KEY, "code": None}}), id="in-the-envelope"),
    pytest.param(Failure(500, f"Traceback: header Authorization=Bearer {UPSTREAM_KEY}".encode()), id="plain-text"),
    pytest.param(Failure(429, b'{"error": {"message": "key ' + ESCAPED_KEY.encode() + b' is over quota"}}',
                         headers=(("x-ratelimit-key", UPSTREAM_KEY),)), id="json-escaped"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("failure", ECHOES)
def test_an_upstream_error_never_hands_the_stores_key_to_a_client(
    store_server: LiveServer, api_key: str, upstream: UpstreamDouble, failure: Failure, stream: bool
) -> None:
    upstream.reset(failure)
    body = {"model": MODEL, "messages": MESSAGES, "store": True, "stream": stream}
    response = httpx.post(f"{store_server.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == failure.status
    seen = response.text + str(response.headers)
    assert UPSTREAM_KEY not in seen and ESCAPED_KEY not in seen
    assert "[redacted: UPSTREAM_API_KEY]" in seen
    assert stored_ids() == []


@pytest.mark.parametrize("event", [
    {"error": {"message": f"upstream crashed, request had Authorization: Bearer {UPSTREAM_KEY}", "type": "server_error"}},
    f"<html>proxy error for Bearer {UPSTREAM_KEY}</html>",
], ids=["error-event", "not-json"])
def test_a_mid_stream_error_event_never_hands_the_stores_key_to_a_client(
    store_server: LiveServer, api_key: str, upstream: UpstreamDouble, event: Any
) -> None:
    upstream.reset(Scripted(error_after=2, error_event=event))
    body = {"model": MODEL, "messages": MESSAGES, "store": True, "stream": True}
    with httpx.stream("POST", f"{store_server.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"}) as response:
        received = response.read()
    assert b"upstream crashed" in received or b"proxy error" in received
    assert UPSTREAM_KEY.encode() not in received and b"[redacted: UPSTREAM_API_KEY]" in received
    assert stored_ids() == []


def test_the_server_log_gets_what_the_upstream_said(upstream: UpstreamDouble, caplog: pytest.LogCaptureFixture) -> None:
    """The client gets a 502 without the upstream's words; the operator finds them in the log (key masked)."""
    upstream.reset(Failure(401, {"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}", "type": "invalid_request_error"}}))
    client = Upstream(base_url=upstream.url, api_key=UPSTREAM_KEY, timeout=UPSTREAM_TIMEOUT)
    try:
        with caplog.at_level("WARNING", logger="webapp.upstream"), pytest.raises(APIError) as caught:
            client.create({"model": MODEL, "messages": MESSAGES})
    finally:
        client.close()
    assert caught.value.status == 502 and "Incorrect API key" not in caught.value.message
    logged = caplog.text
    assert "refused UPSTREAM_API_KEY with 401 Unauthorized" in logged
    assert "Incorrect API key provided: [redacted: UPSTREAM_API_KEY]" in logged
    assert UPSTREAM_KEY not in logged



def test_one_clients_upstream_cookies_never_reach_anothers_request(upstream: UpstreamDouble) -> None:
    """The upstream client is shared by every request of a process: a cookie the upstream sets
    in one answer (a load balancer's affinity, say) is not sent with the next request."""
    client = Upstream(base_url=upstream.url, api_key=UPSTREAM_KEY, timeout=UPSTREAM_TIMEOUT)
    try:
        upstream.reset(Failure(429, {"error": {"message": "slow down", "type": "rate_limit"}}, headers=(("Set-Cookie", "affinity=alice; Path=/"),)))
        with pytest.raises(APIError):
            client.create({"model": MODEL, "messages": MESSAGES})
        upstream.reset()
        client.create({"model": MODEL, "messages": MESSAGES})
    finally:
        client.close()
    assert "cookie" not in upstream.received[-1].headers

# --- Server-sent events, however they arrive --------------------------------------------------

EVENTS = [b'data: {"a":1}\n\n', b": keep-alive\n\n", b'data: {"b":2}\r\n\r\n', b"data: x\rdata: y\r\r", b"data: [DONE]\n\n"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
def test_events_are_found_however_the_bytes_are_cut(size: int) -> None:
    stream = b"".join(EVENTS) + b"data: unfinished"
    assert list(split_events([stream[i : i + size] for i in range(0, len(stream), size)])) == EVENTS


# --- Upstream faults ----------------------------------------------------------------------

NONSENSE = [
    pytest.param(Failure(200, b'{"id": "chatcmpl-x", "choices": ['), id="garbage-json"),
    pytest.param(Failure(200, b"<html><body>Welcome to nginx!</body></html>"), id="html-page"),
    pytest.param(Failure(200, {"id": 7, "created": "yesterday"}), id="json-but-no-completion"),
    pytest.param(Scripted(choices=(Choice(content=("x" * 600_000, "y" * 600_000)),)), id="huge-answer"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("reply", NONSENSE)
def test_an_upstream_answering_nonsense_is_a_502_and_nothing_is_stored(
    sdk: openai.OpenAI, store_server: LiveServer, upstream: UpstreamDouble, reply: Any, stream: bool
) -> None:
    upstream.reset(reply)
    with pytest.raises(openai.APIError) as caught:
        result = create(sdk, store=True, stream=stream)
        if stream:
            list(result)
    if isinstance(caught.value, openai.APIStatusError):
        assert caught.value.status_code == 502
    assert caught.value.body["type"] == "server_error"
    assert stored_ids() == []
    # No worker is left stuck: the next request is served at once.
    upstream.reset()
    started = time.monotonic()
    assert create(sdk, store=True).choices[0].message.content == "Hello, world!"
    assert time.monotonic() - started < 1


def test_an_answer_that_arrives_after_the_client_left_is_stored_once(store_server: LiveServer, api_key: str, upstream: UpstreamDouble) -> None:
    upstream.reset(Hang(0.6))
    impatient = openai.OpenAI(base_url=store_server.v1, api_key=api_key, max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=MODEL, messages=MESSAGES, store=True)
    upstream.wait_until_ended()
    time.sleep(0.3)  # the store's worker finishes its write
    assert stored_ids() == ["chatcmpl-double-1"]


# --- Ids: a create never overwrites, whatever ids the upstream makes ------------------------------

REPEATED_ID = "chatcmpl-7"


def minted_from(completion_id: str, upstream_id: str) -> bool:
    """Whether ``completion_id`` is one the store minted for a completion the upstream called ``upstream_id``."""
    return completion_id.startswith(f"{upstream_id}-") and validation.completion_id_fault(completion_id) is None


def create_labelled(sdk: openai.OpenAI, label: str, *, stream: bool) -> tuple[str, list[Any]]:
    """Create with ``store: true`` and metadata ``{"who": label}``; return the id the client saw
    and, for a stream, its chunks (every one must carry that id)."""
    if not stream:
        return create(sdk, store=True, metadata={"who": label}).id, []
    chunks = list(create(sdk, store=True, metadata={"who": label}, stream=True, stream_options={"include_usage": True}))
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1, ids
    return ids.pop(), chunks


def assert_kept_as_seen(sdk: openai.OpenAI, seen: dict[str, str]) -> None:
    """Every label's completion is stored under the id its client saw, with its own metadata."""
    for label, completion_id in seen.items():
        assert sdk.chat.completions.retrieve(completion_id).metadata == {"who": label}
    assert sorted(stored_ids()) == sorted(seen.values())


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_upstream_that_repeats_ids_never_overwrites(sdk: openai.OpenAI, upstream: UpstreamDouble, stream: bool) -> None:
    """Issue 12: Ollama's ids repeat, and Alice's completion became Bob's. Now the first keeps the
    upstream's id and each later one gets a fresh id, which is what its client sees."""
    upstream.reset(Scripted(completion_id=REPEATED_ID))
    seen = {}
    for label in ("alice", "bob", "carol"):
        seen[label], _chunks = create_labelled(sdk, label, stream=stream)
    assert seen["alice"] == REPEATED_ID
    assert minted_from(seen["bob"], REPEATED_ID) and minted_from(seen["carol"], REPEATED_ID) and seen["bob"] != seen["carol"]
    assert_kept_as_seen(sdk, seen)
    assert [m.id for m in sdk.chat.completions.messages.list(seen["bob"])] == [f"{seen['bob']}-0", f"{seen['bob']}-1"]
    assert [c.id for c in sdk.chat.completions.list()] == list(seen.values())


def test_a_streamed_chunk_changes_in_its_id_only(store_server: LiveServer, api_key: str, upstream: UpstreamDouble) -> None:
    upstream.reset(Scripted(completion_id=REPEATED_ID, choices=(Choice(content=tuple("abc")),)))
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "store": True, "stream_options": {"include_usage": True}}
    received = []
    for _ in range(2):
        with httpx.stream("POST", f"{store_server.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"}) as response:
            received.append(response.read())
    first, second = received
    assert first == b"".join(upstream.received[0].sent)
    [minted] = set(stored_ids()) - {REPEATED_ID}
    expected = b"".join(upstream.received[1].sent).replace(f'"id": "{REPEATED_ID}"'.encode(), f'"id": "{minted}"'.encode())
    assert second == expected and second.count(minted.encode()) == len(upstream.received[1].sent) - 1


def test_twelve_concurrent_creates_with_one_upstream_id_are_all_kept(
    sdk: openai.OpenAI, upstream: UpstreamDouble, api_key: str
) -> None:
    """Half plain, half streamed, all at once, behind a completion stored earlier under the same id."""
    seed(completion_body(REPEATED_ID, metadata={"who": "earlier"}))
    upstream.reset(Scripted(completion_id=REPEATED_ID, delay=0.01))
    labels = [f"client-{i:02d}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda label: create_labelled(sdk, label, stream=int(label[-2:]) % 2 == 1)[0], labels))
    seen = {"earlier": REPEATED_ID, **dict(zip(labels, results))}
    assert len(set(seen.values())) == 13
    assert all(minted_from(completion_id, REPEATED_ID) for completion_id in results)
    assert_kept_as_seen(sdk, seen)
    assert sdk.chat.completions.retrieve(REPEATED_ID).choices[0].message.content == "Hello!"


UNFIT_UPSTREAM_IDS = [
    pytest.param("chatcmpl/with/slash", id="slash"),
    pytest.param("chatcmpl with space", id="space"),
    pytest.param("x" * 300, id="too-long"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("upstream_id", UNFIT_UPSTREAM_IDS)
def test_an_upstream_id_that_breaks_the_id_rule_gets_a_minted_one(
    sdk: openai.OpenAI, upstream: UpstreamDouble, upstream_id: str, stream: bool
) -> None:
    upstream.reset(Scripted(completion_id=upstream_id))
    completion_id, _chunks = create_labelled(sdk, "ann", stream=stream)
    assert completion_id.startswith("chatcmpl-") and validation.completion_id_fault(completion_id) is None
    assert_kept_as_seen(sdk, {"ann": completion_id})
    # Without store nothing is kept, and the upstream's id passes through as it was.
    seen = create(sdk, stream=stream)
    assert (next(iter(seen)).id if stream else seen.id) == upstream_id


def test_a_deleted_completions_id_is_not_taken_again(sdk: openai.OpenAI, upstream: UpstreamDouble) -> None:
    """A tombstone keeps its id (cursors naming it still page on): a create gets a fresh one."""
    upstream.reset(Scripted(completion_id=REPEATED_ID))
    first = create(sdk, store=True).id
    sdk.chat.completions.delete(first)
    second = create(sdk, store=True).id
    assert first == REPEATED_ID and minted_from(second, REPEATED_ID)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.retrieve(REPEATED_ID)


def test_a_streams_held_id_lists_nowhere_until_done(sdk: openai.OpenAI, upstream: UpstreamDouble) -> None:
    upstream.reset(Scripted(choices=(Choice(content=("one", " two", " three")),), delay=0.2))
    stream = iter(create(sdk, store=True, stream=True))
    first = next(stream)
    # Held (the id is taken: stored_ids counts tombstones) but not a completion yet.
    assert stored_ids() == [first.id]
    assert list(sdk.chat.completions.list()) == []
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.retrieve(first.id)
    rest = list(stream)
    assert {chunk.id for chunk in rest} == {first.id}
    assert sdk.chat.completions.retrieve(first.id).choices[0].message.content == "one two three"


def test_a_reservation_taken_over_by_an_import_stores_under_a_fresh_id(app: Any) -> None:
    """An import of the very id a stream holds lands first: the stream's completion is stored
    under a fresh id rather than over the imported one."""
    body = completion_body(REPEATED_ID)
    with write_connection() as connection:
        held = store.reserve_completion_id(connection, upstream_id=REPEATED_ID, created=1, model=MODEL)
    seed(completion_body(REPEATED_ID, metadata={"who": "import"}))
    with write_connection() as connection:
        stored_as = store.fill_reservation(connection, reservation=held, body=body, messages=[], metadata={"who": "stream"}, actor="t")
    assert minted_from(stored_as, REPEATED_ID)
    assert store.get_completion(db.session, completion_id=REPEATED_ID).metadata_map == {"who": "import"}
    assert store.get_completion(db.session, completion_id=stored_as).metadata_map == {"who": "stream"}


def test_a_create_that_fails_midway_leaves_nothing(app: Any) -> None:
    """The create's statements run on the driver's cursor (store.driver), still as one
    transaction: a failure after the completion row is in rolls it back with its metadata and
    history, and a driver error comes out as SQLAlchemy's exception, as everywhere else."""
    with pytest.raises(RuntimeError), write_connection() as writer:
        store.create_completion(writer, body=completion_body("half"), messages=[], metadata={"a": "b"}, actor="t")
        raise RuntimeError("the request died here")
    with pytest.raises(sa.exc.IntegrityError), write_connection() as writer:
        store.create_completion(writer, body=completion_body("half"), messages=[], metadata={"a": "b"}, actor="t")
        writer.execute(sa.insert(CompletionMetadata.__table__), {"completion_seq": -1, "key": "k", "value": "v"})
    assert stored_ids() == []
    assert db.session.scalar(sa.select(sa.func.count()).select_from(MetadataChange)) == 0
    # The connection went back to the pool in a clean state: the next create is stored.
    with write_connection() as writer:
        assert store.create_completion(writer, body=completion_body("whole"), messages=[], metadata={}, actor="t") == "whole"
    assert stored_ids() == ["whole"]


def test_a_failed_create_keeps_its_content_out_of_the_error(app: Any) -> None:
    """Like every statement of the engine (hide_parameters), the create's statements on the
    driver's cursor leave bound values out of an error's text, and so out of any log."""
    with write_connection() as writer:
        store.create_completion(writer, body=completion_body("taken"), messages=[], metadata={}, actor="t")
    with pytest.raises(sa.exc.IntegrityError) as caught, write_connection() as writer:
        writer.execute(sa.insert(Completion.__table__), {**completion_values_of("taken"), "id": "taken"})
    assert "secret words" not in str(caught.value) and "hidden due to hide_parameters" in str(caught.value)


def completion_values_of(completion_id: str) -> dict[str, Any]:
    values = store.completion_values(
        body=completion_body(completion_id), messages=[{"role": "user", "content": "secret words"}], metadata={}
    )
    values.update(version=1, updated_at=datetime.now(timezone.utc))
    return {("metadata" if name == "metadata_map" else name): value for name, value in values.items()}
