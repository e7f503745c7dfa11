"""Changes to many completions at once (bulk changes), their undo, and the recorded changes they come back from.

A bulk change is one ``BulkChange`` row (who, when, what, on what, how many) and, for a
metadata change, one ``MetadataChange`` per completion it changed, carrying the batch's
id. The work runs in short transactions of ``BATCH_SIZE`` completions each (see
:func:`run_bulk_change`), so a change to 100,000 completions never holds SQLite's write
lock for longer than one short batch: API writers wait at most that long, never past
``DATABASE_TIMEOUT``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from ..models import BulkChange, Completion, CompletionMetadata, MetadataChange, utcnow
from ..validation import Filter, ValidationError, clean_metadata
from .completions import CompletionNotFound, PreconditionFailed, _filtered, delete_completion, get_completion, update_metadata
from .shapes import etag

# Completions per short transaction: big enough to be quick overall, small enough that a
# writer queued behind one batch waits tens of milliseconds, not seconds.
BATCH_SIZE = 200
# ... and never longer than this: on a busy machine the transaction commits early and the
# next one carries on, so a writer queued behind it waits a fraction of a second at most.
MAX_BATCH_SECONDS = 0.25
# SQLite hands its write lock to whoever asks first, and a writer waiting in its busy handler
# sleeps up to 100 ms between tries: without a pause after each commit the bulk change would
# take the lock straight back and starve the API's writers. PostgreSQL locks rows, not the database.
SQLITE_PAUSE_SECONDS = 0.1
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


class _Walk:
    """The position of a bulk change in its selection, advanced as each short transaction commits.

    A filter is walked by position (created, seq), oldest first, so a completion the change
    moves out of the filter, or deletes, never shifts what comes next.
    """

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.ids = list(dict.fromkeys(selection.ids)) if selection.ids is not None else None
        self.start = 0
        self.position: tuple[int, int] | None = None
        self.rows: list[Any] = []

    def next_ids(self, session: Session) -> list[str]:
        """Return up to ``BATCH_SIZE`` ids from the current position (none when the walk is over)."""
        if self.ids is not None:
            return self.ids[self.start : self.start + BATCH_SIZE]
        assert self.selection.filter is not None
        stmt = _filtered(session, select(Completion.id, Completion.created, Completion.seq), filter=self.selection.filter)
        stmt = stmt.where(Completion.seq <= self.selection.upto)
        if self.position is not None:
            stmt = stmt.where(tuple_(Completion.created, Completion.seq) > tuple_(*self.position))
        self.rows = list(session.execute(stmt.order_by(Completion.created, Completion.seq).limit(BATCH_SIZE)).all())
        return [row.id for row in self.rows]

    def advance(self, done: int) -> None:
        """Move past the first ``done`` ids of the last :meth:`next_ids`."""
        if self.ids is not None:
            self.start += done
        elif done:
            last = self.rows[done - 1]
            self.position = (last.created, last.seq)


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
    """Apply one bulk change to ``selection`` in short transactions; return its record.

    ``transaction`` opens one write transaction (``extensions.write_transaction``): this
    function calls it once to record the batch, once per ``BATCH_SIZE`` completions (fewer
    when ``MAX_BATCH_SECONDS`` runs out first), and once to mark it finished. ``key`` and ``value`` must be clean already. ``set`` sets
    ``key`` to ``value``, ``remove`` removes ``key``, ``delete`` deletes the completions
    (not undoable). A completion whose metadata would break a rule (more than 16 pairs),
    or that is gone, is left alone and named in the record with the reason.
    """
    with transaction() as tx:
        batch_id = start_bulk_change(tx, actor=actor, action=action, key=key, value=value, scope=scope, requested=requested).id
    walk = _Walk(selection)
    while True:
        with transaction() as tx:
            ids = walk.next_ids(tx)
            if not ids:
                break
            deadline = time.monotonic() + MAX_BATCH_SECONDS
            if action == "delete":
                outcome = _delete_some(tx, ids, deadline=deadline)
            else:
                assert key is not None
                outcome = _set_key_some(tx, ids, key=key, value=value if action == "set" else None, actor=actor, batch_id=batch_id, deadline=deadline)
            walk.advance(outcome.done)
            _tally(tx, batch_id, changed=outcome.changed, unchanged=outcome.unchanged, refused=outcome.refused)
            pause = _pause_after_commit(tx)
        time.sleep(pause)
    return _finish(transaction, batch_id)


def _pause_after_commit(session: Session) -> float:
    """Return how long to leave the database to other writers after committing one batch."""
    return SQLITE_PAUSE_SECONDS if session.get_bind().dialect.name == "sqlite" else 0.0


@dataclass
class _Outcome:
    """What one short transaction did: how many ids it went through, changed, found as asked, refused."""

    done: int = 0
    changed: int = 0
    unchanged: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


def _delete_some(session: Session, ids: list[str], *, deadline: float) -> _Outcome:
    """Delete completions from ``ids`` until they are done or ``deadline`` passes (at least one)."""
    outcome = _Outcome()
    for completion_id in ids:
        if outcome.done and time.monotonic() > deadline:
            break
        outcome.done += 1
        try:
            delete_completion(session, completion_id=completion_id)
        except CompletionNotFound:
            outcome.refused.append((completion_id, NOT_FOUND))
        else:
            outcome.changed += 1
    return outcome


# Rows read and written together inside one short transaction, between looks at the clock.
SLICE = 50


def _set_key_some(
    session: Session, ids: list[str], *, key: str, value: str | None, actor: str, batch_id: int, deadline: float
) -> _Outcome:
    """Set (or, ``value`` None, remove) ``key`` on completions from ``ids``, a slice at a time, until done or past ``deadline``.

    Set-based, so a batch costs a handful of statements, not a handful per row: the slice's
    rows are read and locked (``FOR UPDATE`` on PostgreSQL; SQLite's write transaction holds
    the database), then written with one UPDATE, one DELETE and one INSERT of metadata index
    rows, and one INSERT of history rows. A concurrent writer waits for the lock and then
    finds a new version: its ``If-Match`` fails (412), or it re-reads and applies its change
    on top, so no update is lost either way.
    """
    outcome = _Outcome()
    now = utcnow()
    completions = Completion.__table__
    versioned = (
        update(completions)
        .where(completions.c.seq == bindparam("b_seq"), completions.c.version == bindparam("b_version"))
        .values(metadata=bindparam("b_metadata"), version=completions.c.version + 1, updated_at=now)
    )
    for start in range(0, len(ids), SLICE):
        if outcome.done and time.monotonic() > deadline:
            break
        part = ids[start : start + SLICE]
        outcome.done += len(part)
        stmt = select(Completion.id, Completion.seq, Completion.version, Completion.metadata_map).where(
            Completion.id.in_(part), Completion.deleted.is_(False)
        )
        rows = {row.id: row for row in session.execute(stmt.with_for_update())}
        writes: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        for completion_id in part:
            row = rows.get(completion_id)
            if row is None:
                outcome.refused.append((completion_id, NOT_FOUND))
                continue
            before = dict(row.metadata_map or {})
            after = dict(before)
            if value is None:
                after.pop(key, None)
            else:
                after[key] = value
            if after == before:
                outcome.unchanged += 1
                continue
            try:
                after = clean_metadata(after)
            except ValidationError as exc:
                outcome.refused.append((completion_id, exc.message))
                continue
            writes.append({"b_seq": row.seq, "b_version": row.version, "b_metadata": after})
            history.append({"completion_id": completion_id, "actor": actor, "before": before, "after": after, "batch_id": batch_id, "changed_at": now})
        if not writes:
            continue
        connection = session.connection()
        result = connection.execute(versioned, writes)
        if result.rowcount != len(writes):
            # The rows are locked: nobody can have written them since they were read.
            raise RuntimeError(f"bulk change: {len(writes) - result.rowcount} locked rows changed under the lock")
        seqs = [write["b_seq"] for write in writes]
        connection.execute(delete(CompletionMetadata).where(CompletionMetadata.completion_seq.in_(seqs), CompletionMetadata.key == key))
        if value is not None:
            connection.execute(insert(CompletionMetadata), [{"completion_seq": seq, "key": key, "value": value} for seq in seqs])
        connection.execute(insert(MetadataChange), history)
        outcome.changed += len(writes)
    return outcome


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
            deadline = time.monotonic() + MAX_BATCH_SECONDS
            changed = 0
            refused: list[tuple[str, str]] = []
            for change in changes:
                if change is not changes[0] and time.monotonic() > deadline:
                    break
                after_id = change.id
                reason = _undo_one(tx, change=change, actor=actor, undo_id=undo_id)
                if reason is None:
                    changed += 1
                else:
                    refused.append((change.completion_id, reason))
            _tally(tx, undo_id, changed=changed, unchanged=0, refused=refused)
            pause = _pause_after_commit(tx)
        time.sleep(pause)
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
