"""Retention: purging old completions in short batches, and what a purge leaves behind.

A purged completion becomes the same content-free tombstone an API delete leaves (id,
created, model, seq; see :func:`~.completions.tombstone_values`): its body, messages and
metadata are cleared, its metadata rows and its whole history are deleted. The tombstone
keeps two promises: a list cursor naming it still pages on (as for any delete), and ``sync``
does not bring back from another store what this store's retention removed.

Nothing here commits: the caller makes each batch one short transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from ..models import Completion, CompletionMetadata, MetadataChange, utcnow
from ..validation import Filter
from .completions import _filtered, tombstone_values


def _purgeable(session: Session, stmt: Any, *, filter: Filter, created_before: int) -> Any:
    return _filtered(session, stmt, filter=filter).where(Completion.created < created_before)


def count_purgeable(session: Session, *, filter: Filter, created_before: int) -> int:
    """Return how many live completions match ``filter`` and were created before ``created_before`` (unix seconds)."""
    stmt = _purgeable(session, select(func.count()).select_from(Completion), filter=filter, created_before=created_before)
    return session.scalar(stmt) or 0


def purge_batch(session: Session, *, filter: Filter, created_before: int, limit: int) -> list[str]:
    """Purge up to ``limit`` of the oldest live completions matching ``filter`` created before ``created_before``.

    Each becomes a content-free tombstone; its metadata rows and history are deleted.
    Returns the ids purged (fewer than ``limit``: nothing is left to purge).
    """
    chosen = _purgeable(session, select(Completion.seq, Completion.id), filter=filter, created_before=created_before)
    rows = session.execute(chosen.order_by(Completion.created, Completion.seq).limit(limit)).all()
    if not rows:
        return []
    seqs = [seq for seq, _id in rows]
    ids = [completion_id for _seq, completion_id in rows]
    session.execute(
        update(Completion)
        .where(Completion.seq.in_(seqs), Completion.deleted.is_(False))
        .values(**tombstone_values(), version=Completion.version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(CompletionMetadata).where(CompletionMetadata.completion_seq.in_(seqs)))
    session.execute(delete(MetadataChange).where(MetadataChange.completion_id.in_(ids)))
    return ids


def purge_deleted_history_batch(session: Session, *, model: str | None, created_before: int, limit: int) -> int:
    """Delete the history of up to ``limit`` completions deleted earlier (tombstones) created before
    ``created_before`` (of ``model`` when given): the metadata values it recorded are content too.

    Returns how many completions' history went (fewer than ``limit``: none is left).
    """
    tombstones = (
        select(Completion.id)
        .where(Completion.deleted.is_(True), Completion.created < created_before)
        .where(select(MetadataChange.id).where(MetadataChange.completion_id == Completion.id).exists())
    )
    if model is not None:
        tombstones = tombstones.where(Completion.model == model)
    ids = list(session.scalars(tombstones.limit(limit)))
    if ids:
        session.execute(delete(MetadataChange).where(MetadataChange.completion_id.in_(ids)))
    return len(ids)
