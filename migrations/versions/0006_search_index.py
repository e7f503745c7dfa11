"""search index: searchable text columns, trigram and CJK gram indexes kept by the database

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 07:40:00

SQLite: two FTS5 tables (``trigram`` on ``search_text``, with its own copy of the text;
``unicode61`` on ``search_grams``, external content over ``completions``), kept by
triggers in the writing transaction. PostgreSQL: the ``pg_trgm`` extension (a managed database must allow it:
it is a trusted extension from PostgreSQL 13, so the database owner may create it) with a
GIN trigram index on ``search_text`` and a GIN index on the words of ``search_grams``.
Existing rows get their text computed by the same function every write uses.
"""
import sqlalchemy as sa
from alembic import op

from webapp.store.search import search_columns

# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BATCH = 1000

SQLITE_UP = [
    # The trigram table keeps positions, so a term is a phrase of its trigrams and FTS5 matches
    # it exactly as a substring; and its own copy of the text, for the terms it cannot decide.
    "CREATE VIRTUAL TABLE completions_search USING fts5(search_text, tokenize='trigram case_sensitive 1')",
    "CREATE VIRTUAL TABLE completions_grams USING fts5(search_grams, content='completions', content_rowid='seq', "
    "tokenize='unicode61 remove_diacritics 0', detail='none')",
    # An external-content FTS5 table (grams) is told what to forget with the very values it indexed.
    """CREATE TRIGGER completions_search_insert AFTER INSERT ON completions WHEN new.search_text IS NOT NULL BEGIN
        INSERT INTO completions_search(rowid, search_text) VALUES (new.seq, new.search_text);
        INSERT INTO completions_grams(rowid, search_grams) VALUES (new.seq, new.search_grams);
    END""",
    """CREATE TRIGGER completions_search_delete AFTER DELETE ON completions WHEN old.search_text IS NOT NULL BEGIN
        DELETE FROM completions_search WHERE rowid = old.seq;
        INSERT INTO completions_grams(completions_grams, rowid, search_grams) VALUES ('delete', old.seq, old.search_grams);
    END""",
    """CREATE TRIGGER completions_search_update AFTER UPDATE OF search_text, search_grams ON completions BEGIN
        DELETE FROM completions_search WHERE rowid = old.seq;
        INSERT INTO completions_grams(completions_grams, rowid, search_grams)
            SELECT 'delete', old.seq, old.search_grams WHERE old.search_text IS NOT NULL;
        INSERT INTO completions_search(rowid, search_text) SELECT new.seq, new.search_text WHERE new.search_text IS NOT NULL;
        INSERT INTO completions_grams(rowid, search_grams) SELECT new.seq, new.search_grams WHERE new.search_text IS NOT NULL;
    END""",
    "INSERT INTO completions_search(rowid, search_text) SELECT seq, search_text FROM completions WHERE search_text IS NOT NULL",
    # Not 'rebuild': that would index the tombstones too, and a tombstone brought back to life would be indexed twice.
    "INSERT INTO completions_grams(rowid, search_grams) SELECT seq, search_grams FROM completions WHERE search_text IS NOT NULL",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS completions_search_update",
    "DROP TRIGGER IF EXISTS completions_search_delete",
    "DROP TRIGGER IF EXISTS completions_search_insert",
    "DROP TABLE IF EXISTS completions_grams",
    "DROP TABLE IF EXISTS completions_search",
]
POSTGRESQL_UP = [
    # Building an index over a large table takes longer than the app's statement timeout allows a request.
    "SET LOCAL statement_timeout = 0",
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX ix_completions_search_trgm ON completions USING gin (search_text gin_trgm_ops)",
    "CREATE INDEX ix_completions_search_grams ON completions USING gin (string_to_array(search_grams, ' '))",
]
POSTGRESQL_DOWN = [
    "DROP INDEX IF EXISTS ix_completions_search_grams",
    "DROP INDEX IF EXISTS ix_completions_search_trgm",
]


def index_statements(dialect: str, *, up: bool) -> list[str]:
    """Return the SQL that creates (or drops) the search indexes on ``dialect``; bench/ seeds reuse it."""
    if dialect == "sqlite":
        return SQLITE_UP if up else SQLITE_DOWN
    return POSTGRESQL_UP if up else POSTGRESQL_DOWN


def backfill(connection: sa.Connection) -> None:
    """Give every live completion its search columns, a batch at a time (bounded memory)."""
    table = sa.table(
        "completions",
        sa.column("seq", sa.BigInteger),
        sa.column("deleted", sa.Boolean),
        sa.column("body", sa.JSON),
        sa.column("messages", sa.JSON),
        sa.column("search_text", sa.Text),
        sa.column("search_grams", sa.Text),
    )
    last = 0
    while True:
        rows = connection.execute(
            sa.select(table.c.seq, table.c.body, table.c.messages)
            .where(table.c.seq > last, table.c.deleted.is_(False))
            .order_by(table.c.seq)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        update = (
            sa.update(table)
            .where(table.c.seq == sa.bindparam("b_seq"))
            .values(search_text=sa.bindparam("b_text"), search_grams=sa.bindparam("b_grams"))
        )
        values = []
        for seq, body, messages in rows:
            columns = search_columns(body=body, messages=messages)
            values.append({"b_seq": seq, "b_text": columns["search_text"], "b_grams": columns["search_grams"]})
        connection.execute(update, values)
        last = rows[-1][0]


def upgrade():
    op.add_column('completions', sa.Column('search_text', sa.Text(), nullable=True))
    op.add_column('completions', sa.Column('search_grams', sa.Text(), nullable=True))
    connection = op.get_bind()
    backfill(connection)
    for statement in index_statements(connection.dialect.name, up=True):
        op.execute(statement)


def downgrade():
    for statement in index_statements(op.get_bind().dialect.name, up=False):
        op.execute(statement)
    with op.batch_alter_table('completions', schema=None) as batch_op:
        batch_op.drop_column('search_grams')
        batch_op.drop_column('search_text')
