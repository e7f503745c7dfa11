"""API keys for ``/v1``: created with a secret shown once, kept only as its hash."""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..models import ApiKey, utcnow
from .base import NameTaken, hash_secret

API_KEY_PREFIX = "cs-"
# Touching last_used_at on every request would make every read a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def create_api_key(session: Session, *, name: str, read_only: bool = False) -> tuple[ApiKey, str]:
    """Create an API key; return it and its secret, which is not kept anywhere.

    Raises NameTaken if a live key has that name (a revoked key's name can be used again).
    """
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))) is not None:
        raise NameTaken(f"An API key named '{name}' exists already; choose another name.")
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, key_hash=hash_secret(secret), prefix=secret[:8], read_only=read_only)
    session.add(key)
    session.flush()
    return key, secret


def authenticate_api_key(session: Session, *, secret: str) -> ApiKey | None:
    """Return the live key whose secret is ``secret``, or None (unknown or revoked)."""
    digest = hash_secret(secret)
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, digest):
        return None
    return key


def key_needs_touch(key: Any, now: datetime | None = None) -> bool:
    """Return whether ``key.last_used_at`` (of an ApiKey or anything with that field) is stale enough to be worth a write."""
    now = now or utcnow()
    last = key.last_used_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=now.tzinfo)
    return last is None or now - last >= LAST_USED_RESOLUTION


def touch_api_key(session: Session, *, key_id: int) -> None:
    """Set the key's ``last_used_at`` to now."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def list_api_keys(session: Session) -> list[ApiKey]:
    """Return every API key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def get_live_api_key(session: Session, *, name: str) -> ApiKey:
    """Return the live key named ``name``. Raises LookupError if there is none."""
    key = session.scalar(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
    if key is None:
        raise LookupError(f"No live API key named '{name}'. See `flask --app webapp keys list`.")
    return key


def revoke_api_key(session: Session, *, name: str) -> ApiKey:
    """Revoke the key ``name``; return it. Raises LookupError if there is no live key of that name."""
    key = get_live_api_key(session, name=name)
    key.revoked_at = utcnow()
    session.flush()
    return key


def count_api_keys(session: Session) -> int:
    """Return how many live API keys there are."""
    return session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0
