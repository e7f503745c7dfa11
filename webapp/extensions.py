"""The Flask extensions, created once and ``init_app``'d in the factory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Engine, event
from sqlalchemy.orm import DeclarativeBase, Session

if TYPE_CHECKING:
    from .store.driver import Writer


class Base(DeclarativeBase):
    """The declarative base of every model."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()

_IMMEDIATE = "completion_store_immediate"


def configure_engine(engine: Engine, *, busy_timeout: float) -> None:
    """Set SQLite up for several processes: WAL, a busy timeout, and write transactions
    that take the write lock when they begin (``BEGIN IMMEDIATE``).

    A deferred transaction that reads and then writes can fail at once with "database is
    locked" when another process wrote in between; one that starts immediate waits its
    turn instead. Reads keep plain deferred transactions so they never queue behind writes.
    """
    if engine.dialect.name != "sqlite":
        return
    from .store import derived  # here, not at the top: the store's models import this module

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the sqlite3 module, emit BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        immediate = bool(connection.get_execution_options().get(_IMMEDIATE))
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        # A create's derived data (search index entries, rollup counts, metadata filter rows) is
        # written after its answer (migration 0015): every transaction sees it, writing it first
        # if still pending.
        derived.settle(connection, immediate=immediate)


@contextmanager
def write_transaction(session: Session | None = None) -> Iterator[Session]:
    """Run the block as one write transaction: commit when it ends, roll back if it raises.

    Any transaction the session already had (a read, say) is ended first, so the write
    starts on a fresh snapshot and, on SQLite, holds the write lock from its first statement.
    """
    session = db.session() if session is None else session
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={_IMMEDIATE: True})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def keep_pending_derived_data() -> None:
    """Write the derived data (search index entries, rollup counts, metadata filter rows) that
    creates left pending (SQLite, migration 0015), in a write transaction of its own: what a
    transaction does first when it begins (see ``configure_engine``), here with nothing after it."""
    if db.engine.dialect.name != "sqlite":
        return
    with db.engine.connect().execution_options(**{_IMMEDIATE: True}) as connection, connection.begin():
        pass


@contextmanager
def write_connection() -> Iterator[Writer]:
    """Run the block as one write transaction on a pooled driver connection of its own: commit
    when it ends, roll back if it raises; on SQLite it holds the write lock from its first
    statement.

    For the hot path of a create, which needs no ORM objects: its :class:`~webapp.store.driver.Writer`
    runs Core statements on the driver's cursor, without the Session's bookkeeping that
    :func:`write_transaction` carries for the views that load rows.
    """
    from .store import driver  # here, not at the top: the store's models import this module

    with driver.transaction(db.engine) as writer:
        yield writer
