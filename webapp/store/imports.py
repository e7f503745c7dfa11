"""Writing many completions at once (``import``, ``sync``): upsert by id in batches of Core statements.

A batch costs a handful of statements whatever its size: one SELECT of the rows already
stored, one executemany ``INSERT ... ON CONFLICT (id) DO NOTHING`` for the new ones (and a
SELECT of their seq), one executemany UPDATE for the changed ones, and executemany inserts of
their metadata rows and history. On PostgreSQL psycopg 3 sends an executemany as one pipeline. The promises of :func:`~.completions.save_completion` hold unchanged: upsert by
id, saving the same completion twice changes nothing the second time (no new version, no
history), a tombstone comes back to life, every metadata change is recorded.

Nothing here commits: one batch is meant to be one transaction of the caller's.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Connection, Dialect, String, Text, cast, delete, func, select
from sqlalchemy.exc import DBAPIError, DataError, IntegrityError, OperationalError, ProgrammingError, StatementError
from sqlalchemy.orm import Session

from ..models import Completion, CompletionMetadata, MetadataChange, utcnow
from .completions import completion_values
from .derived import deferred_derived_data, listed, member_of, pair_meetings
from .overview import usage_count

COMPLETIONS = Completion.__table__
METADATA_ROWS = CompletionMetadata.__table__
HISTORY = MetadataChange.__table__


@dataclass(frozen=True)
class IncomingCompletion:
    """A cleaned completion to upsert: the completion object, its input messages and metadata."""

    body: Mapping[str, Any]
    messages: list[Any]
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch did: ids inserted or changed, and ids found exactly as they were."""

    changed: list[str]
    unchanged: list[str]


class ConcurrentInsert(Exception):
    """Another writer stored one of the batch's ids between our look-up and our insert."""

    def __init__(self, ids: Iterable[str]) -> None:
        super().__init__(f"stored by another writer meanwhile: {', '.join(sorted(ids))}")


# What a database may answer about one bad row (a value too long or out of range for its
# column, a race on an id): the batch is then written again line by line to name the row.
# OperationalError (locked, gone, timed out) is not among them: it is about the database, not
# the row. It is a StatementError too, so catch these with ``refuses_a_row``.
ROW_REFUSALS = (IntegrityError, DataError, ProgrammingError, StatementError, OverflowError, ConcurrentInsert)


def refuses_a_row(exc: BaseException) -> bool:
    """Return whether ``exc`` (one of ``ROW_REFUSALS``) is about a row, not about the database itself."""
    return isinstance(exc, ROW_REFUSALS) and not isinstance(exc, OperationalError)


@dataclass(frozen=True)
class _Statements:
    """The batch statements of one database, as driver SQL with the columns ``completion_values`` fills."""

    names: list[str]  # the Completion attributes completion_values returns, in order
    json: list[bool]  # which of them are JSON columns
    convert: list[tuple[int, Callable[[Any], Any]]]  # (index, function) of the values the driver needs converted
    when: Callable[[Any], Any]  # a timestamp as the driver takes it
    copy: bool  # PostgreSQL: new rows go in by COPY
    insert: str  # completions; with ``copy`` the COPY statement, else INSERT ... ON CONFLICT (id) DO NOTHING
    update: str
    insert_pairs: str
    insert_history: str


_STATEMENTS: dict[tuple[str, tuple[str, ...]], _Statements] = {}


