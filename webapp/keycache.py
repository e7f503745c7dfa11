"""The per-process memory of API keys that authenticated, shared by every door.

A key that authenticated is remembered for ``API_KEY_CACHE_SECONDS`` (default 2): looking
it up is the largest part of a proxied create's added latency. A key revoked elsewhere
therefore stops working within that time on every server; in the process that revokes it
(the admin UI, the CLI: they call :func:`forget_api_keys`) at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime

from flask import Flask, current_app

from .models import ApiKey, utcnow

EXTENSION_KEY = "completion_store.api_keys"


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
        """Return the remembered key of this secret hash, or None when unknown or expired."""
        key = self._keys.get(digest)
        return key if key is not None and key.expires > time.monotonic() else None

    def put(self, digest: str, key: ApiKey) -> KnownKey:
        """Remember ``key`` (just authenticated) and return what requests need of it."""
        known = KnownKey(key.id, key.name, key.read_only, key.last_used_at, time.monotonic() + self.seconds)
        if self.seconds > 0:
            with self._lock:
                self._keys[digest] = known
        return known

    def touched(self, digest: str, known: KnownKey) -> None:
        """Note that the key's ``last_used_at`` was just written."""
        with self._lock:
            if digest in self._keys:
                self._keys[digest] = replace(known, last_used_at=utcnow())

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._keys.clear()


def key_cache(app: Flask) -> KeyCache:
    """Return the app's key cache (one per process), creating it on first use."""
    cache = app.extensions.get(EXTENSION_KEY)
    if cache is None:
        cache = app.extensions.setdefault(EXTENSION_KEY, KeyCache(app.config["API_KEY_CACHE_SECONDS"]))
    return cache


def forget_api_keys(app: Flask | None = None) -> None:
    """Drop every remembered key, so that a revocation in this process applies at once."""
    key_cache(app or current_app._get_current_object()).clear()  # type: ignore[attr-defined]
