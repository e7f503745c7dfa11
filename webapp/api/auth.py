"""Bearer-key authentication for every ``/v1`` route (keys remembered briefly: see ``webapp.keycache``)."""

from __future__ import annotations

from flask import current_app, g, request

from .. import store
from ..errors import APIError
from ..extensions import db, write_transaction
from ..keycache import key_cache
from . import bp

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CREATE_ENDPOINT = "api.create_completion"


def _bearer_secret() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise APIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    return secret.strip()


@bp.before_request
def require_api_key() -> None:
    """Let the request through only with a live key; a read-only key only for reads."""
    secret = _bearer_secret()
    cache = key_cache(current_app)
    digest = store.hash_secret(secret)
    key = cache.get(digest)
    if key is None:
        found = store.authenticate_api_key(db.session, secret=secret)
        if found is None:
            raise APIError(
                401,
                "Incorrect API key provided. Create one with `flask --app webapp keys create NAME`.",
                code="invalid_api_key",
            )
        key = cache.put(digest, found)
    g.api_key_name = key.name
    if store.key_needs_touch(key):
        with write_transaction() as session:
            store.touch_api_key(session, key_id=key.id)
        cache.touched(digest, key)
    if key.read_only and request.method not in SAFE_METHODS:
        if request.endpoint == CREATE_ENDPOINT:
            message = (
                f"The API key '{key.name}' is read-only. Creating a chat completion forwards it to the "
                "upstream model server, which is paid for, so it needs a key with write access."
            )
        else:
            message = f"The API key '{key.name}' is read-only: it can list and retrieve but not change anything."
        raise APIError(403, message, code="insufficient_permissions")


def actor() -> str:
    """Return who is making this request, for the metadata history."""
    return f"key:{g.api_key_name}"
