"""filter words in the search index: PostgreSQL's GIN index over the search text and grams also holds the model and metadata pairs

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 18:00:00

A search beside a metadata pair was answered by two structures: the GIN index found the
term's completions, and ``completion_metadata`` (another table) held the pair. PostgreSQL
could only read every candidate of the term from its wide row and check the pair there
(退款 beside team=team-2 at a million rows: 60,950 candidates, 53,648 table pages read for
a capped count, 214 ms).

A new column, ``filter_words``, holds the completion's filter words: one for its model and
one per metadata pair, each written so that none can be read as another (``=`` and the
model, or the key's length, ``:``, the key and the value: ``4:teamteam-2``). PostgreSQL
computes it from the row's own ``model`` and ``metadata`` (a generated column over an
IMMUTABLE SQL function), so every write keeps it, in its own transaction, with no new code:
a metadata change rewrites it. The GIN index over the search text and the gram words gets it
as a third column, so that the terms, the model and the pairs are intersected inside one
scan, which hands on only the completions that hold them all: 15 ms for that count.

The words are a stored column, not an expression of the index, because PostgreSQL checks a
trigram candidate again on its row, every condition of the scan with it: computing the words
there took 6 us a row (json_each_text), reading them takes next to nothing.

The index of short search texts beside their seq (migration 0011) is remade as
``ix_completions_created_seq_search_text``: keyed by (created, seq), so that a date range is a
range of it, and keeping the words too, so that a capped count of a common term beside a
common pair, which walks that index in order, tests the pair on the index entry before the
text: no merge with the metadata index, and the substring test only where the pair is held
("order" beside team=team-2 at a million rows: 53 ms, 36 ms; "order" within one day: 100 ms,
when every candidate's row was read for its date). An index entry holds about 2,700 bytes at
most, so the index now keeps the completions whose text takes at most 1,800 bytes and whose
metadata (as JSON) and model together at most 600 (their words take no more than those); its
partner ``ix_completions_long_search_text`` keeps the others. ``store.search.short_text`` writes both predicates exactly.

Adding a stored generated column rewrites ``completions`` (about a minute at a million
rows on a 2-core machine, during which the table is locked), and the index takes another.
SQLite answers these from its FTS5 tables and ``completion_metadata``: nothing to add there.
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

FUNCTION = "completion_filter_words"
COLUMN = "filter_words"
INDEX = "ix_completions_search_words"
# A tombstone's metadata is JSON null (no words but its model's); json_each_text refuses a non-object.
CREATE_FUNCTION = f"""
CREATE FUNCTION {FUNCTION}(model text, metadata json) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ARRAY['=' || model] || CASE WHEN json_typeof(metadata) = 'object' THEN
        ARRAY(SELECT length(key) || ':' || key || value FROM json_each_text(metadata)) ELSE '{{}}'::text[] END
$$
"""
ADD_COLUMN = f"ALTER TABLE completions ADD COLUMN {COLUMN} text[] GENERATED ALWAYS AS ({FUNCTION}(model, metadata)) STORED"
DROP_COLUMN = [f"ALTER TABLE completions DROP COLUMN {COLUMN}", f"DROP FUNCTION {FUNCTION}(text, json)"]
CREATE = f"CREATE INDEX {INDEX} ON completions USING gin (search_text gin_trgm_ops, string_to_array(search_grams, ' '), {COLUMN})"
DROP = f"DROP INDEX IF EXISTS {INDEX}"
# 0011's two indexes of search texts, remade: the short ones keep the words beside the text, and
# the size of the metadata and the model joins the predicates (as store.search.short_text writes them).
SHORT = "ix_completions_created_seq_search_text"
SHORT_0011 = "ix_completions_seq_search_text"
LONG = "ix_completions_long_search_text"
FILTER_SIZE = "(octet_length(coalesce(metadata::text, '')) + octet_length(model))"
FITS = f"octet_length(search_text) <= 1800 AND {FILTER_SIZE} <= 600"
TOO_LONG = f"octet_length(search_text) > 1800 OR {FILTER_SIZE} > 600"
FILTER_BYTES = "completions_filter_bytes"
CREATE_SHORTS = [
    f"CREATE INDEX {SHORT} ON completions (created, seq) INCLUDE (search_text, {COLUMN}) WHERE deleted IS false AND {FITS}",
    f"CREATE INDEX {LONG} ON completions (seq) WHERE deleted IS false AND ({TOO_LONG})",
    # How many completions' metadata and model fit (without it the planner guesses a third: see 0011).
    f"CREATE STATISTICS {FILTER_BYTES} ON {FILTER_SIZE} FROM completions",
]
CREATE_SHORTS_0011 = [
    f"CREATE INDEX {SHORT_0011} ON completions (seq) INCLUDE (search_text) WHERE deleted IS false AND octet_length(search_text) <= 2000",
    f"CREATE INDEX {LONG} ON completions (seq) WHERE deleted IS false AND octet_length(search_text) > 2000",
]
DROP_SHORTS = [
    f"DROP STATISTICS IF EXISTS {FILTER_BYTES}", f"DROP INDEX IF EXISTS {SHORT}", f"DROP INDEX IF EXISTS {SHORT_0011}", f"DROP INDEX IF EXISTS {LONG}"
]
# 0010's index, which this one replaces (a condition on its two columns is served as well here).
CREATE_0010 = "CREATE INDEX ix_completions_search_text_grams ON completions USING gin (search_text gin_trgm_ops, string_to_array(search_grams, ' '))"
DROP_0010 = "DROP INDEX IF EXISTS ix_completions_search_text_grams"
# Statistics for the new column (the planner's estimate of how many completions hold a word).
ANALYZE = "ANALYZE completions"


def index_statements(dialect: str, *, up: bool) -> list[str]:
    """Return the SQL that builds (or drops) what this migration adds; bench/ seeds reuse it."""
    if dialect == "sqlite":
        return []
    return [CREATE, DROP_0010, *DROP_SHORTS, *CREATE_SHORTS] if up else [DROP, f"DROP STATISTICS IF EXISTS {FILTER_BYTES}"]


def _postgresql(statements: list[str]) -> None:
    # Building an index over a large table takes longer than the app's statement timeout allows a request.
    op.execute("SET LOCAL statement_timeout = 0")
    for statement in statements:
        op.execute(statement)


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        _postgresql([CREATE_FUNCTION, ADD_COLUMN, *index_statements("postgresql", up=True), ANALYZE])


def downgrade():
    if op.get_bind().dialect.name != "sqlite":
        _postgresql([CREATE_0010, DROP, *DROP_SHORTS, *CREATE_SHORTS_0011, *DROP_COLUMN, ANALYZE])
