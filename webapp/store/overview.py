"""What the overview counts: completions and tokens per hour or day and per model, for a filter.

A filter of model and time alone reads ``completion_rollup``, which database triggers keep
in step with every write (migration 0007), so its cost follows the number of days and
models, not of completions. A filter on metadata or text counts the matching rows
themselves (its cost follows the match count). Plain functions over a session; nothing
here commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.orm import Session

from ..models import Completion, CompletionRollup
from ..validation import Filter
from .base import DAY, HOUR, ceil_to, floor_to
from .completions import _filtered

# A range of this much or less is counted per hour; a longer one per day.
HOURLY_UP_TO = 2 * DAY
# Token counts outside 0..MAX_TOKENS (or not whole numbers) count as 0, in the triggers too.
MAX_TOKENS = 999_999_999_999


@dataclass(frozen=True)
class Usage:
    """How many completions, and how many prompt and completion tokens they used."""

    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.completions + other.completions,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageSeries:
    """Usage per bucket (an hour or a day, ``span`` seconds) and model over ``[start, end)``.

    ``cells`` holds only non-empty (bucket start, model) pairs. ``start`` and ``end`` are
    bucket-aligned; both are None when nothing matched and the filter named no range.
    """

    span: int
    start: int | None
    end: int | None
    cells: dict[tuple[int, str], Usage] = field(default_factory=dict)

    @property
    def total(self) -> Usage:
        """The usage of everything the filter matched."""
        return sum(self.cells.values(), Usage())

    def by_model(self) -> dict[str, Usage]:
        """Return each model's usage, the most used first (then by name)."""
        models: dict[str, Usage] = {}
        for (_start, model), usage in self.cells.items():
            models[model] = models.get(model, Usage()) + usage
        return dict(sorted(models.items(), key=lambda item: (-item[1].completions, -item[1].tokens, item[0])))

    def bucket_starts(self) -> list[int]:
        """Return the start of every bucket in the range, empty ones included."""
        if self.start is None or self.end is None:
            return []
        return list(range(self.start, self.end, self.span))


def bucket_start(column: Any, span: int) -> ColumnElement[int]:
    """Return the SQL for the start of the ``span``-second bucket holding ``column``, as the triggers compute it."""
    # Floor also below zero (SQL's % truncates towards zero).
    return column - (((column % span) + span) % span)


def usage_tokens(dialect: str, name: str, *, body: Any = Completion.body) -> ColumnElement[int]:
    """Return the SQL for one usage count of a completion row on ``dialect``, by the triggers' rule.

    ``body``: where the row's body is (PostgreSQL only; default the ``completions`` column).
    """
    if dialect == "postgresql":
        return func.completion_usage_tokens(body, name)
    path = f"'$.usage.{name}'"
    return literal_column(
        f"CASE WHEN json_valid(completions.body) THEN (CASE WHEN json_type(completions.body, {path}) = 'integer' "
        f"AND json_extract(completions.body, {path}) BETWEEN 0 AND {MAX_TOKENS} "
        f"THEN json_extract(completions.body, {path}) ELSE 0 END) ELSE 0 END"
    )


def usage_count(body: Mapping[str, Any], name: str) -> int:
    """Return one usage count of a completion body (parsed), by the triggers' rule that
    :func:`usage_tokens` writes in SQL: a whole number from 0 to ``MAX_TOKENS``, else 0.

    A batch writer that holds the parsed body counts with it instead of making the database
    parse the stored JSON text again.
    """
    usage = body.get("usage")
    value = usage.get(name) if isinstance(usage, dict) else None
    # type() is int: a JSON true is a bool (an int subclass), and counts as 0 in SQL too.
    return value if type(value) is int and 0 <= value <= MAX_TOKENS else 0