def _statements(dialect: Dialect, names: list[str]) -> _Statements:
    """Return (built once per database and column set) the driver SQL of a batch.

    Plain driver ``executemany`` with the JSON serialised once per value: SQLAlchemy's
    per-row parameter processing cost more than the database's own work here.
    """
    cached = _STATEMENTS.get((dialect.name, tuple(names)))
    if cached is not None:
        return cached
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    columns = [Completion.__mapper__.columns[name] for name in names]
    is_json = [isinstance(column.type, JSON) for column in columns]

    def converter(column: Any, json_column: bool) -> Callable[[Any], Any] | None:
        if json_column:
            return json.dumps
        return column.type.dialect_impl(dialect).bind_processor(dialect)

    def timestamp(table: Any, name: str) -> Callable[[Any], Any]:
        column = table.c[name]
        return column.type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)

    copy = dialect.name == "postgresql"

    def insert(table: str, names: list[str], values: str | None = None, tail: str = "") -> str:
        listed = ", ".join(quote(name) for name in names)
        if copy:
            return f"COPY {table} ({listed}) FROM STDIN"
        return f"INSERT INTO {table} ({listed}) VALUES ({values or ', '.join([mark] * len(names))}){tail}"

    completion_columns = [column.name for column in columns] + ["version", "updated_at"]
    built = _Statements(
        names=names,
        json=is_json,
        convert=[
            (index, convert)
            for index, convert in enumerate(converter(column, json_column) for column, json_column in zip(columns, is_json))
            if convert is not None
        ],
        when=timestamp(COMPLETIONS, "updated_at"),
        copy=copy,
        insert=insert("completions", completion_columns, tail=" ON CONFLICT (id) DO NOTHING"),
        update=(
            f"UPDATE completions SET {', '.join(f'{quote(column.name)} = {mark}' for column in columns)}, "
            f"version = version + 1, updated_at = {mark} WHERE seq = {mark}"
        ),
        insert_pairs=insert("completion_metadata", ["completion_seq", "key", "value"]),
        insert_history=insert("metadata_changes", ["completion_id", "actor", "before", "after", "changed_at"]),
    )
    _STATEMENTS[(dialect.name, tuple(names))] = built
    return built


@functools.lru_cache(maxsize=64)
def _many_rows(statement: str, count: int) -> str:
    """Return the one-row ``INSERT ... VALUES (?, ...) [tail]`` ``statement`` made to insert ``count`` rows."""
    head, _, rest = statement.partition(" VALUES ")
    group, _, tail = rest.partition(")")
    return f"{head} VALUES {', '.join([group + ')'] * count)}{tail}"


def _insert(connection: Connection, statements: _Statements, statement: str, rows: list[tuple[Any, ...]]) -> int:
    """Insert ``rows`` with ``statement`` (COPY on PostgreSQL, multi-row VALUES elsewhere); return how many went in.

    SQLite: as many rows a statement as its parameter limit allows, so that the database
    works through hundreds of rows in one call without the GIL (an ``executemany`` takes the
    GIL back after every row, and waits for it while another thread of the process runs). COPY has no
    ON CONFLICT: an id stored meanwhile by another writer makes it fail as a whole with
    IntegrityError, and the caller writes the batch again line by line.
    """
    if not statements.copy:
        driver_connection = connection.connection.driver_connection
        per_statement = max(1, driver_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(rows[0]))  # type: ignore[union-attr]
        inserted = 0
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            flat = tuple(value for row in chunk for value in row)
            inserted += connection.exec_driver_sql(_many_rows(statement, len(chunk)), flat).rowcount
        return inserted
    driver = connection.dialect.dbapi
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except driver.Error as exc:  # type: ignore[union-attr]
        # As SQLAlchemy would have raised it: IntegrityError, DataError, ...
        raise DBAPIError.instance(statement, None, exc, driver.Error, hide_parameters=True) from exc  # type: ignore[union-attr]
    return len(rows)


def _fetch_all(connection: Connection, statement: Any, parameters: dict[str, Any]) -> list[Sequence[Any]]:
    """Return the rows of ``statement``; on SQLite as one JSON array made by the database, in one step.

    Python's sqlite3 hands the GIL back and forth for every row it steps through, and a
    thousand rows then wait a thousand times for another thread of the process to let go of it. JSON
    keeps what the driver would give: integers, text (the JSON columns are selected as
    text) and NULL.
    """
    if connection.dialect.name != "sqlite":
        return list(connection.execute(statement, parameters))
    rows = statement.subquery()
    packed = select(func.json_group_array(func.json_array(*rows.c)))
    return json.loads(connection.execute(packed, parameters).scalar_one())


