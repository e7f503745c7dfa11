"""``POST /v1/chat/completions``: forward to the upstream, answer as it answers, and keep
the completion when ``store`` is true (a stream's once the upstream's ``[DONE]`` arrives)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g

from .. import metrics, store, validation
from ..errors import APIError, envelope
from ..extensions import db, write_transaction
from ..upstream import Answer, EventStream, StreamAssembler, event_data, is_done, parse_data, upstream_for
from . import bp
from .auth import actor
from .views import json_body

log = logging.getLogger(__name__)

# No proxy (nginx's X-Accel-Buffering) and no cache may hold events back.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.post("/chat/completions")
def create_completion() -> Response:
    """Create a chat completion through the upstream, streamed or not; keep it when ``store`` is true."""
    create = validation.clean_create_request(json_body())
    # Give the database connection back while the upstream works: that can take minutes.
    db.session.close()
    upstream = upstream_for(current_app)
    if create.stream:
        events = upstream.stream(create.forward)
        pending = PendingCreate(
            app=current_app._get_current_object(),  # type: ignore[attr-defined]
            create=create,
            request_id=_adopt_request_id(events.request_id),
            actor=actor(),
        )
        headers = {**STREAM_HEADERS, **events.headers}
        response = Response(_relay(events, pending), mimetype="text/event-stream", headers=headers)
        # Also when the body is never iterated, the upstream request ends with the response.
        response.call_on_close(events.close)
        return response
    answer = upstream.create(create.forward)
    request_id = _adopt_request_id(answer.request_id)
    if create.store:
        _save(create, answer.completion, request_id, actor())
    return Response(with_metadata(answer, create.metadata), mimetype="application/json", headers=answer.headers)


def with_metadata(answer: Answer, metadata: dict[str, str]) -> bytes:
    """Return the upstream's answer with ``metadata`` added: its bytes as they came, the
    field appended before the closing brace, unless the upstream sent a ``metadata`` itself."""
    if "metadata" in answer.completion:
        return json.dumps({**answer.completion, "metadata": metadata}, ensure_ascii=False).encode("utf-8")
    return answer.raw.rstrip()[:-1] + b',"metadata":' + json.dumps(metadata, ensure_ascii=False).encode("utf-8") + b"}"


def _adopt_request_id(upstream_request_id: str | None) -> str:
    """Answer with the upstream's request id when it sent one, so that the ``x-request-id``
    a client sees is the ``request_id`` stored with the completion; return that id."""
    if upstream_request_id:
        g.request_id = upstream_request_id
    return g.request_id


def _save(create: validation.CreateRequest, completion: dict[str, Any], request_id: str, actor: str) -> None:
    """Store the completion with its request, in one transaction."""
    with write_transaction() as session:
        store.save_completion(
            session,
            body=store.build_completion_body(create.forward, completion, request_id),
            messages=create.forward["messages"],
            metadata=create.metadata,
            actor=actor,
        )
    metrics.completion_stored(stream=create.stream)


@dataclass(frozen=True)
class PendingCreate:
    """What a stream needs to store its completion once the request context is gone."""

    app: Flask
    create: validation.CreateRequest
    request_id: str
    actor: str


def _relay(events: EventStream, pending: PendingCreate) -> Iterator[bytes]:
    """Pass every upstream event on as it arrives, assembling the completion on the way.

    When ``[DONE]`` arrives the completion is stored (if asked) before ``[DONE]`` is passed
    on, so a client that has read ``[DONE]`` can retrieve it at once. A stream that fails
    or ends early stores nothing and ends with an error event, which the OpenAI SDK raises.
    A client that goes away closes the generator, and ``finally`` ends the upstream request.
    """
    assembler = StreamAssembler()
    storable = pending.create.store
    ended = False  # the client has had [DONE] or an error event
    metrics.STREAMS_OPEN.inc()
    try:
        for raw in events:
            data = event_data(raw)
            if data is not None and is_done(data):
                if storable and not ended:
                    _save_streamed(assembler, pending)
                ended = True
                yield raw
                continue
            # Passed on first: parsing the event for the assembly need not delay it.
            yield raw
            if data is None:
                continue  # a comment, such as a keep-alive
            kind, chunk = parse_data(data)
            if kind == "chunk":
                if storable:
                    assembler.add(chunk or {})
                continue
            if storable:
                log.warning("the upstream stream sent %s data: request %s is not stored", kind, pending.request_id)
            storable = False
            ended = ended or kind == "error"
        if not ended:
            raise APIError(
                502,
                "The upstream model server ended the stream before [DONE]. Nothing was stored.",
                type="server_error",
            )
    except APIError as exc:
        if not ended:
            yield sse_error_event(exc)
    finally:
        metrics.STREAMS_OPEN.dec()
        events.close()


def _save_streamed(assembler: StreamAssembler, pending: PendingCreate) -> None:
    """Store a streamed completion (the request's context is gone: the app's is pushed);
    raise APIError when that fails, for the error event."""
    completion = assembler.completion()
    try:
        with pending.app.app_context():
            _save(pending.create, completion, pending.request_id, pending.actor)
    except Exception as exc:
        log.exception("a streamed completion could not be stored (request %s)", pending.request_id)
        raise APIError(
            500,
            "The completion was streamed in full but could not be stored: the database failed. Nothing was stored.",
            type="server_error",
        ) from exc


def sse_error_event(error: APIError) -> bytes:
    """Return the SSE event that reports ``error`` in the OpenAI envelope mid-stream."""
    body = envelope(error.message, type=error.type, param=error.param, code=error.code)
    return b"data: " + json.dumps(body).encode("utf-8") + b"\n\n"