def _count_rows(session: Session, *, span: int, where: Iterable[Any], filter: Filter) -> Any:
    """Return the statement counting live completion rows per (bucket, model)."""
    bucket = bucket_start(Completion.created, span).label("bucket")
    stmt = select(
        bucket,
        Completion.model,
        func.count().label("completions"),
        func.sum(usage_tokens(session.get_bind().dialect.name, "prompt_tokens")).label("prompt_tokens"),
        func.sum(usage_tokens(session.get_bind().dialect.name, "completion_tokens")).label("completion_tokens"),
    ).where(*where)
    return _filtered(session, stmt, filter=filter).group_by(bucket, Completion.model)


def _count_rollup(*, source: int, span: int, start: int, end: int, model: str | None) -> Any:
    """Return the statement summing the rollup's ``source``-wide buckets in [start, end) into ``span``-wide ones."""
    bucket = bucket_start(CompletionRollup.start, span).label("bucket")
    stmt = select(
        bucket,
        CompletionRollup.model,
        func.sum(CompletionRollup.completions).label("completions"),
        func.sum(CompletionRollup.prompt_tokens).label("prompt_tokens"),
        func.sum(CompletionRollup.completion_tokens).label("completion_tokens"),
    ).where(CompletionRollup.span == source, CompletionRollup.start >= start, CompletionRollup.start < end)
    if model is not None:
        stmt = stmt.where(CompletionRollup.model == model)
    return stmt.group_by(bucket, CompletionRollup.model)


# The parts of a filter the rollup knows; any other (metadata, or one added later) is counted on the rows.
ROLLUP_PARTS = frozenset({"model", "created_after", "created_before"})


def rollup_serves(filter: Filter) -> bool:
    """Return whether the rollup can count ``filter``: it names nothing but a model and times."""
    default = Filter()
    return all(getattr(filter, part.name) == getattr(default, part.name) for part in fields(filter) if part.name not in ROLLUP_PARTS)


def _extent(session: Session, *, filter: Filter, after: int | None, before: int | None) -> tuple[int, int] | None:
    """Return the first and last ``created`` (the last rounded up to its hour on the rollup) of the matches, or None."""
    model = filter.model
    if not rollup_serves(filter):
        where = [Completion.created >= after] if after is not None else []
        if before is not None:
            where.append(Completion.created < before)
        stmt = _filtered(session, select(func.min(Completion.created), func.max(Completion.created)).where(*where), filter=filter)
        first, last = session.execute(stmt).one()
        return None if first is None else (first, last + 1)
    # Whole hours on the rollup: the hour holding ``after`` may hold matches after it.
    conditions: list[Any] = [CompletionRollup.span == HOUR]
    if model is not None:
        conditions.append(CompletionRollup.model == model)
    if after is not None:
        conditions.append(CompletionRollup.start >= floor_to(after, HOUR))
    if before is not None:
        conditions.append(CompletionRollup.start < before)
    first = session.scalar(select(func.min(CompletionRollup.start)).where(*conditions))
    last = session.scalar(select(func.max(CompletionRollup.start)).where(*conditions))
    return None if first is None else (first, last + HOUR)


def usage_series(
    session: Session, *, filter: Filter, created_after: int | None = None, created_before: int | None = None
) -> UsageSeries:
    """Return the usage of the live completions matching ``filter``, per hour or per day and model.

    ``created_after`` is inclusive, ``created_before`` exclusive (unix seconds), as in the
    list. The range is the filter's, an open end closed by the day (UTC) of the first or
    last match; a range of two days or less is counted per hour, a longer one per day.
    """
    # A filter that carries its own time range (its created_after/created_before) counts within it.
    created_after = created_after if created_after is not None else getattr(filter, "created_after", None)
    created_before = created_before if created_before is not None else getattr(filter, "created_before", None)
    extent = _extent(session, filter=filter, after=created_after, before=created_before)
    # An end the filter leaves open is the first or last match's day, so one day of data reads as 24 hours.
    low = created_after if created_after is not None else (floor_to(extent[0], DAY) if extent else None)
    high = created_before if created_before is not None else (ceil_to(extent[1], DAY) if extent else None)
    if low is None or high is None:
        return UsageSeries(span=DAY, start=None, end=None)  # nothing matched, and no range was named
    high = max(low, high)
    span = HOUR if ceil_to(high, DAY) - floor_to(low, DAY) <= HOURLY_UP_TO else DAY
    series = UsageSeries(span=span, start=floor_to(low, span), end=ceil_to(high, span))
    if extent is None:
        return series
    # Count only where there are matches, on whole buckets where the filter allows it.
    low, high = max(low, floor_to(extent[0], span)), min(high, ceil_to(extent[1], span))
    if rollup_serves(filter):
        statements = _rollup_statements(session, span=span, low=low, high=high, filter=filter)
    else:
        where = [Completion.created >= low, Completion.created < high]
        statements = [_count_rows(session, span=span, where=where, filter=filter)]
    for stmt in statements:
        for bucket, row_model, completions, prompt_tokens, completion_tokens in session.execute(stmt):
            key = (int(bucket), row_model)
            usage = Usage(int(completions), int(prompt_tokens or 0), int(completion_tokens or 0))
            series.cells[key] = series.cells.get(key, Usage()) + usage
    return series