def _driver_row(statements: _Statements, values: Mapping[str, Any]) -> tuple[Any, ...]:
    """Return the values of one completion as the driver takes them, in ``statements.names`` order."""
    row = [values[name] for name in statements.names]
    for index, convert in statements.convert:
        row[index] = convert(row[index])
    return tuple(row)


def _same(statements: _Statements, stored: Sequence[Any], new: Sequence[Any]) -> bool:
    """Return whether a stored row (JSON columns as text) holds exactly the new values."""
    for index in range(len(statements.names)):
        if stored[index] == new[index]:
            continue
        # The same JSON may be spelled differently (written by another serialiser): compare values.
        if not statements.json[index] or stored[index] is None or json.loads(stored[index]) != json.loads(new[index]):
            return False
    return True


@dataclass(frozen=True)
class PreparedBatch:
    """A batch's driver rows, computed before its write transaction begins.

    Plain data (no statements, no functions): it may be computed in another process and
    handed over pickled, as ``import`` does.
    """

    names: tuple[str, ...]  # the columns of ``rows``: the Completion attributes completion_values returns
    rows: list[tuple[Any, ...]]  # each completion's values as the driver takes them
    ids: list[str]
    metadata: list[dict[str, str]]  # each completion's metadata map
    # PostgreSQL: each completion's usage and metadata meetings, counted here (see DeferredRows)
    usage: list[tuple[int, str, int, int]] | None = None
    meetings: list[list[tuple[str, str, str, str]]] | None = None


