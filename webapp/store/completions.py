"""Completions: look up, list, page, save, update metadata, delete, history.

Nothing here reads the request, ``g`` or the Flask session, and nothing here commits:
the caller decides the transaction (see ``extensions.write_transaction``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from ..models import Completion, CompletionMetadata, MetadataChange, utcnow
from ..validation import Filter, Order, PageQuery, ValidationError
from .base import Page, storable
from .shapes import etag, message_objects


class CompletionNotFound(Exception):
    """No live completion has this id (never stored, or deleted)."""

    def __init__(self, completion_id: str) -> None:
        super().__init__(f"No chat completion found with id '{completion_id}'.")
        self.completion_id = completion_id


class PreconditionFailed(Exception):
    """The completion changed since the version the caller named (``If-Match``)."""

    def __init__(self, current: Completion) -> None:
        super().__init__(
            "The chat completion was changed since you read it (its ETag no longer matches If-Match). "
            "Retrieve it again and retry with the new ETag."
        )
        self.current = current


def get_completion(session: Session, *, completion_id: str) -> Completion:
    """Return the live completion ``completion_id``; raise CompletionNotFound otherwise."""
    if not storable(completion_id):
        raise CompletionNotFound(completion_id)
    row = session.scalar(select(Completion).where(Completion.id == completion_id, Completion.deleted.is_(False)))
    if row is None:
        raise CompletionNotFound(completion_id)
    return row


# Below this many matches SQLite reads a metadata filter's matches from its index and sorts them;
# above it, walking the (created, seq) index and checking each row finds a page sooner.
SELECTIVE_FILTER_ROWS = 2000


def _metadata_condition(session: Session, key: str, value: str) -> Any:
    """Return the WHERE condition for one ``metadata[key]=value`` filter, shaped for the planner at hand.

    PostgreSQL knows how common each value is and plans the EXISTS either way. SQLite's
    planner does not, so a bounded count on the covering (key, value, seq) index decides.
    """
    matches = select(CompletionMetadata.completion_seq).where(
        CompletionMetadata.key == key, CompletionMetadata.value == value
    )
    if session.get_bind().dialect.name == "sqlite":
        probe = select(func.count()).select_from(matches.limit(SELECTIVE_FILTER_ROWS).subquery())
        if (session.scalar(probe) or 0) < SELECTIVE_FILTER_ROWS:
            return Completion.seq.in_(matches)
    return exists(matches.where(CompletionMetadata.completion_seq == Completion.seq))


def _filtered(session: Session, stmt: Any, *, filter: Filter) -> Any:
    stmt = stmt.where(Completion.deleted.is_(False))
    if filter.model is not None:
        stmt = stmt.where(Completion.model == filter.model)
    for key, value in filter.metadata.items():
        stmt = stmt.where(_metadata_condition(session, key, value))
    return stmt


def _keyset(stmt: Any, *, after: str | None, order: Order) -> Any:
    """Order by (created, seq) and start after the row ``after`` names, tombstones included."""
    position = tuple_(Completion.created, Completion.seq)
    if after is not None:
        cursor = aliased(Completion)
        start = tuple_(
            select(cursor.created).where(cursor.id == after).scalar_subquery(),
            select(cursor.seq).where(cursor.id == after).scalar_subquery(),
        )
        stmt = stmt.where(position > start if order == "asc" else position < start)
    if order == "asc":
        return stmt.order_by(Completion.created.asc(), Completion.seq.asc())
    return stmt.order_by(Completion.created.desc(), Completion.seq.desc())


def _require_cursor(session: Session, after: str | None) -> None:
    """Raise ValidationError if ``after`` names no completion, live or deleted."""
    if after is not None and session.scalar(select(Completion.seq).where(Completion.id == after)) is None:
        raise ValidationError(f"Invalid 'after': no chat completion found with id '{after}'.", "after", "invalid_value")


def list_completions(session: Session, *, filter: Filter, page: PageQuery) -> Page:
    """Return one page of live completions matching ``filter``, in one query.

    Raises ValidationError (param ``after``) when ``page.after`` names a completion that
    never existed; a deleted one still pages on from where it stood.
    """
    stmt = _keyset(_filtered(session, select(Completion), filter=filter), after=page.after, order=page.order)
    rows = list(session.scalars(stmt.limit(page.limit + 1)))
    if not rows:
        # Only an empty page can hide a cursor that does not exist.
        _require_cursor(session, page.after)
    return Page(rows=rows[: page.limit], has_more=len(rows) > page.limit)


def iter_completions(session: Session, *, filter: Filter, order: Order = "asc", batch_size: int = 500) -> Iterator[Completion]:
    """Yield every live completion matching ``filter``, a keyset page at a time (bounded memory)."""
    after: str | None = None
    while True:
        page = list_completions(session, filter=filter, page=PageQuery(after=after, limit=batch_size, order=order))
        yield from page.rows
        if not page.has_more:
            return
        after = page.rows[-1].id
        session.expunge_all()


def count_completions(session: Session, *, filter: Filter) -> int:
    """Return how many live completions match ``filter`` (for progress bars, not for list pages)."""
    return session.scalar(_filtered(session, select(func.count()).select_from(Completion), filter=filter)) or 0


def list_messages(session: Session, *, completion_id: str, query: PageQuery) -> Page:
    """Return one page of the input messages of ``completion_id`` as message-list items.

    Raises CompletionNotFound, or ValidationError (param ``after``) for an unknown message id.
    """
    items = message_objects(get_completion(session, completion_id=completion_id))
    if query.order == "desc":
        items.reverse()
    start = 0
    if query.after is not None:
        ids = [item["id"] for item in items]
        if query.after not in ids:
            raise ValidationError(
                f"Invalid 'after': no message found with id '{query.after}'.", "after", "invalid_value"
            )
        start = ids.index(query.after) + 1
    chunk = items[start : start + query.limit + 1]
    return Page(rows=chunk[: query.limit], has_more=len(chunk) > query.limit)


def list_models(session: Session) -> list[str]:
    """Return the distinct models of live completions, sorted.

    A plain DISTINCT reads every row (most of a second at a million rows); this hops
    from one model to the next along the (model, created, seq) index instead, one
    lookup per model, on SQLite and PostgreSQL alike.
    """
    step, live = aliased(Completion), aliased(Completion)
    models = select(func.min(Completion.model).label("model")).cte("models", recursive=True)
    models = models.union_all(
        select(select(func.min(step.model)).where(step.model > models.c.model).scalar_subquery())
        .where(models.c.model.is_not(None))
    )
    stmt = (
        select(models.c.model)
        .where(models.c.model.is_not(None), exists().where(live.model == models.c.model, live.deleted.is_(False)))
        .order_by(models.c.model)
    )
    return list(session.scalars(stmt))


def _replace_metadata_rows(session: Session, seq: int, metadata: Mapping[str, str]) -> None:
    session.execute(delete(CompletionMetadata).where(CompletionMetadata.completion_seq == seq))
    if metadata:
        session.execute(
            insert(CompletionMetadata),
            [{"completion_seq": seq, "key": key, "value": value} for key, value in metadata.items()],
        )


def _record_change(
    session: Session,
    *,
    completion_id: str,
    actor: str,
    before: Mapping[str, str],
    after: Mapping[str, str],
    batch_id: int | None = None,
) -> None:
    session.add(MetadataChange(completion_id=completion_id, actor=actor, before=dict(before), after=dict(after), batch_id=batch_id))


def update_metadata(
    session: Session,
    *,
    completion_id: str,
    metadata: Mapping[str, str],
    actor: str,
    if_match: Collection[str] | None = None,
    batch_id: int | None = None,
) -> Completion:
    """Replace the metadata of ``completion_id`` with ``metadata`` (already cleaned) and record the change.

    ``if_match`` is the ETags the caller will accept (``None``: any); ``batch_id`` names the
    bulk change the write is part of, if any (so it can be undone with it). The write only
    lands on the version that was read, so two concurrent updates never both win.
    Returns the updated row. Raises CompletionNotFound or PreconditionFailed.
    """
    for _attempt in range(20):
        row = get_completion(session, completion_id=completion_id)
        if if_match is not None and etag(row) not in if_match:
            raise PreconditionFailed(row)
        before = dict(row.metadata_map or {})
        result = session.execute(
            update(Completion)
            .where(Completion.seq == row.seq, Completion.version == row.version)
            .values(metadata_map=dict(metadata), version=Completion.version + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            _replace_metadata_rows(session, row.seq, metadata)
            _record_change(session, completion_id=completion_id, actor=actor, before=before, after=metadata, batch_id=batch_id)
            session.flush()
            session.refresh(row)
            return row
        # Someone else wrote in between: read again (PostgreSQL's READ COMMITTED sees it).
        session.expire(row)
    raise PreconditionFailed(get_completion(session, completion_id=completion_id))


def tombstone_values() -> dict[str, Any]:
    """Return the column values that turn a completion into a content-free tombstone.

    The one place that says what a deleted (or purged) completion keeps: what a row cannot
    be without (id, created, model, seq: its place in the order, so that a cursor naming it
    still works). Every nullable column :func:`completion_values` fills (body, messages,
    metadata, and whatever derived text a later column holds) is cleared, so a column added
    there is cleared here without anyone having to remember it.
    """
    sample = completion_values(body={"id": "-", "created": 0, "model": "-"}, messages=[], metadata={})
    columns = Completion.__mapper__.columns
    cleared = {name: None for name in sample if columns[name].nullable}
    return {**cleared, "deleted": True}


def delete_completion(session: Session, *, completion_id: str) -> None:
    """Delete ``completion_id``, keeping a tombstone of its place in the order.

    Raises CompletionNotFound if it is not live.
    """
    row = get_completion(session, completion_id=completion_id)
    result = session.execute(
        update(Completion)
        .where(Completion.seq == row.seq, Completion.deleted.is_(False))
        .values(**tombstone_values(), version=Completion.version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise CompletionNotFound(completion_id)
    session.execute(delete(CompletionMetadata).where(CompletionMetadata.completion_seq == row.seq))
    session.expire(row)


def completion_values(*, body: Mapping[str, Any], messages: list[Any], metadata: Mapping[str, str]) -> dict[str, Any]:
    """Return the ``completions`` column values of a completion (the one place that maps a
    completion onto its row: every write path, single or batched, goes through here).

    ``body`` is the completion object; ``metadata`` and ``messages`` in it are ignored.
    """
    stored = {key: value for key, value in body.items() if key not in ("metadata", "messages")}
    stored["object"] = "chat.completion"
    return {
        "id": stored["id"],
        "created": stored["created"],
        "model": stored["model"],
        "body": stored,
        "messages": messages,
        "metadata_map": dict(metadata),
        "deleted": False,
    }


def save_completion(
    session: Session,
    *,
    body: Mapping[str, Any],
    messages: list[Any],
    metadata: Mapping[str, str],
    actor: str,
) -> tuple[Completion, bool]:
    """Insert or replace the completion ``body["id"]`` (upsert by id); a tombstone comes back to life.

    ``body`` is the completion object without ``metadata``. Returns the row and whether
    anything changed: saving the same completion twice changes nothing the second time.
    """
    values = completion_values(body=body, messages=messages, metadata=metadata)
    completion_id = values["id"]
    row = session.scalar(select(Completion).where(Completion.id == completion_id))
    if row is None:
        row = Completion(**values, version=1)
        session.add(row)
        session.flush()
        _replace_metadata_rows(session, row.seq, metadata)
        if metadata:
            _record_change(session, completion_id=completion_id, actor=actor, before={}, after=metadata)
        return row, True
    before = {} if row.deleted else dict(row.metadata_map or {})
    if not row.deleted and all(getattr(row, name) == value for name, value in values.items()):
        return row, False
    for name, value in values.items():
        setattr(row, name, value)
    row.version = row.version + 1
    row.updated_at = utcnow()
    session.flush()
    _replace_metadata_rows(session, row.seq, metadata)
    if before != dict(metadata):
        _record_change(session, completion_id=completion_id, actor=actor, before=before, after=metadata)
    return row, True


def metadata_history(session: Session, *, completion_id: str) -> list[MetadataChange]:
    """Return every recorded metadata change of ``completion_id``, newest first."""
    return list(
        session.scalars(
            select(MetadataChange)
            .where(MetadataChange.completion_id == completion_id)
            .order_by(MetadataChange.id.desc())
        )
    )
