"""Sync sources: where ``flask sync`` stands with each store it mirrors, and what is here already."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..models import Completion, SyncSource, utcnow
from ..validation import Filter


def _selection_text(selection: Filter) -> str:
    return json.dumps({"model": selection.model, "metadata": selection.metadata}, sort_keys=True, ensure_ascii=False)


def get_sync_source(session: Session, *, base_url: str, key_fingerprint: str, selection: Filter) -> SyncSource:
    """Return the position kept for this source (base URL, key, filter), creating it on first use.

    The key is part of the identity (by a fingerprint, never the key itself): one base URL,
    such as OpenAI's, serves a different store to each project's key.
    """
    text = _selection_text(selection)
    source_key = hashlib.sha256(json.dumps([base_url, key_fingerprint, text]).encode()).hexdigest()
    source = session.scalar(select(SyncSource).where(SyncSource.source_key == source_key))
    if source is None:
        source = SyncSource(source_key=source_key, base_url=base_url, selection=text, mirrored=0)
        session.add(source)
        session.flush()
    return source


def save_sync_position(session: Session, *, source_id: int, mirrored: int = 0, **position: str | None) -> None:
    """Record where a sync stands: ``last_id`` and/or ``full_after`` as given; ``mirrored`` is added to the count."""
    unknown = set(position) - {"last_id", "full_after"}
    if unknown:
        raise TypeError(f"not a position: {sorted(unknown)}")
    session.execute(
        update(SyncSource)
        .where(SyncSource.id == source_id)
        .values(**position, mirrored=SyncSource.mirrored + mirrored, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def stored_messages(session: Session, *, ids: list[str]) -> dict[str, list[Any] | None]:
    """Return, for each of ``ids`` stored here, its input messages (``None`` for a tombstone: deleted or purged)."""
    rows = session.execute(select(Completion.id, Completion.deleted, Completion.messages).where(Completion.id.in_(ids)))
    return {cid: (None if deleted else list(messages or [])) for cid, deleted, messages in rows}
