"""The derived data of a batch of inserted completions, kept per batch in set-based statements.

Database triggers keep the data derived from completions row by row, whatever writes them:
the SQLite search tables (migration 0004), ``metadata_pair_counts`` (0005) and
``completion_rollup`` (0007). Row by row is right for a single write and dear for a batch
(measured on SQLite: the search trigger cost ~166 us a row, one INSERT ... SELECT into both
FTS5 tables per batch ~40; on PostgreSQL the rollup and pair count functions ran per row).
So a batch writer may *defer* the INSERT triggers inside its transaction (migration 0009:
a row in ``derived_data_deferred`` on SQLite, which only the writing transaction ever sees;
the transaction-local setting ``completion_store.defer_derived_data`` on PostgreSQL), insert
its rows, then end the deferral and keep the derived data of those rows in one statement each, before it commits:
nothing is ever written half. UPDATE and DELETE triggers never stand aside, nor does any
other writer's trigger (a single create through the API keeps everything in its own
transaction, as before).

The statements count by the very rules of the triggers: the rollup's bucket and token rule
come from ``overview`` (which a test checks against a recount), the pair counts are the
migration's own recount restricted to the batch, the search tables get the row's columns.
On PostgreSQL a batch writer hands over what it already holds instead (each row's usage by
``overview.usage_count``, its hour by ``overview.floor_to``, each two metadata pairs), and the
rollup and pair counts take those values. Reading them back (a parse of every json body, a
self-join) took 40-60 and 60-75 ms a batch of 2,500 rows; the given values take ~2 and ~15
(measured side by side on the busy 2-core machine).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, Text, any_, bindparam, case, cast, column, func, literal, select, true, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import aliased

from ..models import Completion, CompletionMetadata, CompletionRollup, MetadataPairCount
from .base import DEFER_SQL, SQLITE_PENDING_TABLE, UNDEFER_SQL
from .overview import DAY, HOUR, bucket_start, floor_to, usage_tokens
from .search import FTS_GRAMS, FTS_TEXT

POSTGRES_DEFERRAL_SETTING = "completion_store.defer_derived_data"

log = logging.getLogger(__name__)


def member_of(dialect: str, target: Any, *, name: str, element: Any = BigInteger) -> Any:
    """Return the condition "``target`` is one of the values of parameter ``name``" (see :func:`listed`).

    One parameter whatever the count (an array on PostgreSQL, a JSON array read by
    ``json_each`` on SQLite): a thousand separate parameters cost more to render and parse
    than the query takes to run.
    """
    if dialect == "postgresql":
        return target == any_(bindparam(name, type_=ARRAY(element)))
    return target.in_(select(column("value")).select_from(func.json_each(bindparam(name, type_=Text))))


def listed(dialect: str, values: list[Any]) -> Any:
    """Return ``values`` as the parameter of a :func:`member_of` condition takes them."""
    return values if dialect == "postgresql" else json.dumps(values)


@dataclass
class DeferredRows:
    """What a batch wrote while the INSERT triggers stood aside, for :func:`deferred_derived_data` to keep.

    ``inserted``: the seqs of the completions it inserted. ``metadata``: the seqs of the
    completions all of whose ``completion_metadata`` rows it inserted (a completion whose
    metadata it replaced deletes the old rows first: DELETE triggers uncount them at once).
    ``usage`` and ``pairs``, when given, describe exactly those rows (see :func:`pair_meetings`).
    """

    inserted: list[int] = field(default_factory=list)
    metadata: list[int] = field(default_factory=list)
    # What the writer knows already of those rows, counted by the triggers' rules: with them,
    # PostgreSQL counts these values instead of reading the rows back (a json body is parsed
    # whole for each value read from it, and the pairs are a self-join). None: read the rows.
    usage: list[tuple[int, str, int, int]] | None = None  # (created, model, prompt, completion tokens) of each inserted row
    pairs: Counter[tuple[str, str, str, str]] | None = None  # each two pairs of a ``metadata`` completion, (key, value) in either order


@contextmanager
def deferred_derived_data(connection: Connection) -> Iterator[DeferredRows]:
    """Defer the INSERT triggers for the block; when it ends, keep the derived data of what it recorded.

    The block inserts rows and records them in the yielded :class:`DeferredRows`. When it
    raises, nothing is kept and the deferral is left on: the caller's transaction (or
    savepoint) must then be rolled back, as after any failed write, and the rollback ends it.
    """
    _set_deferral(connection, on=True)
    rows = DeferredRows()
    yield rows
    _set_deferral(connection, on=False)
    keep_derived_data(connection, rows)


def _set_deferral(connection: Connection, *, on: bool) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.set_config(POSTGRES_DEFERRAL_SETTING, "on" if on else "off", True)))
    elif on:
        connection.exec_driver_sql(DEFER_SQL)
    else:
        connection.exec_driver_sql(UNDEFER_SQL)


def keep_derived_data(connection: Connection, rows: DeferredRows) -> None:
    """Index, count and roll up the rows a batch inserted while deferred, in one statement each."""
    dialect = connection.dialect.name
    roll_up, count_pairs = _statements(dialect)
    given = dialect == "postgresql"
    if rows.inserted:
        if dialect == "sqlite":
            _index_for_search(connection, rows.inserted)
        if given and rows.usage is not None:
            hours: dict[tuple[int, str], list[int]] = {}
            for created, model, prompt, reply in rows.usage:
                counts = hours.setdefault((floor_to(created, HOUR), model), [0, 0, 0])
                counts[0] += 1
                counts[1] += prompt
                counts[2] += reply
            columns = list(zip(*((*hour, *counts) for hour, counts in hours.items())))
            connection.execute(_given_statements()[0], dict(zip(HOUR_COLUMNS, map(list, columns))))
        else:
            connection.execute(roll_up, {"seqs": listed(dialect, rows.inserted)})
    if rows.metadata:
        if given and rows.pairs is not None:
            if rows.pairs:
                columns = list(zip(*((*meeting, count) for meeting, count in rows.pairs.items())))
                connection.execute(_given_statements()[1], dict(zip(PAIR_COLUMNS, map(list, columns))))
        else:
            connection.execute(count_pairs, {"seqs": listed(dialect, rows.metadata)})


def pair_meetings(metadata: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """Return every two pairs of one completion's ``metadata`` as (key, value, key, value), each once.

    The order within a meeting is Python's; the database puts each in its own key order
    (its collation's, as the triggers do) when it counts them.
    """
    return [(*a, *b) for a, b in itertools.combinations(metadata.items(), 2)]


@functools.cache
def _statements(dialect: str) -> tuple[Any, Any]:
    """Return the rollup and pair count statements of a database, built once."""
    return _roll_up(dialect, _hours(_batch_usage(dialect))), _count_pairs(dialect)


HOUR_COLUMNS = ("start", "model", "completions", "prompt_tokens", "completion_tokens")
PAIR_COLUMNS = ("key_a", "value_a", "key_b", "value_b", "count")


@functools.cache
def _given_statements() -> tuple[Any, Any]:
    """Return PostgreSQL's rollup and pair count statements over given values (:class:`DeferredRows`), built once.

    Each value comes as one array parameter, the rows as ``unnest`` of the arrays.
    """
    texts = {"model", "key_a", "value_a", "key_b", "value_b"}
    hours, meetings = (
        func.unnest(*(bindparam(name, type_=ARRAY(Text if name in texts else BigInteger)) for name in names))
        .table_valued(*names)
        .render_derived(name=alias)
        for names, alias in ((HOUR_COLUMNS, "given_hours"), (PAIR_COLUMNS, "given_pairs"))
    )
    first = meetings.c.key_a < meetings.c.key_b
    ordered = [
        case((first, meetings.c[mine]), else_=meetings.c[other]).label(mine)
        for mine, other in (("key_a", "key_b"), ("value_a", "value_b"), ("key_b", "key_a"), ("value_b", "value_a"))
    ]
    counted = select(*ordered, cast(func.sum(meetings.c["count"]), BigInteger)).group_by(*ordered).order_by(*ordered)
    return _roll_up("postgresql", select(*hours.c).cte("hours")), _upsert_pair_counts("postgresql", counted)


# The INSERT trigger's search index writes (migrations 0004, 0010, 0013) for the rows whose seqs are
# listed in a JSON array parameter: the text table takes the CJK gram words too, each between
# spaces, so a term and a gram word meet in one query; only a text with gram words has a
# document in the gram table (0013).
_BATCH_ROWS = "FROM completions WHERE seq IN (SELECT value FROM json_each(?)) AND search_text IS NOT NULL"
_INDEX_FOR_SEARCH = (
    f"INSERT INTO {FTS_TEXT}(rowid, search_text, search_grams) SELECT seq, search_text, ' ' || search_grams || ' ' {_BATCH_ROWS}",
    f"INSERT INTO {FTS_GRAMS}(rowid, search_grams) SELECT seq, search_grams {_BATCH_ROWS} AND search_grams <> ''",
)


def _index_for_search(connection: Connection, seqs: list[int]) -> None:
    """Put the rows in SQLite's two FTS5 tables, as the INSERT trigger does."""
    listed_seqs = (json.dumps(seqs),)
    for sql in _INDEX_FOR_SEARCH:
        connection.exec_driver_sql(sql, listed_seqs)


def _upsert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _batch_usage(dialect: str) -> Any:
    """Return the live rows among the ``seqs`` as (created, model, prompt_tokens, completion_tokens), by the
    triggers' rule, and on SQLite their seq (its rollup keeps the bounds of its buckets' seqs: migration 0014)."""
    batch = (member_of(dialect, Completion.seq, name="seqs"), Completion.deleted.is_(False))
    if dialect != "postgresql":
        tokens = [usage_tokens(dialect, name).label(name) for name in ("prompt_tokens", "completion_tokens")]
        return select(Completion.created, Completion.model, *tokens, Completion.seq).where(*batch).subquery("batch_rows")
    # PostgreSQL reads a json value by parsing its text, for each operator. So the usage is
    # taken out of the body once per row (MATERIALIZED: not folded back into each use), and
    # only where the body holds no \u escape at all, which the parser may refuse (0007); such
    # a body, or one without usage, is read by the triggers' own function instead.
    parsable = func.strpos(cast(Completion.body, Text), "\\u") == 0
    rows = (
        select(Completion.created, Completion.model, Completion.body, case((parsable, Completion.body["usage"])).label("usage"))
        .where(*batch)
        .cte("batch_rows")
        .prefix_with("MATERIALIZED")
    )
    tokens = [
        case(
            (rows.c.usage.is_not(None), func.completion_usage_count(rows.c.usage[name])),
            else_=usage_tokens(dialect, name, body=rows.c.body),
        ).label(name)
        for name in ("prompt_tokens", "completion_tokens")
    ]
    return select(rows.c.created, rows.c.model, *tokens).subquery("batch_usage")


def _hours(rows: Any) -> Any:
    """Return ``rows`` (created, model, prompt_tokens, completion_tokens, and on SQLite seq) counted per
    hour and model, as :func:`_roll_up` takes them (on SQLite with the bounds of their seqs)."""
    hour = bucket_start(rows.c.created, HOUR).label("start")
    bounds = [func.min(rows.c.seq).label("first_seq"), func.max(rows.c.seq).label("last_seq")] if "seq" in rows.c else []
    return (
        select(
            hour,
            rows.c.model,
            func.count().label("completions"),
            func.sum(rows.c.prompt_tokens).label("prompt_tokens"),
            func.sum(rows.c.completion_tokens).label("completion_tokens"),
            *bounds,
        )
        .group_by(hour, rows.c.model)
        .cte("hours")
    )


def _roll_up(dialect: str, hours: Any) -> Any:
    """Return the statement adding ``hours`` (start, model, completions, prompt_tokens, completion_tokens,
    and on SQLite first_seq, last_seq: hour buckets) and the day buckets they make to
    ``completion_rollup``, as the triggers (0007, 0014) count them."""
    # A day is whole hours: the day buckets are sums of the hour buckets.
    day = bucket_start(hours.c.start, DAY)
    # The seq bounds where the batch rows carry seqs (SQLite: _batch_usage).
    bounded = "first_seq" in hours.c
    hour_bounds = [hours.c.first_seq, hours.c.last_seq] if bounded else []
    day_bounds = [func.min(hours.c.first_seq), func.max(hours.c.last_seq)] if bounded else []
    counted = union_all(
        select(
            literal(HOUR, Integer).label("span"), hours.c.start, hours.c.model, hours.c.completions, hours.c.prompt_tokens,
            hours.c.completion_tokens, *hour_bounds,
        ),
        select(
            literal(DAY, Integer),
            day,
            hours.c.model,
            func.sum(hours.c.completions),
            func.sum(hours.c.prompt_tokens),
            func.sum(hours.c.completion_tokens),
            *day_bounds,
        ).group_by(day, hours.c.model),
    ).subquery("counted")
    names = ["span", "start", "model", "completions", "prompt_tokens", "completion_tokens"]
    # WHERE true: SQLite reads an upsert's SELECT unambiguously only with a WHERE clause. In key
    # order: two batches written at once lock the rows they share in the same order (no deadlock).
    statement = _upsert(dialect)(CompletionRollup).from_select(
        names + (["first_seq", "last_seq"] if bounded else []),
        select(*counted.c).where(true()).order_by(counted.c.span, counted.c.start, counted.c.model),
    )
    widened = (
        # SQLite's two-argument min and max: as the triggers widen the bounds (NULL, unknown, stays NULL).
        {"first_seq": func.min(CompletionRollup.first_seq, statement.excluded.first_seq),
         "last_seq": func.max(CompletionRollup.last_seq, statement.excluded.last_seq)}
        if bounded
        else {}
    )
    return statement.on_conflict_do_update(
        index_elements=["span", "start", "model"],
        set_={**{name: getattr(CompletionRollup, name) + getattr(statement.excluded, name) for name in names[3:]}, **widened},
    )


def _count_pairs(dialect: str) -> Any:
    """Return the statement counting every two metadata pairs of each completion in the ``seqs`` once, as 0005's triggers do."""
    a, b = aliased(CompletionMetadata), aliased(CompletionMetadata)
    meetings = (
        select(a.key, a.value, b.key, b.value, func.count())
        .join(b, (b.completion_seq == a.completion_seq) & (a.key < b.key))
        .where(member_of(dialect, a.completion_seq, name="seqs"))
        .group_by(a.key, a.value, b.key, b.value)
    )
    return _upsert_pair_counts(dialect, meetings)


def _upsert_pair_counts(dialect: str, meetings: Any) -> Any:
    """Return the statement adding ``meetings`` (key_a, value_a, key_b, value_b, count) to ``metadata_pair_counts``."""
    statement = _upsert(dialect)(MetadataPairCount).from_select(["key_a", "value_a", "key_b", "value_b", "count"], meetings)
    return statement.on_conflict_do_update(
        index_elements=["key_a", "value_a", "key_b", "value_b"], set_={"count": MetadataPairCount.count + statement.excluded.count}
    )


# --- A create's derived data, written just after its answer (SQLite, migration 0015) ----------------

_PENDING_SQL = f"SELECT seq FROM {SQLITE_PENDING_TABLE}"
_ANY_PENDING_SQL = f"{_PENDING_SQL} LIMIT 1"  # read as every SQLite transaction begins
_CLEAR_PENDING_SQL = f"DELETE FROM {SQLITE_PENDING_TABLE}"
# Tries of a read transaction at a snapshot with nothing pending (each after keeping what was).
SETTLE_ATTEMPTS = 5


def settle(connection: Connection, *, immediate: bool) -> None:
    """Make the SQLite transaction ``connection`` has just begun see every stored completion's derived data.

    A create through the API commits its completion before its search index entries, rollup
    counts and metadata filter rows (migration 0015); until they are written it is *pending*.
    Called as each transaction begins (``extensions.configure_engine``):

    - a write transaction (``immediate``) holds the write lock, so it writes what is pending
      itself, as its first writes (rolled back with it if it fails: then it stays pending). If
      that fails, the transaction fails: no UPDATE or DELETE may meet a completion that the
      search index does not hold.
    - a read transaction reads at the snapshot of its first read, so when that snapshot has
      pending completions it ends, a write transaction of its own writes them, and it begins
      again (up to ``SETTLE_ATTEMPTS`` times, should creates keep coming in between). If that
      fails (the write lock not had within the busy timeout, say), it is logged and the reader
      goes on without: a search or a count may then miss the pending completions.

    Nothing pending (nearly always): one read of an empty table. Before migration 0015 there is
    no such table and nothing to do.
    """
    for _attempt in range(SETTLE_ATTEMPTS):
        if not _pending(connection):
            return
        if immediate:
            _keep_pending(connection)
            return
        connection.exec_driver_sql("ROLLBACK")
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            _keep_pending(connection)
            connection.exec_driver_sql("COMMIT")
        except Exception:
            log.exception("a reader could not write the derived data of pending completions; it reads without them")
            if connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
                connection.exec_driver_sql("ROLLBACK")
            connection.exec_driver_sql("BEGIN")
            return
        connection.exec_driver_sql("BEGIN")


def _pending(connection: Connection) -> bool:
    """Return whether any completion is pending, on the driver's cursor (cheaper than a statement of SQLAlchemy's)."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        return cursor.execute(_ANY_PENDING_SQL).fetchone() is not None
    except connection.dialect.loaded_dbapi.Error as exc:
        if f"no such table: {SQLITE_PENDING_TABLE}" in str(exc):
            return False  # a database before migration 0015 (while it is being migrated)
        # As SQLAlchemy's own statements fail (the app answers "database unavailable" to those).
        raise DBAPIError.instance(_ANY_PENDING_SQL, (), exc, connection.dialect.loaded_dbapi.Error, dialect=connection.dialect) from exc
    finally:
        cursor.close()


# A pending completion's metadata filter rows, from its ``metadata`` (the pair count trigger counts
# their pairs as they go in, as for any other insert of metadata rows).
_METADATA_ROWS_SQL = (
    "INSERT INTO completion_metadata (completion_seq, key, value) "
    "SELECT c.seq, m.key, m.value FROM completions AS c, json_each(c.metadata) AS m "
    "WHERE c.seq IN (SELECT value FROM json_each(?)) AND NOT c.deleted AND c.metadata IS NOT NULL"
)


def _keep_pending(connection: Connection) -> None:
    """Write the derived data of every pending completion (search index entries, rollup counts,
    metadata filter rows and their pair counts) and clear the list, in the write transaction begun."""
    seqs = [seq for (seq,) in connection.exec_driver_sql(_PENDING_SQL)]
    if seqs:
        connection.exec_driver_sql(_METADATA_ROWS_SQL, (json.dumps(seqs),))
        keep_derived_data(connection, DeferredRows(inserted=seqs))
        connection.exec_driver_sql(_CLEAR_PENDING_SQL)
