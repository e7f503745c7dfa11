"""Completions: look up, list, page, save, update metadata, delete, history.

Nothing here reads the request, ``g`` or the Flask session, and nothing here commits:
the caller decides the transaction (see ``extensions.write_transaction``, and
``extensions.write_connection`` for the Core statements of a create).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import BigInteger, and_, bindparam, delete, exists, func, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased

from ..models import Completion, CompletionMetadata, CompletionRollup, MetadataChange, MetadataPairCount, utcnow
from ..validation import MAX_ID_LENGTH, Filter, Order, PageQuery, ValidationError, completion_id_fault
from . import search
from .base import DAY, DEFER_SQL, HOUR, MARK_PENDING_SQL, UNDEFER_SQL, Page, ceil_to, floor_to, storable
from .driver import Writer
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


# Below this many candidates, an index's matches are read out and sorted; above it, walking the
# (created, seq) index and checking each row finds a page sooner.
SELECTIVE_ROWS = 2000
# How far a list page counts its matches exactly ("10,000+" beyond).
COUNT_CAP = 10_000
# The most rollup rows a count within dates reads for the seq bounds of each side of its dates
# (_dated_seqs): a few milliseconds at most, however long and wide the store's history.
BOUNDS_BUCKETS = 2000
# PostgreSQL's memory for a search count's bitmaps (see count_completions).
COUNT_WORK_MEM = "16MB"
# How many times the cap a count must be expected to match to walk the short search texts
# (_stops_along_short_texts): room for the planner's guess that terms occur independently
# ("order 发票" beside team=team-2: 11,600 expected, 1,700 there, and every short text walked).
SHORT_TEXT_MARGIN = 4


def _probe(session: Session, seqs: Any) -> list[int] | None:
    """Return the seqs a candidate SELECT yields if there are fewer than SELECTIVE_ROWS, else None."""
    found = list(session.scalars(seqs.limit(SELECTIVE_ROWS)))
    return found if len(found) < SELECTIVE_ROWS else None


def _metadata_rows(key: str, value: str) -> Any:
    return select(CompletionMetadata.completion_seq).where(CompletionMetadata.key == key, CompletionMetadata.value == value)


def _metadata_check(key: str, value: str) -> Any:
    """The condition that a completion holds ``metadata[key]=value``: a primary-key lookup per row.

    ``completion_metadata`` holds the pairs of live completions only (a delete or purge
    removes them with the content), so it needs no read of the completion's own row.
    """
    return exists().where(
        CompletionMetadata.completion_seq == Completion.seq, CompletionMetadata.key == key, CompletionMetadata.value == value
    )


def _pairs_never_meet(session: Session, metadata: Mapping[str, str]) -> bool:
    """Return whether two of the filter's pairs are held together by no live completion.

    ``metadata_pair_counts`` (kept by triggers) knows: one primary-key lookup per two
    pairs. Without it, two common pairs that never meet would walk every row holding one.
    """
    pairs = sorted(metadata.items())
    meetings = [(a, b) for i, a in enumerate(pairs) for b in pairs[i + 1 :]]
    if not meetings:
        return False
    wanted = or_(
        *(
            and_(
                MetadataPairCount.key_a == ka, MetadataPairCount.value_a == va, MetadataPairCount.key_b == kb, MetadataPairCount.value_b == vb
            )
            for (ka, va), (kb, vb) in meetings
        )
    )
    met = session.scalar(select(func.count()).where(wanted, MetadataPairCount.count > 0)) or 0
    return met < len(meetings)


def _seq_in(session: Session, seqs: list[int]) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter: the planner sees the real row count and reads them by primary key.
        return Completion.seq == func.any(bindparam("driver_seqs", seqs, type_=ARRAY(BigInteger)))
    return Completion.seq.in_(seqs)


@dataclass(frozen=True)
class _Driver:
    """A small candidate set from one index, and the metadata pair it came from (its check is then redundant)."""

    seqs: list[int]
    pair: tuple[str, str] | None = None


def _driver(session: Session, filter: Filter) -> _Driver | None:
    """Return the smallest candidate set an index gives for ``filter`` if one is small, else None.

    Two metadata pairs that never meet (``metadata_pair_counts``) give the empty set at
    once. On SQLite, whose planner cannot tell a rare filter from a common one, every index
    that can narrow the filter (the search terms' trigram and gram indexes, each metadata
    pair) is probed for at most SELECTIVE_ROWS candidates. PostgreSQL's planner knows (its
    statistics cover the metadata index and the GIN indexes), so it is given the indexable
    conditions and chooses itself.
    """
    if _pairs_never_meet(session, filter.metadata):
        return _Driver([])
    if session.get_bind().dialect.name != "sqlite":
        return None
    sources: list[tuple[Any, tuple[str, str] | None]] = [
        (source, None) for source in (search.candidate_sources(session, filter.search) if filter.search else [])
    ]
    sources += [(_metadata_rows(key, value), (key, value)) for key, value in filter.metadata.items()]
    driver: _Driver | None = None
    for source, pair in sources:
        seqs = _probe(session, source)
        if seqs is not None and (driver is None or len(seqs) < len(driver.seqs)):
            driver = _Driver(seqs, pair)
            if not seqs:
                break
    return driver


def _conditions(session: Session, filter: Filter, *, driver: _Driver | None, indexed: bool = True) -> list[Any]:
    """Return the row conditions of ``filter``: the driving set (if any), then every check, decided exactly.

    Without a driving set they include the conditions PostgreSQL's GIN index serves, unless
    ``indexed`` is False (a count along the short search texts, which decides each row by the
    exact test alone: the index's LIKE would be evaluated on every row too).
    """
    conditions: list[Any] = [Completion.deleted.is_(False)]
    if driver is not None:
        conditions.append(_seq_in(session, driver.seqs))
    # PostgreSQL's filter words beside a search (none on SQLite: it was probed), in the GIN index with
    # the terms, intersected in one scan, and beside the short texts (migration 0012). They decide the
    # model and the pairs exactly: their own checks would repeat them. Before the substring tests,
    # so that a walk along the short texts tests a text only where the pairs are held.
    words = search.filter_words(session, model=filter.model, metadata=filter.metadata) if driver is None and filter.search else []
    conditions += words
    if filter.model is not None and not words:
        conditions.append(Completion.model == filter.model)
    if filter.created_after is not None:
        conditions.append(Completion.created >= filter.created_after)
    if filter.created_before is not None:
        conditions.append(Completion.created < filter.created_before)
    if not words:
        # The driving pair's own check would only repeat it (and lead PostgreSQL to a worse plan).
        conditions += [_metadata_check(key, value) for key, value in filter.metadata.items() if driver is None or (key, value) != driver.pair]
    conditions += [search.exact_match(session, term) for term in filter.search]
    if driver is None and indexed:
        # PostgreSQL's GIN index, for its planner to use or not (none on SQLite).
        conditions += search.index_conditions(session, filter.search)
    return conditions


def _filtered(session: Session, stmt: Any, *, filter: Filter) -> Any:
    """Add ``filter`` to ``stmt``, shaped so that the database reads as few rows as it can.

    A small candidate set from an index (:func:`_driver`) drives the query and the rest is
    checked row by row; when every set is large, walking the order's index and checking
    rows finds a page at once. Every match is decided exactly.
    """
    return stmt.where(*_conditions(session, filter, driver=_driver(session, filter)))


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
    # The page's keys first, then its rows: sorting a driving set of candidates then moves
    # keys, not whole completions (SQLite's sorter copies every column of every candidate).
    keys = _keyset(_filtered(session, select(Completion.seq), filter=filter), after=page.after, order=page.order)
    stmt = _keyset(select(Completion).where(Completion.seq.in_(keys.limit(page.limit + 1))), after=None, order=page.order)
    rows = list(session.scalars(stmt))
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


def _count_pairs(session: Session, metadata: Mapping[str, str], *, cap: int | None) -> int | None:
    """Return how many live completions hold the one or two ``metadata`` pairs, from the metadata
    tables alone (None for more pairs): they hold the pairs of live completions only.

    One pair is counted along its (key, value) index, up to ``cap + 1`` entries; two pairs
    are one lookup in ``metadata_pair_counts``, which keeps exactly that number. Neither
    reads a completion (a common pair's count read 10,001 of them).
    """
    if len(metadata) == 1:
        ((key, value),) = metadata.items()
        matches = _metadata_rows(key, value)
        if cap is not None:
            matches = matches.limit(cap + 1)
        return session.scalar(select(func.count()).select_from(matches.subquery())) or 0
    if len(metadata) == 2:
        (key_a, value_a), (key_b, value_b) = sorted(metadata.items())
        count = session.scalar(
            select(MetadataPairCount.count).where(
                MetadataPairCount.key_a == key_a,
                MetadataPairCount.value_a == value_a,
                MetadataPairCount.key_b == key_b,
                MetadataPairCount.value_b == value_b,
            )
        ) or 0
        return count if cap is None else min(count, cap + 1)
    return None


def count_completions(session: Session, *, filter: Filter, cap: int | None = None) -> int:
    """Return how many live completions match ``filter``; with ``cap``, counting stops past it.

    With a cap the answer is exact up to ``cap`` and ``cap + 1`` means "more than ``cap``",
    so a list page can say "10,000+" without reading every match. A count has no order to
    keep: a filter of one or two metadata pairs only is counted from the metadata tables
    (:func:`_count_pairs`); on SQLite a common search is counted from the search indexes,
    which decide it exactly (``search.indexed_matches``), and only those matches are
    looked up for the other filters; on PostgreSQL a common search beside metadata pairs is
    counted along the index of short search texts (:func:`_count_short_texts_first`).
    """
    if filter.metadata and not replace(filter, metadata={}).narrowed:
        counted = _count_pairs(session, filter.metadata, cap=cap)
        if counted is not None:
            return counted
    if filter.search and session.get_bind().dialect.name == "postgresql":
        # Room for an exact bitmap of a common term's GIN matches: the default 4 MB makes it lossy
        # at a million rows, and every row of those pages is re-checked ("order 发票" before the
        # one index of migration 0010: 570 -> 85 ms). For this transaction only.
        session.execute(text(f"SET LOCAL work_mem = '{COUNT_WORK_MEM}'"))
    driver = _driver(session, filter)
    verified = search.indexed_matches(session, filter.search) if driver is None and filter.search else None
    if verified is None:
        if cap is not None and _stops_along_short_texts(session, filter, driver=driver, cap=cap):
            return _count_short_texts_first(session, filter, cap=cap)
        matches = select(Completion.seq).where(*_conditions(session, filter, driver=driver))
    else:
        # The search indexes hold live completions only, as completion_metadata does: a pair is
        # joined on the seq alone, and only a model or a date needs the completion's own row.
        seq = verified.selected_columns[0]
        rest = replace(filter, search=(), metadata={})
        seqs = _dated_seqs(session, filter)
        if seqs is not None:
            # FTS5 seeks to the range: no match outside the dates' seqs is read (nor its row).
            verified = verified.where(seq >= seqs.first, seq <= seqs.last)
            if seqs.only_dated:
                rest = replace(rest, created_after=None, created_before=None)
        verified = _join_pairs(verified, seq, filter.metadata)
        if rest.narrowed:
            verified = verified.where(exists(select(Completion.seq).where(Completion.seq == seq, *_conditions(session, rest, driver=None))))
        matches = verified
    if cap is not None:
        matches = matches.limit(cap + 1)
    return session.scalar(select(func.count()).select_from(matches.subquery())) or 0


@dataclass(frozen=True)
class _DatedSeqs:
    """Bounds of the seqs of the live completions created within a filter's dates (from the rollup),
    and whether every live completion within them was created within the dates (``only_dated``:
    then the dates need no check of each row)."""

    first: int
    last: int
    only_dated: bool


def _buckets(after: int | None, before: int | None) -> Any:
    """Return the rollup rows (of both spans) that together count the completions created in
    [``after``, ``before``), each a whole hour (or None: unbounded), every completion once:
    whole days by day, the hours at either end by hour."""
    first_day = None if after is None else ceil_to(after, DAY)
    last_day = None if before is None else floor_to(before, DAY)
    if first_day is not None and last_day is not None and first_day > last_day:  # within one day
        parts = [(HOUR, after, before)]
    else:
        parts = [(DAY, first_day, last_day), (HOUR, after, first_day), (HOUR, last_day, before)]
    rollup = CompletionRollup
    return or_(
        *(
            and_(rollup.span == span, *([rollup.start >= low] if low is not None else []), *([rollup.start < high] if high is not None else []))
            for span, low, high in parts
            if span == DAY or (low is not None and high is not None)
        )
    )


def _bucket_bounds(session: Session, condition: Any) -> tuple[int, int | None, int | None] | None:
    """Return how many rollup rows meet ``condition``, the least ``first_seq`` and the greatest
    ``last_seq`` among them; None when they are more than BOUNDS_BUCKETS or a bound is unknown."""
    rollup = CompletionRollup
    rows = select(rollup.first_seq, rollup.last_seq).where(condition).limit(BOUNDS_BUCKETS + 1).subquery()
    read, known, first, last = session.execute(
        select(func.count(), func.count(rows.c.first_seq), func.min(rows.c.first_seq), func.max(rows.c.last_seq))
    ).one()
    return (read, first, last) if read <= BOUNDS_BUCKETS and known == read else None


def _dated_seqs(session: Session, filter: Filter) -> _DatedSeqs | None:
    """Return where a SQLite search within ``filter``'s dates may find its matches, by seq: from the
    rollup's bounds (migration 0014) of the buckets the dates touch; None without dates, on
    PostgreSQL, where a bucket's bounds are unknown, or where the dates span more than
    BOUNDS_BUCKETS buckets (then they hardly narrow the seqs).

    The bounds hold every live completion of a bucket (the triggers widen them; nothing
    narrows them). When the dates are whole hours and no bucket outside them reaches into
    the bounds, only completions within the dates lie there, and the dates need no other check.
    At most three range reads of the rollup's primary key (whole days read by day), each of at
    most BOUNDS_BUCKETS rows: a store with more buckets than that outside the dates (a long
    history of many models) checks the dates on each match's row instead.
    """
    after, before = filter.created_after, filter.created_before
    if (after is None and before is None) or session.get_bind().dialect.name != "sqlite":
        return None
    low = None if after is None else floor_to(after, HOUR)
    high = None if before is None else ceil_to(before, HOUR)
    inside = _bucket_bounds(session, _buckets(low, high))
    if inside is None:
        return None
    read, first, last = inside
    if read == 0 or first is None or last is None:  # no live completion was created within the dates
        return _DatedSeqs(first=1, last=0, only_dated=True)
    only_dated = low == after and high == before
    if only_dated and after is not None:
        earlier = _bucket_bounds(session, _buckets(None, after))
        only_dated = earlier is not None and (earlier[2] is None or earlier[2] < first)
    if only_dated and before is not None:
        later = _bucket_bounds(session, _buckets(before, None))
        only_dated = later is not None and (later[1] is None or later[1] > last)
    return _DatedSeqs(first=first, last=last, only_dated=only_dated)


def _join_pairs(matches: Any, seq: Any, metadata: Mapping[str, str]) -> Any:
    """Return the SELECT ``matches`` (SQLite's search matches) joined with the ``completion_metadata``
    row of each pair on ``seq``, the matches driving (``search.join_driven``).

    A join, not a correlated EXISTS per pair: SQLite seeks the metadata index in the loop
    itself, where each EXISTS runs as a subroutine ("退款" beside team=team-2, a capped count at
    a million rows: 51 ms with EXISTS, 23 ms joined). A completion holds one value per key, so
    a join never repeats a row.
    """
    for key, value in metadata.items():
        pair = aliased(CompletionMetadata)
        matches = search.join_driven(matches, pair, and_(pair.completion_seq == seq, pair.key == key, pair.value == value))
    return matches


def _expected_rows(session: Session, conditions: list[Any]) -> float:
    """Return how many completions PostgreSQL's planner expects ``conditions`` to select: from its
    statistics, no row read (one planning)."""
    compiled = select(Completion.seq).where(*conditions).compile(dialect=session.get_bind().dialect)
    plan = session.connection().exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return float(plan[0]["Plan"]["Plan Rows"])


def _stops_along_short_texts(session: Session, filter: Filter, *, driver: _Driver | None, cap: int) -> bool:
    """Return whether a capped count of ``filter`` goes along the short search texts (PostgreSQL):
    search terms beside a model, metadata pairs or dates, which the planner expects to match
    several times more completions than ``cap``, so that walking the short texts in (created,
    seq) order, within the dates, stops early.

    The GIN index finds a rare term's few candidates at once, but for a common one it must
    collect every candidate before the first is read ("order" beside team=team-2 at a million
    rows: about 101,000 of them, though 10,001 would do). The expectation uses the conditions
    the planner has statistics for: the index's (pg_trgm's LIKE, the gram words), the model and
    the metadata pairs (migration 0011's statistics), but not the dates: they narrow the walk
    (a range of its index) and not the GIN scan, which collects the candidates of all time
    ("order" beside team=team-2 within one UTC day at a million rows: the GIN scan 113 ms,
    the walk 45 ms).
    """
    if session.get_bind().dialect.name != "postgresql" or driver is not None or not filter.search:
        return False
    if not replace(filter, search=()).narrowed:
        return False
    # The rest of the filter as every list writes it (without terms: no filter words, the pairs
    # checked), and without dates.
    rest = replace(filter, search=(), created_after=None, created_before=None)
    known = [*search.index_conditions(session, filter.search), *_conditions(session, rest, driver=None)]
    return _expected_rows(session, known) > SHORT_TEXT_MARGIN * cap


def _count_short_texts_first(session: Session, filter: Filter, *, cap: int) -> int:
    """Return how many live completions match ``filter`` (PostgreSQL), up to ``cap + 1``: first
    those whose search text and filter words an index keeps by (created, seq) (migration 0012),
    then, while below the cap, the others.

    The short ones are decided by their filter words and the exact test alone, read from that
    narrow index (an index-only scan in its order, within the dates): no wide completion row is
    read, and a text is tested only where the model and the pairs are held. The long ones are
    counted as any search is. Two statements, not one UNION ALL: each is planned for its own
    LIMIT (under one LIMIT the planner hashed every match instead).
    """
    # One process: a parallel plan hashes every match of one side before it counts the first.
    session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    short = select(Completion.seq).where(*_conditions(session, filter, driver=None, indexed=False), search.short_text(short=True))
    # In the index's order: the walk along it that stops at the cap (the planner would rather read
    # the whole table for a tenth of it, 65 ms against 36 for "order" beside team=team-2).
    short = short.order_by(Completion.created, Completion.seq).limit(cap + 1)
    counted = session.scalar(select(func.count()).select_from(short.subquery())) or 0
    if counted <= cap:
        long = select(Completion.seq).where(*_conditions(session, filter, driver=None), search.short_text(short=False))
        counted += session.scalar(select(func.count()).select_from(long.limit(cap + 1 - counted).subquery())) or 0
    return counted


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
    The values include ``search_text`` and ``search_grams`` (see ``store.search``), so a
    batch insert of these values is searchable at once.
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
        # The searchable text, from which the database keeps the search indexes.
        **search.search_columns(body=stored, messages=messages),
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


# --- Creating: a new completion never takes an id that is already stored -----------------------

# The random part of a minted id: 64 bits, so two mints never meet in practice (and if they
# did, the unique id would refuse the second, which then mints again).
MINTED_SUFFIX_BYTES = 8
# Tries at a free id before giving up (each a fresh random one): reaching it means a bug.
MINT_ATTEMPTS = 5


class IdsExhausted(Exception):
    """No free id was found for a new completion (never expected: minted ids are random)."""


def mint_completion_id(upstream_id: Any) -> str:
    """Return a fresh id for a completion whose upstream id is taken or unfit: the upstream's id
    with a random suffix when it fits the id rule (so the provider's logs still find it), else
    ``chatcmpl-`` and a random part."""
    suffix = secrets.token_hex(MINTED_SUFFIX_BYTES)
    if (
        isinstance(upstream_id, str)
        and completion_id_fault(upstream_id) is None
        and len(upstream_id) + 1 + len(suffix) <= MAX_ID_LENGTH
    ):
        return f"{upstream_id}-{suffix}"
    return f"chatcmpl-{suffix}{secrets.token_hex(4)}"


_completions = Completion.__table__
_metadata_table = CompletionMetadata.__table__
_changes = MetadataChange.__table__
_INSERT_IF_FREE: dict[str, Any] = {}
# Built once, so each create skips building them and computing their cache keys.
_INSERT_METADATA_ROWS = insert(_metadata_table)
_INSERT_CHANGE = insert(_changes)
_FILL_RESERVATION = (
    update(_completions)
    .where(_completions.c.seq == bindparam("reserved_seq"), _completions.c.version == 0)
)
_RELEASE_RESERVATION = delete(_completions).where(
    _completions.c.seq == bindparam("reserved_seq"), _completions.c.version == 0
)
# Model attribute -> table column, where they differ (``metadata_map`` is the ``metadata`` column).
_COLUMN_OF = {
    attr.key: attr.columns[0].key for attr in Completion.__mapper__.column_attrs if attr.key != attr.columns[0].key
}


def _row(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return :func:`completion_values` (keyed by model attribute) keyed by table column, for Core statements."""
    return {_COLUMN_OF.get(name, name): value for name, value in values.items()}


def _insert_if_free(dialect: str) -> Any:
    """Return ``INSERT INTO completions ... ON CONFLICT (id) DO NOTHING`` for ``dialect`` (built once:
    the compiled statement is cached), on PostgreSQL ``RETURNING seq``. SQLite's driver gives the
    new row's seq as ``lastrowid`` (a trigger's inserts do not change it), without the buffering
    of RETURNING rows that SQLite does."""
    statement = _INSERT_IF_FREE.get(dialect)
    if statement is None:
        if dialect == "sqlite":
            statement = sqlite.insert(_completions).on_conflict_do_nothing(index_elements=["id"])
        else:
            statement = postgresql.insert(_completions).on_conflict_do_nothing(index_elements=["id"]).returning(_completions.c.seq)
        _INSERT_IF_FREE[dialect] = statement
    return statement


def _claim_id(writer: Writer, values: dict[str, Any]) -> int:
    """Insert the row ``values`` under its id if that id is free and fits the rule, else under a
    minted one (``values`` is updated to the id used); return its ``seq``.

    The unique index decides, not a look beforehand, so concurrent creates with one upstream
    id cannot both take it: PostgreSQL makes the second wait for the first and then skip;
    SQLite runs write transactions one at a time.
    """
    dialect = writer.dialect.name
    statement = _insert_if_free(dialect)
    if completion_id_fault(values["id"]) is not None:
        _rename(values, mint_completion_id(values["id"]))
    upstream_id = values["id"]
    for _attempt in range(MINT_ATTEMPTS):
        cursor = writer.execute(statement, _row(values))
        if dialect == "sqlite":
            if cursor.rowcount == 1:
                return cursor.lastrowid
        elif (row := cursor.fetchone()) is not None:
            return row[0]
        _rename(values, mint_completion_id(upstream_id))
    raise IdsExhausted(f"no free id found for a completion after {MINT_ATTEMPTS} tries")


def _rename(values: dict[str, Any], completion_id: str) -> None:
    values["id"] = completion_id
    if values.get("body") is not None:
        values["body"] = {**values["body"], "id": completion_id}


def _add_metadata(writer: Writer, *, seq: int, completion_id: str, metadata: Mapping[str, str], actor: str) -> None:
    """Insert the filter rows of a new completion's metadata and its history record (one statement each)."""
    if not metadata:
        return
    writer.executemany(
        _INSERT_METADATA_ROWS, [{"completion_seq": seq, "key": key, "value": value} for key, value in metadata.items()]
    )
    _add_history(writer, completion_id=completion_id, metadata=metadata, actor=actor)


def _add_history(writer: Writer, *, completion_id: str, metadata: Mapping[str, str], actor: str) -> None:
    """Insert the history record of a new completion's metadata, if it has any."""
    if metadata:
        writer.execute(
            _INSERT_CHANGE,
            {"completion_id": completion_id, "actor": actor, "before": {}, "after": dict(metadata), "changed_at": utcnow()},
        )


def create_completion(
    writer: Writer, *, body: Mapping[str, Any], messages: list[Any], metadata: Mapping[str, str], actor: str
) -> str:
    """Store a new completion made through the upstream; return the id it is stored under.

    That is ``body["id"]`` when it is free and fits the id rule, else a freshly minted id
    (:func:`mint_completion_id`): a create never overwrites or revives a stored completion,
    also under concurrent creates. Core statements run by ``writer`` on the driver's cursor
    (see ``extensions.write_connection``), one round trip per table, no ORM objects: this runs
    on every ``store: true`` create. Raises IdsExhausted (never expected).

    On SQLite the completion is marked pending (migration 0015): its INSERT triggers stand aside,
    and its search index entries, rollup counts and metadata filter rows (with their pair counts)
    are written later, by ``store.derived.settle``; its history record is written here, with it.
    """
    values = completion_values(body=body, messages=messages, metadata=metadata)
    values.update(version=1, updated_at=utcnow())
    if writer.dialect.name != "sqlite":
        seq = _claim_id(writer, values)
        _add_metadata(writer, seq=seq, completion_id=values["id"], metadata=metadata, actor=actor)
        return values["id"]
    writer.execute_sql(DEFER_SQL)
    seq = _claim_id(writer, values)
    writer.execute_sql(MARK_PENDING_SQL, (seq,))
    writer.execute_sql(UNDEFER_SQL)
    _add_history(writer, completion_id=values["id"], metadata=metadata, actor=actor)
    return values["id"]


@dataclass(frozen=True)
class Reservation:
    """An id held for a completion still streaming in: a content-free tombstone row (version 0)
    that lists nowhere, which :func:`fill_reservation` turns into the completion."""

    seq: int
    completion_id: str


def reserve_completion_id(writer: Writer, *, upstream_id: Any, created: Any, model: Any) -> Reservation:
    """Hold an id for a streamed completion before its first chunk reaches the client (which sees
    the id in every chunk): ``upstream_id`` when free and fit, else a minted one. Raises IdsExhausted.

    The row is a tombstone without content (``deleted``, version 0): lists, retrieve and
    exports skip it. :func:`fill_reservation` completes it; :func:`release_reservation`
    removes it when the stream ends short.
    """
    named = {
        "id": upstream_id if isinstance(upstream_id, str) else mint_completion_id(None),
        "created": created if isinstance(created, int) and not isinstance(created, bool) else int(time.time()),
        "model": model if isinstance(model, str) else "",
    }
    # A tombstone as delete makes one (whatever columns the row mapper grows), version 0.
    values = completion_values(body=named, messages=[], metadata={})
    values.update(tombstone_values(), version=0, updated_at=utcnow())
    seq = _claim_id(writer, values)
    return Reservation(seq=seq, completion_id=values["id"])


def fill_reservation(
    writer: Writer,
    *,
    reservation: Reservation,
    body: Mapping[str, Any],
    messages: list[Any],
    metadata: Mapping[str, str],
    actor: str,
) -> str:
    """Store the completion of a finished stream under its reserved id; return that id.

    If the reservation is gone (an import of that very id landed meanwhile), the completion
    is stored under a fresh id instead, as :func:`create_completion` would, and that id is
    returned: nothing is overwritten either way.
    """
    values = completion_values(body={**body, "id": reservation.completion_id}, messages=messages, metadata=metadata)
    values.update(version=1, updated_at=utcnow())
    filled = writer.execute(_FILL_RESERVATION, {**_row(values), "reserved_seq": reservation.seq})
    seq = reservation.seq
    if filled.rowcount != 1:
        seq = _claim_id(writer, values)
    _add_metadata(writer, seq=seq, completion_id=values["id"], metadata=metadata, actor=actor)
    return values["id"]


def release_reservation(writer: Writer, *, reservation: Reservation) -> None:
    """Remove the held id of a stream that ended short (nothing of it is stored)."""
    writer.execute(_RELEASE_RESERVATION, {"reserved_seq": reservation.seq})


def metadata_history(session: Session, *, completion_id: str) -> list[MetadataChange]:
    """Return every recorded metadata change of ``completion_id``, newest first."""
    return list(
        session.scalars(
            select(MetadataChange)
            .where(MetadataChange.completion_id == completion_id)
            .order_by(MetadataChange.id.desc())
        )
    )
