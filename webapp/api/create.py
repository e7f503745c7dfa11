"""``POST /v1/chat/completions``: forward to the upstream, answer as it answers, and keep
the completion when ``store`` is true (a stream's once the upstream's ``[DONE]`` arrives)."""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g

from .. import metrics, store, validation
from ..errors import APIError, envelope
from ..extensions import db, keep_pending_derived_data, write_connection
from ..upstream import (
    Answer,
    EventStream,
    StreamAssembler,
    event_data,
    event_with_id,
    is_done,
    parse_data,
    upstream_for,
    with_id,
)
from . import bp
from .auth import actor
from .views import json_body

log = logging.getLogger(__name__)

# No proxy (nginx's X-Accel-Buffering) and no cache may hold events back.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.post("/chat/completions")
def create_completion() -> Response:
    """Create a chat completion through the upstream, streamed or not; keep it when ``store`` is true."""
    create = validation.clean_create_request(json_body(limit=current_app.config["MAX_CONTENT_LENGTH"]))
    # Give the database connection back while the upstream works: that can take minutes. (A key
    # found in the key cache used no session: none is made only to be closed.)
    if db.session.registry.has():
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
    completion_id = answer.completion["id"]
    if create.store:
        completion_id = _save(create, answer.completion, request_id, actor())
    body = answer_body(answer, metadata=create.metadata, completion_id=completion_id)
    response = Response(body, mimetype="application/json", headers=answer.headers)
    if create.store and next(_stored_creates) % PENDING_BATCH == PENDING_BATCH - 1:
        # Once the answer has gone out: the derived data (search index entries, rollup counts,
        # metadata filter rows) that this process's last creates left pending (SQLite, migration
        # 0015), in one batch. Any transaction that begins sooner writes them itself, first.
        response.call_on_close(functools.partial(_keep_pending_derived_data, current_app._get_current_object()))  # type: ignore[attr-defined]
    return response


# A create on SQLite leaves its derived data pending (migration 0015); every PENDING_BATCH-th
# create of a process writes it, for all pending creates, after its answer. In process on the
# 2-core machine, a batch of one cost 373 us (more than the ~110 us it takes off a create), a
# batch of 16 about 0.9-1.2 ms, 56-76 us a create (bench/keep.py). A reader finds at most
# PENDING_BATCH - 1 pending creates a server process, and writes them first.
PENDING_BATCH = 16
_stored_creates = itertools.count()


def _keep_pending_derived_data(app: Flask) -> None:
    """Write what creates left pending; a failure is logged, and the next transaction writes it."""
    try:
        with app.app_context():
            keep_pending_derived_data()
    except Exception:
        log.exception("the derived data of new completions is left for the next transaction to write")


def answer_body(answer: Answer, *, metadata: dict[str, str], completion_id: str) -> bytes:
    """Return the upstream's answer with ``metadata`` added and the id it is stored under: its
    bytes as they came, the id's text replaced if it changed and the field appended before the
    closing brace, unless the upstream sent a ``metadata`` itself (then re-encoded)."""
    raw = None if "metadata" in answer.completion else with_id(answer.raw, answer.completion, completion_id)
    if raw is None:
        return json.dumps({**answer.completion, "id": completion_id, "metadata": metadata}, ensure_ascii=False).encode("utf-8")
    return raw.rstrip()[:-1] + b',"metadata":' + json.dumps(metadata, ensure_ascii=False).encode("utf-8") + b"}"


def _adopt_request_id(upstream_request_id: str | None) -> str:
    """Answer with the upstream's request id when it sent one, so that the ``x-request-id``
    a client sees is the ``request_id`` stored with the completion; return that id."""
    if upstream_request_id:
        g.request_id = upstream_request_id
    return g.request_id


def _save(
    create: validation.CreateRequest,
    completion: dict[str, Any],
    request_id: str,
    actor: str,
    reservation: store.Reservation | None = None,
) -> str:
    """Store a new completion with its request, in one transaction, under its reserved id when
    a stream holds one; return the id it is stored under (see ``store.create_completion``)."""
    body = store.build_completion_body(create.forward, completion, request_id)
    with write_connection() as connection:
        if reservation is not None:
            stored_id = store.fill_reservation(
                connection, reservation=reservation, body=body, messages=create.forward["messages"],
                metadata=create.metadata, actor=actor,
            )
        else:
            stored_id = store.create_completion(
                connection, body=body, messages=create.forward["messages"], metadata=create.metadata, actor=actor
            )
    metrics.completion_stored(stream=create.stream)
    return stored_id


