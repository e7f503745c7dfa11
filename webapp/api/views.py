"""The stored-completions views: parse, validate, call the store, answer JSON."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from werkzeug.wsgi import get_input_stream

from .. import store, validation
from ..errors import body_too_large
from ..extensions import db, write_transaction
from ..models import Completion
from . import bp
from .auth import actor


READ_SIZE = 64 * 1024


def read_body(limit: int) -> bytes:
    """Return the request body; raise APIError 413 if it is longer than ``limit`` bytes (or
    ``MAX_CONTENT_LENGTH``, the bound of every route, if that is lower).

    Nothing is parsed and at most ``limit + 1`` bytes are kept, so a chunked body (no
    ``Content-Length``) is bounded as surely as one that announces its length. The rest of
    an oversized body, up to twice ``MAX_CONTENT_LENGTH``, is read and dropped: clients
    (the SDKs among them) send the whole body before they read the answer, and would see a
    reset connection instead of the 413. A body announced larger than that is not read at
    all, and the server closes the connection after the 413.
    """
    limit = min(limit, request.max_content_length or limit)
    most = 2 * limit if request.max_content_length is None else 2 * request.max_content_length
    if request.content_length is not None and request.content_length > most:
        raise body_too_large(limit)
    # Werkzeug's own stream stops silently at MAX_CONTENT_LENGTH on a chunked body, so a
    # cut-off body would look like bad JSON: read one byte more than allowed to know.
    stream = get_input_stream(request.environ, max_content_length=most)
    body = bytearray()
    length = request.content_length
    if length is not None and length <= limit:
        # The usual case: as many bytes as announced, no read more to find the end (a body cut
        # short ends the stream early, which werkzeug answers 400).
        while len(body) < length and (chunk := stream.read(length - len(body))):
            body += chunk
        return bytes(body)
    while len(body) <= limit and (chunk := stream.read(min(READ_SIZE, limit + 1 - len(body)))):
        body += chunk
    if len(body) > limit:
        while not getattr(stream, "is_exhausted", False) and stream.read(READ_SIZE):
            pass
        raise body_too_large(limit)
    return bytes(body)


def json_body(*, limit: int) -> Any:
    """Return the parsed JSON body of at most ``limit`` bytes.

    Raises APIError 413 when the body is longer (before parsing it), ValidationError if it is not JSON.
    """
    return validation.parse_json(read_body(limit))


def list_body(page: store.Page, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the OpenAI list object of one page of items."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": page.has_more,
    }


def completion_response(row: Completion) -> Response:
    """Return the completion object with its ETag."""
    response = jsonify(store.completion_object(row))
    response.headers["ETag"] = store.etag(row)
    return response


def _if_match() -> set[str] | None:
    """Return the ETags ``If-Match`` accepts, or None when any version will do."""
    if "If-Match" not in request.headers or request.if_match.star_tag:
        return None
    return {store.version_etag(tag) for tag in request.if_match.as_set()}


@bp.get("/chat/completions")
def list_completions() -> Response:
    """List stored completions: filters, cursor paging, one query per page."""
    query = validation.clean_list_query(request.args.items(multi=True))
    page = store.list_completions(db.session, filter=query.filter, page=query.page)
    return jsonify(list_body(page, [store.completion_object(row) for row in page.rows]))


@bp.get("/chat/completions/<path:completion_id>")
def retrieve_completion(completion_id: str) -> Response:
    """Return one stored completion."""
    return completion_response(store.get_completion(db.session, completion_id=completion_id))


@bp.post("/chat/completions/<path:completion_id>")
def update_completion(completion_id: str) -> Response:
    """Replace a completion's metadata; ``If-Match`` guards against lost updates."""
    metadata = validation.clean_update_body(json_body(limit=validation.MAX_UPDATE_BODY_BYTES))
    with write_transaction() as session:
        row = store.update_metadata(
            session, completion_id=completion_id, metadata=metadata, actor=actor(), if_match=_if_match()
        )
        response = completion_response(row)
    return response


@bp.delete("/chat/completions/<path:completion_id>")
def delete_completion(completion_id: str) -> Response:
    """Delete a completion, keeping its place for cursors."""
    with write_transaction() as session:
        store.delete_completion(session, completion_id=completion_id)
    return jsonify({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})


@bp.get("/chat/completions/<path:completion_id>/messages")
def list_messages(completion_id: str) -> Response:
    """List the input messages of a stored completion."""
    query = validation.clean_page_query(request.args.items(multi=True))
    page = store.list_messages(db.session, completion_id=completion_id, query=query)
    return jsonify(list_body(page, page.rows))
