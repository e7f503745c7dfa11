"""Changes to many completions at once (bulk changes), their undo, and the recorded changes they come back from.

A bulk change is one ``BulkChange`` row (who, when, what, on what, how many) and, for a
metadata change, one ``MetadataChange`` per completion it changed, carrying the batch's
id. The work runs in short transactions of ``BATCH_SIZE`` completions each (see
:func:`run_bulk_change`), so a change to 100,000 completions never holds SQLite's write
lock for longer than one short batch: API writers wait at most that long, never past
``DATABASE_TIMEOUT``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from ..models import BulkChange, Completion, MetadataChange, utcnow
from ..validation import Filter, ValidationError, clean_metadata
from .completions import CompletionNotFound, PreconditionFailed, _filtered, delete_completion, get_completion, update_metadata
from .shapes import etag

# Completions per short transaction: big enough to be quick overall, small enough that a
# writer queued behind one batch waits tens of milliseconds, not seconds.
BATCH_SIZE = 200
# How many completions left alone a bulk change names (the count is always exact).
MAX_NAMED = 1000

Action = Literal["set", "remove", "delete"]
Transaction = Callable[[], AbstractContextManager[Session]]

NOT_FOUND = "Not found: deleted meanwhile, or never stored."


def get_metadata_change(session: Session, *, change_id: int) -> MetadataChange:
    """Return the recorded metadata change ``change_id``; raise LookupError if there is none."""
    change = session.get(MetadataChange, change_id)
    if change is None:
        raise LookupError(f"No metadata change #{change_id}.")
    return change


@dataclass(frozen=True)
class Selection:
    """What a bulk change acts on: the ticked ``ids``, or every match of ``filter`` up to ``upto``.

    ``upto`` is the highest insertion order (``seq``) when the confirmation page was shown,
    so completions stored after it are not swept in: the change acts on the set counted.
    """

    ids: tuple[str, ...] | None = None
    filter: Filter | None = None
    upto: int = 0


def latest_seq(session: Session) -> int:
    """Return the highest insertion order so far (0 for an empty store): the ``upto`` of a selection made now."""
    return session.scalar(select(func.max(Completion.seq))) or 0


def count_selection(session: Session, *, selection: Selection) -> int:
    """Return how many live completions ``selection`` holds now (what the confirmation page says)."""
    if selection.ids is not None:
        total = 0
        for start in range(0, len(selection.ids), BATCH_SIZE):
            chunk = selection.ids[start : start + BATCH_SIZE]
            stmt = select(func.count()).select_from(Completion).where(Completion.id.in_(chunk), Completion.deleted.is_(False))
            total += session.scalar(stmt) or 0
        return total
    assert selection.filter is not None
    stmt = _filtered(session, select(func.count()).select_from(Completion), filter=selection.filter)
    return session.scalar(stmt.where(Completion.seq <= selection.upto)) or 0


def _chunks(selection: Selection, transaction: Transaction) -> Iterator[tuple[Session, list[str]]]:
    """Yield (session in a fresh transaction, the next ids) until the selection is walked, one transaction each.

    A filter is walked by position (created, seq), oldest first, so a completion the change
    moves out of the filter, or deletes, never shifts what comes next.
    """
    if selection.ids is not None:
        ids = list(dict.fromkeys(selection.ids))
        for start in range(0, len(ids), BATCH_SIZE):
            with transaction() as tx:
                yield tx, ids[start : start + BATCH_SIZE]
        return
    assert selection.filter is not None
    position: tuple[int, int] | None = None
    while True:
        with transaction() as tx:
            stmt = _filtered(tx, select(Completion.id, Completion.created, Completion.seq), filter=selection.filter)
            stmt = stmt.where(Completion.seq <= selection.upto)
            if position is not None:
                stmt = stmt.where(tuple_(Completion.created, Completion.seq) > tuple_(*position))
            rows = tx.execute(stmt.order_by(Completion.created, Completion.seq).limit(BATCH_SIZE)).all()
            if not rows:
                return
            position = (rows[-1].created, rows[-1].seq)
            yield tx, [row.id for row in rows]


def start_bulk_change(
    session: Session,
    *,
    actor: str,
    action: Action | Literal["undo"],
    scope: str,
    requested: int,
    key: str | None = None,
    value: str | None = None,
    undoes_id: int | None = None,
) -> BulkChange:
    """Record the start of a bulk change and return it (its id is what its metadata changes carry)."""
    batch = BulkChange(
        actor=actor, action=action, key=key, value=value, scope=scope, requested=requested, undoes_id=undoes_id,
        changed=0, unchanged=0, refused=[], refused_count=0,
    )
    session.add(batch)
    session.flush()
    return batch


def _tally(session: Session, batch_id: int, *, changed: int, unchanged: int, refused: list[tuple[str, str]], finish: bool = False) -> None:
    """Add one short transaction's outcome to its bulk change's counts."""
    batch = session.get(BulkChange, batch_id)
    assert batch is not None
    values: dict[str, object] = {
        "changed": BulkChange.changed + changed,
        "unchanged": BulkChange.unchanged + unchanged,
        "refused_count": BulkChange.refused_count + len(refused),
    }
    room = MAX_NAMED - len(batch.refused or [])
    if refused and room > 0:
        values["refused"] = [*(batch.refused or []), *([cid, reason] for cid, reason in refused[:room])]
    if finish:
        values["finished_at"] = utcnow()
    session.execute(update(BulkChange).where(BulkChange.id == batch_id).values(**values).execution_options(synchronize_session=False))
    session.expire(batch)


def _set_one_key(session: Session, *, completion_id: str, key: str, value: str | None, actor: str, batch_id: int | None) -> bool:
    """Set or remove one key on the current version of one completion; return whether it changed.

    Never overwrites a concurrent writer: the write names the version it read, and a
    version changed meanwhile is read again and the key applied to what is there now.
    """
    for _attempt in range(5):
        row = get_completion(session, completion_id=completion_id)
        before = dict(row.metadata_map or {})
        after = dict(before)
        if value is None:
            after.pop(key, None)
        else:
            after[key] = value
        if after == before:
            return False
        try:
            update_metadata(
                session, completion_id=completion_id, metadata=clean_metadata(after), actor=actor,
                if_match={etag(row)}, batch_id=batch_id,
            )
            return True
        except PreconditionFailed:
            session.expire(row)
    raise PreconditionFailed(get_completion(session, completion_id=completion_id))


def _apply_one(session: Session, *, completion_id: str, action: Action, key: str | None, value: str | None, actor: str, batch_id: int) -> bool:
    """Apply a bulk change to one completion, in a savepoint so a refusal undoes only its own writes."""
    with session.begin_nested():
        if action == "delete":
            delete_completion(session, completion_id=completion_id)
            return True
        assert key is not None
        return _set_one_key(session, completion_id=completion_id, key=key, value=value if action == "set" else None, actor=actor, batch_id=batch_id)


def run_bulk_change(
    transaction: Transaction,
    *,
    selection: Selection,
    action: Action,
    key: str | None,
    value: str | None,
    actor: str,
    scope: str,
    requested: int,
) -> BulkChange:
    """Apply one bulk change to ``selection`` in short transactions of ``BATCH_SIZE``; return its record.

    ``transaction`` opens one write transaction (``extensions.write_transaction``): this
    function calls it once to record the batch, once per ``BATCH_SIZE`` completions, and
    once to mark it finished. ``key`` and ``value`` must be clean already. ``set`` sets
    ``key`` to ``value``, ``remove`` removes ``key``, ``delete`` deletes the completions
    (not undoable). A completion whose metadata would break a rule (more than 16 pairs),
    or that is gone, is left alone and named in the record with the reason.
    """
    with transaction() as tx:
        batch_id = start_bulk_change(tx, actor=actor, action=action, key=key, value=value, scope=scope, requested=requested).id
    for tx, ids in _chunks(selection, transaction):
        changed = unchanged = 0
        refused: list[tuple[str, str]] = []
        for completion_id in ids:
            try:
                done = _apply_one(tx, completion_id=completion_id, action=action, key=key, value=value, actor=actor, batch_id=batch_id)
            except CompletionNotFound:
                refused.append((completion_id, NOT_FOUND))
                continue
            except (ValidationError, PreconditionFailed) as exc:
                refused.append((completion_id, exc.message if isinstance(exc, ValidationError) else str(exc)))
                continue
            if done:
                changed += 1
            else:
                unchanged += 1
        _tally(tx, batch_id, changed=changed, unchanged=unchanged, refused=refused)
    return _finish(transaction, batch_id)


def _finish(transaction: Transaction, batch_id: int) -> BulkChange:
    with transaction() as tx:
        _tally(tx, batch_id, changed=0, unchanged=0, refused=[], finish=True)
        batch = tx.get(BulkChange, batch_id)
        assert batch is not None
        tx.expunge(batch)
        return batch


class NotUndoable(Exception):
    """This bulk change cannot be undone (a delete, or undone already); the message says why."""


def undo_bulk_change(transaction: Transaction, *, batch_id: int, actor: str) -> BulkChange:
    """Undo bulk change ``batch_id`` in short transactions; return the undo's own record (itself a bulk change).

    Every completion the batch changed goes back to its metadata before the batch, unless
    it was changed again since (by anyone) or deleted: those are left alone and named in
    the undo's record with who changed them. Raises LookupError for an unknown batch and
    NotUndoable for a delete or a batch undone already.
    """
    with transaction() as tx:
        batch = get_bulk_change(tx, batch_id=batch_id)
        if batch.action == "delete":
            raise NotUndoable("A bulk delete cannot be undone.")
        undone_by = tx.scalar(select(BulkChange.id).where(BulkChange.undoes_id == batch_id))
        if undone_by is not None:
            raise NotUndoable(f"Bulk change #{batch_id} was undone already (by #{undone_by}).")
        undo_id = start_bulk_change(
            tx, actor=actor, action="undo", scope=f"the {batch.changed} completions bulk change #{batch_id} changed",
            requested=batch.changed, undoes_id=batch_id,
        ).id
    after_id = 0
    while True:
        with transaction() as tx:
            changes = list(
                tx.scalars(
                    select(MetadataChange)
                    .where(MetadataChange.batch_id == batch_id, MetadataChange.id > after_id)
                    .order_by(MetadataChange.id)
                    .limit(BATCH_SIZE)
                )
            )
            if not changes:
                break
            after_id = changes[-1].id
            changed = 0
            refused: list[tuple[str, str]] = []
            for change in changes:
                reason = _undo_one(tx, change=change, actor=actor, undo_id=undo_id)
                if reason is None:
                    changed += 1
                else:
                    refused.append((change.completion_id, reason))
            _tally(tx, undo_id, changed=changed, unchanged=0, refused=refused)
    return _finish(transaction, undo_id)


def _undo_one(session: Session, *, change: MetadataChange, actor: str, undo_id: int) -> str | None:
    """Put one completion back as it was before ``change``; return why not, or None when done."""
    later = aliased(MetadataChange)
    since = session.scalar(
        select(later).where(later.completion_id == change.completion_id, later.id > change.id).order_by(later.id.desc()).limit(1)
    )
    try:
        row = get_completion(session, completion_id=change.completion_id)
    except CompletionNotFound:
        return "Deleted since the bulk change."
    if since is not None or dict(row.metadata_map or {}) != dict(change.after):
        who = f" by {since.actor}" if since is not None else ""
        return f"Changed again since the bulk change{who}: left as it is now."
    try:
        with session.begin_nested():
            update_metadata(
                session, completion_id=change.completion_id, metadata=clean_metadata(change.before), actor=actor,
                if_match={etag(row)}, batch_id=undo_id,
            )
    except PreconditionFailed:
        return "Changed again since the bulk change: left as it is now."
    return None


def get_bulk_change(session: Session, *, batch_id: int) -> BulkChange:
    """Return bulk change ``batch_id``; raise LookupError if there is none."""
    batch = session.get(BulkChange, batch_id)
    if batch is None:
        raise LookupError(f"No bulk change #{batch_id}.")
    return batch


def list_bulk_changes(session: Session, *, before_id: int | None = None, limit: int = 50) -> tuple[list[BulkChange], dict[int, int]]:
    """Return up to ``limit`` bulk changes, newest first (older than ``before_id`` if given), and which were undone.

    The second value maps a listed batch's id to the id of the bulk change that undid it.
    """
    stmt = select(BulkChange).order_by(BulkChange.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(BulkChange.id < before_id)
    batches = list(session.scalars(stmt))
    ids = [batch.id for batch in batches]
    undone = {row.undoes_id: row.id for row in session.execute(select(BulkChange.undoes_id, BulkChange.id).where(BulkChange.undoes_id.in_(ids)))} if ids else {}
    return batches, undone
