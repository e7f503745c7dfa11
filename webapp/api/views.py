"""The stored-completions views: parse, validate, call the store, answer JSON."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request

from .. import store, validation
from ..extensions import db, write_transaction
from ..models import Completion
from . import bp
from .auth import actor


def json_body() -> Any:
    """Return the parsed JSON body; raise ValidationError if it is not JSON."""
    return validation.parse_json(request.get_data(cache=False))


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
    metadata = validation.clean_update_body(json_body())
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
