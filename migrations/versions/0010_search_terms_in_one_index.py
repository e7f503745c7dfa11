"""search terms intersected in one index: PostgreSQL's two GIN indexes become one, SQLite's trigram table gains the grams

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 10:40:00

A long term beside a short CJK word ("order 发票": 401,400 and 116,150 matches at a million
rows, 5,800 together) was answered by two indexes, every match of each read out and the two
sets intersected outside them: 77 ms (PostgreSQL) and 88 ms (SQLite) for the capped count.
Inside one index the posting lists are intersected as they are read, skipping through the
longer ones.

PostgreSQL: one GIN index over both columns (``pg_trgm`` on the text, the gram words) in place
of 0004's two: 33 ms. A condition on one column alone is served as before (GIN keeps each
column's keys apart). 52 s to build at a million rows.

SQLite: the FTS5 ``trigram`` table ``completions_search`` gets a second column, the gram words
between spaces (" 发 发票 票 "), so that a one- or two-character CJK word is the phrase " 发票 "
of that column, and one MATCH holds every term: 22 ms. ``completions_grams`` stays as it is
(a gram alone is read there, without positions). The search triggers' bodies change, whatever
their heads say (0009's deferral stays), and the table is refilled.
"""
import re

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# --- PostgreSQL ---------------------------------------------------------------------------------

# Written exactly as store.search.index_conditions writes its conditions, so that the index serves them.
CREATE = (
    "CREATE INDEX ix_completions_search_text_grams ON completions "
    "USING gin (search_text gin_trgm_ops, string_to_array(search_grams, ' '))"
)
# 0004's two indexes, as 0004 made them.
CREATE_0004 = [
    "CREATE INDEX ix_completions_search_trgm ON completions USING gin (search_text gin_trgm_ops)",
    "CREATE INDEX ix_completions_search_grams ON completions USING gin (string_to_array(search_grams, ' '))",
]
DROP_0004 = ["DROP INDEX IF EXISTS ix_completions_search_grams", "DROP INDEX IF EXISTS ix_completions_search_trgm"]
DROP = "DROP INDEX IF EXISTS ix_completions_search_text_grams"
# The planner's statistics for the index's expression (the gram words), which a new expression
# index lacks until the next ANALYZE: without them it misjudges how rare a CJK word is.
ANALYZE = "ANALYZE completions"

# --- SQLite -------------------------------------------------------------------------------------

# The gram words as the trigram table holds them: between spaces, so that " 发票 " is one word.
SQLITE_TABLES = {
    True: "CREATE VIRTUAL TABLE completions_search USING fts5(search_text, search_grams, tokenize='trigram case_sensitive 1')",
    False: "CREATE VIRTUAL TABLE completions_search USING fts5(search_text, tokenize='trigram case_sensitive 1')",
}
SQLITE_FILLS = {
    True: "INSERT INTO completions_search(rowid, search_text, search_grams) "
    "SELECT seq, search_text, ' ' || search_grams || ' ' FROM completions WHERE search_text IS NOT NULL",
    False: "INSERT INTO completions_search(rowid, search_text) SELECT seq, search_text FROM completions WHERE search_text IS NOT NULL",
}
# What each search trigger of 0004 writes into the trigram table, before (0004) and after this migration.
SQLITE_WRITES = {
    "completions_search_insert": (
        "INSERT INTO completions_search(rowid, search_text) VALUES (new.seq, new.search_text);",
        "INSERT INTO completions_search(rowid, search_text, search_grams) VALUES (new.seq, new.search_text, ' ' || new.search_grams || ' ');",
    ),
    "completions_search_update": (
        "INSERT INTO completions_search(rowid, search_text) SELECT new.seq, new.search_text WHERE new.search_text IS NOT NULL;",
        "INSERT INTO completions_search(rowid, search_text, search_grams) "
        "SELECT new.seq, new.search_text, ' ' || new.search_grams || ' ' WHERE new.search_text IS NOT NULL;",
    ),
}


def _rewritten(sql: str, name: str, *, up: bool) -> str:
    """Return trigger ``name``'s CREATE text writing the trigram table's new (``up``) or old columns."""
    old, new = SQLITE_WRITES[name] if up else SQLITE_WRITES[name][::-1]
    # Whitespace aside: a trigger's text is kept as it was written, indentation and all.
    pattern = r"\s+".join(re.escape(word) for word in old.split())
    rewritten, found = re.subn(pattern, lambda _match: new, sql)
    if found != 1:
        raise RuntimeError(f"unexpected text of trigger {name}: {sql[:300]}")
    return rewritten


def sqlite_statements(triggers: dict[str, str], *, up: bool) -> list[str]:
    """Return the SQL that remakes the trigram table with (``up``) or without the gram words,
    refilled, and the ``triggers`` (name -> their CREATE text) writing its columns."""
    return [
        *(f"DROP TRIGGER {name}" for name in triggers),
        "DROP TABLE completions_search",
        SQLITE_TABLES[up],
        SQLITE_FILLS[up],
        *(_rewritten(sql, name, up=up) for name, sql in triggers.items()),
    ]


def index_statements(dialect: str, *, up: bool, earlier: list[str] | None = None) -> list[str]:
    """Return the SQL that builds (or drops) what this migration adds; bench/ seeds reuse it.

    ``earlier``: the statements the earlier migrations' ``index_statements`` gave (a seed runs
    them first), whose SQLite search triggers this one remakes. Dropping needs nothing on
    SQLite: 0004's statements drop the table and the triggers, whatever their columns.
    """
    if dialect == "sqlite":
        if not up:
            return []
        made = earlier or []
        return sqlite_statements({name: next(s for s in made if s.startswith(f"CREATE TRIGGER {name} ")) for name in SQLITE_WRITES}, up=True)
    return [CREATE, *DROP_0004] if up else [DROP]


def _sqlite(*, up: bool) -> None:
    connection = op.get_bind()
    triggers = {
        name: connection.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"), {"name": name}).scalar_one()
        for name in SQLITE_WRITES
    }
    for statement in sqlite_statements(triggers, up=up):
        op.execute(statement)


def _postgresql(statements: list[str]) -> None:
    # Building an index over a large table takes longer than the app's statement timeout allows a request.
    op.execute("SET LOCAL statement_timeout = 0")
    for statement in statements:
        op.execute(statement)


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        _sqlite(up=True)
    else:
        _postgresql([*index_statements("postgresql", up=True), ANALYZE])


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        _sqlite(up=False)
    else:
        _postgresql([*CREATE_0004, DROP, ANALYZE])