def _rollup_statements(session: Session, *, span: int, low: int, high: int, filter: Filter) -> list[Any]:
    """Return the statements that count [low, high): the rollup's whole buckets, the rows of partial hours at the ends."""
    source = DAY if span == DAY and low % DAY == 0 and high % DAY == 0 else HOUR
    inner_low, inner_high = ceil_to(low, source), floor_to(high, source)
    if inner_low >= inner_high:
        return [_count_rows(session, span=span, where=[Completion.created >= low, Completion.created < high], filter=filter)]
    statements = [_count_rollup(source=source, span=span, start=inner_low, end=inner_high, model=filter.model)]
    for edge_low, edge_high in ((low, inner_low), (inner_high, high)):
        if edge_low < edge_high:
            where = [Completion.created >= edge_low, Completion.created < edge_high]
            statements.append(_count_rows(session, span=span, where=where, filter=filter))
    return statements


# --- Keeping the rollup honest -----------------------------------------------------------


def read_rollup(session: Session) -> dict[tuple[int, int, str], Usage]:
    """Return the rollup as the triggers keep it: (span, bucket start, model) -> usage."""
    rows = session.execute(
        select(
            CompletionRollup.span,
            CompletionRollup.start,
            CompletionRollup.model,
            CompletionRollup.completions,
            CompletionRollup.prompt_tokens,
            CompletionRollup.completion_tokens,
        )
    )
    return {(span, start, model): Usage(c, p, r) for span, start, model, c, p, r in rows}


def recount_rollup(session: Session) -> dict[tuple[int, int, str], Usage]:
    """Return what the rollup should hold, counted from the completion rows themselves (slow: reads every row)."""
    counted: dict[tuple[int, int, str], Usage] = {}
    statements = [_count_rows(session, span=span, where=[], filter=Filter()) for span in (HOUR, DAY)]
    for span, stmt in zip((HOUR, DAY), statements):
        for bucket, model, completions, prompt_tokens, completion_tokens in session.execute(stmt):
            counted[(span, int(bucket), model)] = Usage(int(completions), int(prompt_tokens or 0), int(completion_tokens or 0))
    return counted


def seqs_outside_bounds(session: Session) -> list[str]:
    """Return the ids of live completions whose seq lies outside the bounds their hour or day
    bucket keeps (or whose bucket's bounds are unknown): none, if the triggers and batch writers
    keep them (SQLite, migration 0014; PostgreSQL keeps none). Slow: reads every row."""
    if session.get_bind().dialect.name != "sqlite":
        return []
    rollup = CompletionRollup
    outside = (
        select(Completion.id)
        .join(rollup, (rollup.model == Completion.model) & (rollup.start == bucket_start(Completion.created, rollup.span)))
        .where(
            Completion.deleted.is_(False),
            rollup.first_seq.is_(None) | (Completion.seq < rollup.first_seq) | (Completion.seq > rollup.last_seq),
        )
    )
    return sorted(set(session.scalars(outside)))
