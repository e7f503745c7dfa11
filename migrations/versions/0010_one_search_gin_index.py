"""one search GIN index: PostgreSQL's trigram and gram indexes become the two columns of one

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 10:40:00

A search for a long term and a short CJK word ("order 发票") used both GIN indexes of 0004:
each built a bitmap of all its matches (401,400 and 116,150 at a million rows) before
PostgreSQL intersected them (70 ms of the count's 77). One GIN index over both columns
intersects the terms' posting lists inside one index scan, skipping through the longer
ones (11 ms). A condition on one column alone is served as before: GIN keeps each
column's keys apart, so a one-column search reads the same posting lists. Nothing on
SQLite, whose FTS5 tables stay as 0004 made them.
"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

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


def index_statements(dialect: str, *, up: bool) -> list[str]:
    """Return the SQL that builds (or drops) this migration's index; bench/ seeds reuse it after 0004's."""
    if dialect == "sqlite":
        return []
    return [CREATE, *DROP_0004] if up else [DROP]


def _run(statements: list[str]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    # Building an index over a large table takes longer than the app's statement timeout allows a request.
    op.execute("SET LOCAL statement_timeout = 0")
    for statement in statements:
        op.execute(statement)


# The planner's statistics for the index's expression (the gram words), which a new expression
# index lacks until the next ANALYZE: without them it misjudges how rare a CJK word is.
ANALYZE = "ANALYZE completions"


def upgrade():
    _run([*index_statements("postgresql", up=True), ANALYZE])


def downgrade():
    _run([*CREATE_0004, DROP, ANALYZE])
