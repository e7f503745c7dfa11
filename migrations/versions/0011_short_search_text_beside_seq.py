"""short search text beside seq: PostgreSQL keeps a narrow copy of each short search text in an index, for counts

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 13:00:00

A capped count of a common term beside a common metadata pair ("order" and team=team-2 at a
million rows: about 410,000 and 250,000 completions, 103,000 together) decides about 25,000
texts to find 10,001 matches. Each was read from the wide ``completions`` row (about 6 a page: 16,500
pages for those, more than PostgreSQL's default 128 MB of shared buffers keeps), 82 ms.

This B-tree index keeps ``search_text`` beside ``seq`` for every live completion whose text
fits an index entry (2,000 bytes; 515 at most in the bench's conversations), about 25 to a
page, so that the count reads only the index: an index-only scan merged with the metadata
index in ``seq`` order (``store.completions._count_short_texts_first``). PostgreSQL keeps it in
the transaction of every write, as it keeps every index: no trigger. A second, small index
holds the longer texts, counted after the short ones and only while below the cap; two
statistics objects tell the planner how many texts are short and how many completions hold a
metadata pair.

An index-only scan skips the table only for pages its visibility map marks all-visible, which
VACUUM sets (autovacuum does, after inserts too since PostgreSQL 13); rows written since are
read from the table. SQLite counts from its FTS5 tables, which decide a match alone: nothing
to add there.
"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

SHORT = "ix_completions_seq_search_text"
LONG = "ix_completions_long_search_text"
# Their predicates are written exactly as store.search.short_text writes the count's conditions,
# so that the planner proves which index holds the rows a count asks for.
CREATE = [
    f"CREATE INDEX {SHORT} ON completions (seq) INCLUDE (search_text) WHERE deleted IS false AND octet_length(search_text) <= 2000",
    # The longer texts, few or none: their count reads just them, not every row of a common pair.
    f"CREATE INDEX {LONG} ON completions (seq) WHERE deleted IS false AND octet_length(search_text) > 2000",
    # What the planner needs to choose well: how many texts are short (without it, it guesses a
    # third, and ANDs a bitmap of the whole short index into a CJK word's), and how many
    # completions hold a metadata pair (a value implies its key: 83,000 guessed for team=team-2's
    # 250,000, which made it hash every match of "order" instead of merging in seq order).
    "CREATE STATISTICS completions_search_text_bytes ON (octet_length(search_text)) FROM completions",
    "CREATE STATISTICS completion_metadata_key_value (dependencies, mcv) ON key, value FROM completion_metadata",
]
DROP = [
    "DROP STATISTICS IF EXISTS completion_metadata_key_value",
    "DROP STATISTICS IF EXISTS completions_search_text_bytes",
    f"DROP INDEX IF EXISTS {LONG}",
    f"DROP INDEX IF EXISTS {SHORT}",
]
ANALYZE = ["ANALYZE completions", "ANALYZE completion_metadata"]


def index_statements(dialect: str, *, up: bool) -> list[str]:
    """Return the SQL that builds (or drops) what this migration adds; bench/ seeds reuse it."""
    if dialect == "sqlite":
        return []
    return CREATE if up else DROP


def _postgresql(statements: list[str]) -> None:
    # Building an index over a large table takes longer than the app's statement timeout allows a request.
    op.execute("SET LOCAL statement_timeout = 0")
    for statement in statements:
        op.execute(statement)


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        _postgresql([*index_statements("postgresql", up=True), *ANALYZE])


def downgrade():
    if op.get_bind().dialect.name != "sqlite":
        _postgresql(index_statements("postgresql", up=False))
