"""derived data after the answer: a SQLite create marks its completion pending, and its search index entries, rollup counts and metadata filter rows are written just after the answer

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27 02:40:00

A ``store: true`` create commits its completion, metadata and history before the answer
leaves. On SQLite the same transaction also indexed the completion for search (FTS5), counted
it in the rollup (INSERT triggers) and wrote its metadata filter rows (``completion_metadata``,
whose trigger counts their pairs): about two fifths of its time in the database (``bench/keep.py``
on the 2-core machine: 278 and 330 us a create with them, 160 and 197 without, 9.6 WAL pages a
commit instead of 18). Nobody waits for those writes but a later reader.

So a create through the API stands the INSERT triggers aside for its own row (0009's
``derived_data_deferred``, inside its transaction) and records the row's seq in
``derived_data_pending`` instead; the metadata stays in the completion's ``metadata`` column,
and the history record is written as before. Every 16th create of a server process writes
what is pending after its answer, in a transaction of its own (``store.derived``: the batch
import's statements, the metadata rows from the ``metadata`` column). And every other
SQLAlchemy transaction on SQLite writes any pending completions first, when it begins
(``extensions.configure_engine``), so no reader ever sees a stored completion unsearchable,
uncounted or missing from a metadata filter, and no UPDATE or DELETE trigger ever meets a row
it did not index. A pending completion left by a server that stopped between the two is
written by the next transaction.

PostgreSQL keeps everything in the create's transaction, as before: its search indexes are
indexes, and its triggers are cheap there. Nothing changes on PostgreSQL.

Going down drops the table. Its rows, if any, were written when the migration's own
transaction began.
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

TABLE = "derived_data_pending"


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"CREATE TABLE {TABLE} (seq INTEGER PRIMARY KEY)")


def downgrade():
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    if connection.execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar_one():
        raise RuntimeError(
            f"{TABLE} still holds completions whose derived data is not written: "
            "run `flask db upgrade` and then this downgrade again (any transaction of the app writes them)."
        )
    op.execute(f"DROP TABLE {TABLE}")
