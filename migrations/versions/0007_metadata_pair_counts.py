"""metadata pair counts: how often two metadata pairs meet, kept by triggers

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 07:30:00

Each completion_metadata row inserted counts once with every other pair its completion
already holds, and uncounts likewise when deleted. On PostgreSQL the triggers run BEFORE
each row, since those see the rows a statement handled before (AFTER row triggers of a
multi-row statement would all see every row, and count each meeting twice).
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# The pairs a completion_metadata row (NEW or OLD) forms with the other pairs of its completion.
_MEETINGS = """
    SELECT CASE WHEN m.key < {row}.key THEN m.key ELSE {row}.key END AS key_a,
           CASE WHEN m.key < {row}.key THEN m.value ELSE {row}.value END AS value_a,
           CASE WHEN m.key < {row}.key THEN {row}.key ELSE m.key END AS key_b,
           CASE WHEN m.key < {row}.key THEN {row}.value ELSE m.value END AS value_b
    FROM completion_metadata m WHERE m.completion_seq = {row}.completion_seq AND m.key <> {row}.key
"""
_COUNT = f"""
    INSERT INTO metadata_pair_counts (key_a, value_a, key_b, value_b, count)
    SELECT key_a, value_a, key_b, value_b, 1 FROM ({_MEETINGS.format(row='NEW')}) AS meetings WHERE true
    ON CONFLICT (key_a, value_a, key_b, value_b) DO UPDATE SET count = metadata_pair_counts.count + 1
"""
_UNCOUNT = f"""
    UPDATE metadata_pair_counts SET count = count - 1
    WHERE (key_a, value_a, key_b, value_b) IN ({_MEETINGS.format(row='OLD')})
"""
# Existing rows, counted in one pass (also how bench/ seeds count after a bulk load).
REBUILD = [
    "DELETE FROM metadata_pair_counts",
    """INSERT INTO metadata_pair_counts (key_a, value_a, key_b, value_b, count)
       SELECT a.key, a.value, b.key, b.value, count(*) FROM completion_metadata a
       JOIN completion_metadata b ON b.completion_seq = a.completion_seq AND a.key < b.key
       GROUP BY a.key, a.value, b.key, b.value""",
]
SQLITE_UP = [
    f"CREATE TRIGGER metadata_pair_count AFTER INSERT ON completion_metadata BEGIN {_COUNT}; END",
    f"CREATE TRIGGER metadata_pair_uncount AFTER DELETE ON completion_metadata BEGIN {_UNCOUNT}; END",
    f"CREATE TRIGGER metadata_pair_recount AFTER UPDATE ON completion_metadata BEGIN {_UNCOUNT}; {_COUNT}; END",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS metadata_pair_recount",
    "DROP TRIGGER IF EXISTS metadata_pair_uncount",
    "DROP TRIGGER IF EXISTS metadata_pair_count",
]
POSTGRESQL_UP = [
    # Building an index over a large table takes longer than the app's statement timeout allows a request.
    "SET LOCAL statement_timeout = 0",
    f"""CREATE OR REPLACE FUNCTION metadata_pair_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            {_UNCOUNT};
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            {_COUNT};
            RETURN NEW;
        END IF;
        RETURN OLD;
    END $$""",
    "CREATE TRIGGER metadata_pair_count BEFORE INSERT OR UPDATE OR DELETE ON completion_metadata FOR EACH ROW EXECUTE FUNCTION metadata_pair_count()",
]
POSTGRESQL_DOWN = ["DROP TRIGGER IF EXISTS metadata_pair_count ON completion_metadata", "DROP FUNCTION IF EXISTS metadata_pair_count()"]


def index_statements(dialect: str, *, up: bool) -> list[str]:
    """Return the SQL that creates (with the counts of existing rows) or drops the triggers; bench/ seeds reuse it."""
    if dialect == "sqlite":
        return [*SQLITE_UP, *REBUILD] if up else SQLITE_DOWN
    return [*POSTGRESQL_UP, *REBUILD] if up else POSTGRESQL_DOWN


def upgrade():
    op.create_table('metadata_pair_counts',
    sa.Column('key_a', sa.String(length=64), nullable=False),
    sa.Column('value_a', sa.String(length=512), nullable=False),
    sa.Column('key_b', sa.String(length=64), nullable=False),
    sa.Column('value_b', sa.String(length=512), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key_a', 'value_a', 'key_b', 'value_b')
    )
    for statement in index_statements(op.get_bind().dialect.name, up=True):
        op.execute(statement)


def downgrade():
    for statement in index_statements(op.get_bind().dialect.name, up=False):
        op.execute(statement)
    op.drop_table('metadata_pair_counts')