def prepare_batch(dialect: Dialect, completions: Sequence[IncomingCompletion]) -> PreparedBatch:
    """Return the values :func:`write_prepared` writes for ``completions`` (distinct ids) on ``dialect``.

    Pure computation, no database: a caller may prepare the next batch while one is written.
    """
    if not completions:
        raise ValueError("prepare_batch needs at least one completion")
    raw = [completion_values(body=c.body, messages=c.messages, metadata=c.metadata) for c in completions]
    names = list(raw[0])
    sql = _statements(dialect, names)
    rows = [_driver_row(sql, values) for values in raw]
    id_at = sql.names.index("id")
    ids = [row[id_at] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("upsert_completions needs distinct ids in one batch")
    metadata = [values["metadata_map"] for values in raw]
    if dialect.name != "postgresql":
        return PreparedBatch(names=tuple(names), rows=rows, ids=ids, metadata=metadata)
    usage = [
        (values["created"], values["model"], usage_count(values["body"], "prompt_tokens"), usage_count(values["body"], "completion_tokens"))
        for values in raw
    ]
    meetings = [pair_meetings(values["metadata_map"]) for values in raw]
    return PreparedBatch(names=tuple(names), rows=rows, ids=ids, metadata=metadata, usage=usage, meetings=meetings)


def upsert_completions(session: Session, *, completions: Sequence[IncomingCompletion], actor: str) -> BatchOutcome:
    """Insert or replace each completion by id, in a few statements for the whole batch.

    The ids must be distinct (a caller splits its batch where an id repeats). Column values
    come from :func:`~.completions.completion_values` only. Returns which ids changed and
    which were already stored exactly so. Raises one of ``ROW_REFUSALS`` when the database
    refuses a row; the caller's transaction should then be rolled back (the batch may be
    half written) and the completions written one by one to find the culprit.
    """
    if not completions:
        return BatchOutcome(changed=[], unchanged=[])
    return write_prepared(session, prepared=prepare_batch(session.get_bind().dialect, completions), actor=actor)


def write_prepared(session: Session, *, prepared: PreparedBatch, actor: str) -> BatchOutcome:
    """Write a batch :func:`prepare_batch` computed, as :func:`upsert_completions` does."""
    connection = session.connection()
    sql = _statements(connection.dialect, list(prepared.names))
    rows, ids, metadata = prepared.rows, prepared.ids, prepared.metadata
    names = sql.names
    id_at, deleted_at, metadata_at = names.index("id"), names.index("deleted"), names.index("metadata_map")
    now = sql.when(utcnow())

    as_text = [cast(getattr(Completion, n), Text) if j else getattr(Completion, n) for n, j in zip(names, sql.json)]
    dialect = connection.dialect.name
    look_up = select(Completion.seq, *as_text).where(member_of(dialect, Completion.id, name="ids", element=String))
    if connection.dialect.name == "postgresql":
        # Hold the rows until the batch commits, so no API write lands between compare and write.
        look_up = look_up.with_for_update()
    stored = {row[1 + id_at]: row for row in _fetch_all(connection, look_up, {"ids": listed(dialect, ids)})}

    new: list[int] = []  # indexes into rows
    updates: list[tuple[int, int, dict[str, str]]] = []  # index, seq, metadata before
    unchanged: list[str] = []
    for index, row in enumerate(rows):
        old = stored.get(row[id_at])
        if old is None:
            new.append(index)
        elif not old[1 + deleted_at] and _same(sql, old[1:], row):
            unchanged.append(row[id_at])
        else:
            before = {} if old[1 + deleted_at] else json.loads(old[1 + metadata_at] or "{}")
            updates.append((index, old[0], before))

    if not new and not updates:
        return BatchOutcome(changed=[], unchanged=unchanged)

    # The INSERT triggers stand aside: the derived data of the batch's inserts is kept in a
    # few statements at its end (store.derived), in this transaction.
    with deferred_derived_data(connection) as deferred:
        seq_of: dict[str, int] = {}
        if new:
            new_ids = member_of(dialect, Completion.id, name="ids", element=String)
            given = {"ids": listed(dialect, [ids[i] for i in new])}
            if _insert(connection, sql, sql.insert, [rows[i] + (1, now) for i in new]) != len(new):
                raise ConcurrentInsert(set(connection.scalars(select(Completion.id).where(new_ids), given)))
            seq_of = dict(_fetch_all(connection, select(Completion.id, Completion.seq).where(new_ids), given))
            deferred.inserted.extend(seq_of.values())
            if prepared.usage is not None:
                deferred.usage = [prepared.usage[i] for i in new]

        # Metadata pairs and history only where the metadata changed (a revived tombstone had none).
        moved = [(i, seq, before) for i, seq, before in updates if before != metadata[i]]
        if updates:
            connection.exec_driver_sql(sql.update, [rows[i] + (now, seq) for i, seq, _before in updates])
            if moved:
                connection.execute(delete(CompletionMetadata).where(CompletionMetadata.completion_seq.in_([s for _i, s, _b in moved])))
        targets = [(i, seq_of[ids[i]], {}) for i in new] + moved
        pairs = [(seq, key, value) for i, seq, _before in targets for key, value in metadata[i].items()]
        if pairs:
            _insert(connection, sql, sql.insert_pairs, pairs)
            deferred.metadata.extend(seq for _i, seq, _before in targets)
            if prepared.meetings is not None:
                deferred.pairs = Counter(meeting for i, _seq, _before in targets for meeting in prepared.meetings[i])
        history = [
            (ids[i], actor, "{}" if not before else json.dumps(before), rows[i][metadata_at], now)
            for i, _seq, before in targets
            if before != metadata[i]
        ]
        if history:
            _insert(connection, sql, sql.insert_history, history)

    changed = {ids[i] for i in new} | {ids[i] for i, _s, _b in updates}
    return BatchOutcome(changed=[i for i in ids if i in changed], unchanged=unchanged)
