"""A write transaction on the database driver's own connection, for the hot path of a create.

Every ``store: true`` create runs three small statements. Through a SQLAlchemy ``Connection``
each one pays for its cache key, its execution context and its result object: measured on the
2-core machine, that bookkeeping cost more CPU than SQLite's work itself (0.36 ms against
0.21 ms for a create with its search index, metadata and history). A :class:`Writer` runs the
same Core statements, compiled once per dialect and bound by their columns' own type
processors (so JSON, datetimes and booleans are stored exactly as SQLAlchemy stores them), on
the driver's cursor, and turns a driver error into SQLAlchemy's (so the app's handlers, such as
"database unavailable" answering 503, see the same exceptions as everywhere else).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Executable


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled for one dialect and one set of parameter names."""

    sql: str
    # Bind names in the order the driver takes them (positional paramstyles) or None (named).
    order: tuple[str, ...] | None
    # Every bind name with its value when the statement holds a literal (``version == 0``).
    literals: dict[str, Any]
    processors: dict[str, Callable[[Any], Any]]

    def parameters(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """Return ``params`` (plus the literals), processed for the driver, in its paramstyle."""
        values = {**self.literals, **params} if self.literals else params
        processors = self.processors
        if self.order is not None:
            return [processors[name](values[name]) if name in processors else values[name] for name in self.order]
        return {name: processors[name](value) if name in processors else value for name, value in values.items()}


_COMPILED: dict[tuple[int, str, frozenset[str]], tuple[Executable, _Compiled]] = {}


def _compile(statement: Executable, dialect: Dialect, names: frozenset[str]) -> _Compiled:
    """Return ``statement`` compiled for ``dialect`` with the parameters ``names`` (once; then cached).

    Meant for statements built once at import time: the cache holds each one for good.
    """
    key = (id(statement), dialect.name, names)
    cached = _COMPILED.get(key)
    if cached is not None and cached[0] is statement:
        return cached[1]
    compiled = statement.compile(dialect=dialect, column_keys=sorted(names))  # type: ignore[attr-defined]
    binds = compiled.binds
    processors = {}
    for name, bind in binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    literals = {name: bind.value for name, bind in binds.items() if name not in names and bind.value is not None}
    result = _Compiled(
        sql=compiled.string,
        order=tuple(compiled.positiontup) if dialect.positional else None,
        literals=literals,
        processors=processors,
    )
    _COMPILED[key] = (statement, result)
    return result


class Writer:
    """Core statements run on the driver's cursor, inside a transaction of :func:`transaction`."""

    def __init__(self, cursor: Any, dialect: Dialect, on_error: Callable[[Exception, str, Any], Exception]) -> None:
        self._cursor = cursor
        self.dialect = dialect
        self._on_error = on_error

    def execute(self, statement: Executable, params: Mapping[str, Any]) -> Any:
        """Run ``statement`` with ``params``; return the driver's cursor (``fetchone``, ``rowcount``)."""
        compiled = _compile(statement, self.dialect, frozenset(params))
        return self.execute_sql(compiled.sql, compiled.parameters(params))

    def execute_sql(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        """Run the SQL text ``sql`` with ``params`` as the driver takes them; return the driver's cursor."""
        try:
            self._cursor.execute(sql, params)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._on_error(exc, sql, params) from exc
        return self._cursor

    def executemany(self, statement: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run ``statement`` once per row of ``rows`` (all with the same parameter names), in one driver call."""
        compiled = _compile(statement, self.dialect, frozenset(rows[0]))
        bound = [compiled.parameters(row) for row in rows]
        try:
            self._cursor.executemany(compiled.sql, bound)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._on_error(exc, compiled.sql, bound) from exc


def _roll_back(pooled: Any, dialect: Dialect) -> None:
    """Roll back, unless the connection is gone (then the pool has dropped it and there is nothing to undo)."""
    if pooled.dbapi_connection is None:
        return
    try:
        pooled.rollback()
    except dialect.loaded_dbapi.Error:
        pooled.invalidate()


@contextmanager
def transaction(engine: Engine) -> Iterator[Writer]:
    """Run the block as one write transaction on a pooled driver connection: commit when it
    ends, roll back if it raises. On SQLite it begins ``IMMEDIATE``: it holds the write lock
    from its first statement, or waits its turn (the busy timeout) rather than failing later.

    Driver errors come out as SQLAlchemy's ``DBAPIError`` subclasses; a connection found
    broken is dropped from the pool, as SQLAlchemy itself would do.
    """
    dialect = engine.dialect
    # As the engine says (config: hide_parameters): no completion text or hash in an error's message, so none in a log.
    hidden = engine.hide_parameters
    try:
        pooled = engine.raw_connection()
    except dialect.loaded_dbapi.Error as exc:  # the database cannot be reached
        raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error, hide_parameters=hidden, dialect=dialect) from exc
    cursor = None

    def wrapped(exc: Exception, sql: str, params: Any) -> Exception:
        disconnected = dialect.is_disconnect(exc, pooled.dbapi_connection, cursor)
        if disconnected:
            pooled.invalidate(exc)
        return DBAPIError.instance(
            sql, params, exc, dialect.loaded_dbapi.Error, hide_parameters=hidden,
            connection_invalidated=disconnected, dialect=dialect,
        )

    try:
        try:
            cursor = pooled.cursor()
            if dialect.name == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
        except dialect.loaded_dbapi.Error as exc:
            raise wrapped(exc, "BEGIN", ()) from exc
        try:
            yield Writer(cursor, dialect, wrapped)
        except BaseException:
            _roll_back(pooled, dialect)
            raise
        try:
            pooled.commit()
        except dialect.loaded_dbapi.Error as exc:
            raise wrapped(exc, "COMMIT", ()) from exc
    finally:
        if cursor is not None:
            cursor.close()
        pooled.close()