@dataclass(frozen=True)
class PendingCreate:
    """What a stream needs to store its completion once the request context is gone."""

    app: Flask
    create: validation.CreateRequest
    request_id: str
    actor: str


def _relay(events: EventStream, pending: PendingCreate) -> Iterator[bytes]:
    """Pass every upstream event on as it arrives, assembling the completion on the way.

    With ``store: true`` the first chunk reserves the id the completion will be stored under
    (the upstream's when free, else a minted one) and every chunk passes on with that id,
    its other bytes unchanged. When ``[DONE]`` arrives the completion is stored (if asked)
    before ``[DONE]`` is passed on, so a client that has read ``[DONE]`` can retrieve it at
    once. A stream that fails or ends early stores nothing (its reservation is released)
    and ends with an error event, which the OpenAI SDK raises. A client that goes away
    closes the generator, and ``finally`` ends the upstream request.
    """
    assembler = StreamAssembler()
    keep = pending.create.store
    storable = keep
    reservation: store.Reservation | None = None
    shown_id: str | None = None  # the id every chunk carries once one is reserved
    ended = False  # the client has had [DONE] or an error event
    metrics.STREAMS_OPEN.inc()
    try:
        for raw in events:
            data = event_data(raw)
            if data is not None and is_done(data):
                if storable and not ended:
                    _save_streamed(assembler, pending, reservation)
                    reservation = None
                ended = True
                yield raw
                continue
            if data is None:
                yield raw  # a comment, such as a keep-alive
                continue
            if not keep:
                # Passed on first: nothing to rewrite, and parsing need not delay it.
                yield raw
                kind, _chunk = parse_data(data)
                ended = ended or kind == "error"
                continue
            kind, chunk = parse_data(data)
            if kind == "chunk" and chunk is not None:
                if shown_id is None and storable:
                    reservation = _reserve(chunk, pending)
                    shown_id = reservation.completion_id
                yield raw if shown_id is None else event_with_id(raw, chunk, shown_id)
                if storable:
                    assembler.add(chunk)
                continue
            if storable:
                log.warning("the upstream stream sent %s data: request %s is not stored", kind, pending.request_id)
            storable = False
            # Released before the client hears of the failure, so it never finds the id held.
            _release(reservation, pending)
            reservation = None
            yield raw
            ended = ended or kind == "error"
        if not ended:
            raise APIError(
                502,
                "The upstream model server ended the stream before [DONE]. Nothing was stored.",
                type="server_error",
            )
    except APIError as exc:
        _release(reservation, pending)
        reservation = None
        if not ended:
            yield sse_error_event(exc)
    finally:
        metrics.STREAMS_OPEN.dec()
        events.close()
        _release(reservation, pending)


@contextmanager
def _database_step(pending: PendingCreate, failure: str) -> Iterator[None]:
    """Run a stream's database step in the app's context (the request's is gone); a failure
    is logged and raised as APIError 500 saying ``failure``, for the error event."""
    try:
        with pending.app.app_context():
            yield
    except Exception as exc:
        log.exception("%s (request %s)", failure, pending.request_id)
        raise APIError(500, failure, type="server_error") from exc


def _reserve(chunk: dict[str, Any], pending: PendingCreate) -> store.Reservation:
    """Hold the id a streamed completion will be stored under; raise APIError when the database fails."""
    failure = "The database failed before the stream began, so it could not be stored. Nothing was stored."
    with _database_step(pending, failure), write_connection() as connection:
        return store.reserve_completion_id(
            connection, upstream_id=chunk.get("id"), created=chunk.get("created"), model=chunk.get("model")
        )


def _release(reservation: store.Reservation | None, pending: PendingCreate) -> None:
    """Give back the id held for a stream that ended short, if any. A failure only leaves a
    content-free tombstone behind."""
    if reservation is None:
        return
    try:
        with pending.app.app_context(), write_connection() as connection:
            store.release_reservation(connection, reservation=reservation)
    except Exception:
        log.exception("the id held for request %s could not be released", pending.request_id)


def _save_streamed(assembler: StreamAssembler, pending: PendingCreate, reservation: store.Reservation | None) -> None:
    """Store a streamed completion under its reserved id; raise APIError when that fails."""
    completion = assembler.completion()
    failure = "The completion was streamed in full but could not be stored: the database failed. Nothing was stored."
    with _database_step(pending, failure):
        _save(pending.create, completion, pending.request_id, pending.actor, reservation)


def sse_error_event(error: APIError) -> bytes:
    """Return the SSE event that reports ``error`` in the OpenAI envelope mid-stream."""
    body = envelope(error.message, type=error.type, param=error.param, code=error.code)
    return b"data: " + json.dumps(body).encode("utf-8") + b"\n\n"
