"""Bearer-key authentication for every ``/v1`` route.

A key that authenticated is remembered in the process for ``API_KEY_CACHE_SECONDS``
(default 2): looking it up is the largest part of a proxied create's added latency. A key
revoked elsewhere therefore stops working within that time on every server; in the
process that revokes it (the admin UI, the CLI) at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime

from flask import Flask, current_app, g, request

from .. import store
from ..errors import APIError
from ..extensions import db, write_transaction
from . import bp

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CACHE_EXTENSION = "completion_store.api_keys"


@dataclass(frozen=True)
class KnownKey:
    """What a request needs of a live key."""

    id: int
    name: str
    read_only: bool
    last_used_at: datetime | None
    expires: float


class KeyCache:
    """Live keys by the hash of their secret, each for a few seconds. Thread-safe."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._keys: dict[str, KnownKey] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> KnownKey | None:
        key = self._keys.get(digest)
        return key if key is not None and key.expires > time.monotonic() else None

    def put(self, digest: str, key: store.ApiKey) -> KnownKey:
        known = KnownKey(key.id, key.name, key.read_only, key.last_used_at, time.monotonic() + self.seconds)
        if self.seconds > 0:
            with self._lock:
                self._keys[digest] = known
        return known

    def touched(self, digest: str, known: KnownKey) -> None:
        with self._lock:
            if digest in self._keys:
                self._keys[digest] = replace(known, last_used_at=store.utcnow())

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


def _cache(app: Flask) -> KeyCache:
    cache = app.extensions.get(CACHE_EXTENSION)
    if cache is None:
        cache = app.extensions.setdefault(CACHE_EXTENSION, KeyCache(app.config["API_KEY_CACHE_SECONDS"]))
    return cache


def forget_api_keys(app: Flask | None = None) -> None:
    """Drop every remembered key, so that a revocation in this process applies at once."""
    _cache(app or current_app._get_current_object()).clear()  # type: ignore[attr-defined]


def revocation_notice(name: str, seconds: float) -> str:
    """Return what to tell whoever revoked the key ``name``, true for every server process.

    The process that revoked it forgets the key at once; every other one (the other gunicorn
    workers, other servers) may still accept it for up to ``seconds`` (API_KEY_CACHE_SECONDS).
    """
    if seconds <= 0:
        return f"Revoked API key '{name}': requests using it now get 401."
    return (
        f"Revoked API key '{name}': requests using it get 401 within {seconds:g} s "
        f"(each server process remembers a key for API_KEY_CACHE_SECONDS)."
    )


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
    cache = _cache(current_app)
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
        raise APIError(
            403,
            f"The API key '{key.name}' is read-only: it can list and retrieve but not change anything.",
            code="insufficient_permissions",
        )


def actor() -> str:
    """Return who is making this request, for the metadata history."""
    return f"key:{g.api_key_name}"
