"""What the store's modules share: the page shape, the name-taken error, time buckets, the SQLite
tables that hold derived data back, and small helpers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

# The rollup's buckets (``completion_rollup.span``): an hour and a day, in seconds.
HOUR = 3600
DAY = 86400

# SQLite's mark that the INSERT triggers of derived data stand aside (migration 0009), and its
# list of completions whose derived data is still to be written (0015): see ``store.derived``.
SQLITE_DEFERRAL_TABLE = "derived_data_deferred"
SQLITE_PENDING_TABLE = "derived_data_pending"
# What a create runs around its INSERT on SQLite: the triggers stand aside for its row, which is
# recorded as pending instead.
DEFER_SQL = f"INSERT INTO {SQLITE_DEFERRAL_TABLE} (deferred) VALUES (1)"
UNDEFER_SQL = f"DELETE FROM {SQLITE_DEFERRAL_TABLE}"
MARK_PENDING_SQL = f"INSERT INTO {SQLITE_PENDING_TABLE} (seq) VALUES (?)"


@dataclass(frozen=True)
class Page:
    """One page of a list: the rows and whether more follow."""

    rows: list[Any]
    has_more: bool


class NameTaken(Exception):
    """An API key or user with this name exists already."""


def storable(name: str) -> bool:
    """Return whether a stored name (an id, a username) could hold ``name``.

    PostgreSQL text refuses NUL, so a name with one is simply not there: looking it up
    answers "not found" on every backend instead of a database error on one.
    """
    return "\x00" not in name


def as_utc(value: datetime) -> datetime:
    """Return ``value`` timezone-aware: SQLite hands back naive datetimes that were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def hash_secret(secret: str) -> str:
    """Return the SHA-256 hex digest under which a secret (an API key, a session token) is stored.

    Both are 256 random bits, so a fast hash is enough: nothing to brute-force.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def floor_to(value: int, span: int) -> int:
    """Return the start of the ``span``-second bucket holding unix time ``value`` (UTC)."""
    return value - value % span


def ceil_to(value: int, span: int) -> int:
    """Return the first bucket boundary at or after ``value``."""
    return -floor_to(-value, span)
