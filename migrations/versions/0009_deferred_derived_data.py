"""deferred derived data: a batch write may keep the derived data of its inserts itself, per batch

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 10:10:00

The INSERT triggers that keep derived data row by row (the SQLite search tables of 0004, the
metadata pair counts of 0005, the rollup of 0007) stand aside while the writing transaction
has deferred them: on SQLite while ``derived_data_deferred`` holds a row (only the writing
transaction can see it: it inserts and deletes it before it commits), on PostgreSQL while the
transaction-local setting ``completion_store.defer_derived_data`` is ``on``. The batch then
counts and indexes its inserted rows in one statement each, in the same transaction
(``webapp/store/derived.py``). Every other write, and every UPDATE and DELETE, keeps its
triggers exactly as before. PostgreSQL's search indexes are indexes: nothing to defer.
"""
import re

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

SQLITE_TABLE = "derived_data_deferred"
SQLITE_DEFERRED = f"EXISTS (SELECT 1 FROM {SQLITE_TABLE})"
# The INSERT triggers that stand aside: SQLite triggers are made again from their own text.
SQLITE_TRIGGERS = ("completions_search_insert", "completion_rollup_insert", "metadata_pair_count")

POSTGRES_DEFERRED = "current_setting('completion_store.defer_derived_data', true) IS DISTINCT FROM 'on'"
POSTGRES_UP = [
    "DROP TRIGGER completion_rollup_insert_delete ON completions",
    "CREATE TRIGGER completion_rollup_insert AFTER INSERT ON completions "
    f"FOR EACH ROW WHEN ({POSTGRES_DEFERRED}) EXECUTE FUNCTION completion_rollup_trigger()",
    "CREATE TRIGGER completion_rollup_delete AFTER DELETE ON completions FOR EACH ROW EXECUTE FUNCTION completion_rollup_trigger()",
    "DROP TRIGGER metadata_pair_count ON completion_metadata",
    "CREATE TRIGGER metadata_pair_count BEFORE INSERT ON completion_metadata "
    f"FOR EACH ROW WHEN ({POSTGRES_DEFERRED}) EXECUTE FUNCTION metadata_pair_count()",
    "CREATE TRIGGER metadata_pair_recount BEFORE UPDATE OR DELETE ON completion_metadata "
    "FOR EACH ROW EXECUTE FUNCTION metadata_pair_count()",
]
POSTGRES_DOWN = [
    "DROP TRIGGER metadata_pair_recount ON completion_metadata",
    "DROP TRIGGER metadata_pair_count ON completion_metadata",
    "CREATE TRIGGER metadata_pair_count BEFORE INSERT OR UPDATE OR DELETE ON completion_metadata "
    "FOR EACH ROW EXECUTE FUNCTION metadata_pair_count()",
    "DROP TRIGGER completion_rollup_delete ON completions",
    "DROP TRIGGER completion_rollup_insert ON completions",
    "CREATE TRIGGER completion_rollup_insert_delete AFTER INSERT OR DELETE ON completions "
    "FOR EACH ROW EXECUTE FUNCTION completion_rollup_trigger()",
]

# Where a trigger's text says when it fires: "... ON table [WHEN condition] BEGIN".
_HEAD = re.compile(r"^(?P<head>.*?\bON\s+\w+)(?:\s+WHEN\s+(?P<when>.*?))?\s+BEGIN\b", re.IGNORECASE | re.DOTALL)


def _with_condition(sql: str, *, deferrable: bool) -> str:
    """Return a trigger's CREATE text that stands aside while deferred (or, not ``deferrable``, no longer does)."""
    head = _HEAD.match(sql)
    if head is None:
        raise RuntimeError(f"unexpected trigger text: {sql[:200]}")
    conditions = [head["when"]] if head["when"] else []
    standing_aside = f"NOT {SQLITE_DEFERRED}"
    if deferrable:
        conditions.append(standing_aside)
    elif conditions and conditions[-1].endswith(f"AND {standing_aside}"):
        conditions[-1] = conditions[-1].removesuffix(f" AND {standing_aside}")
    elif conditions == [standing_aside]:
        conditions = []
    when = f" WHEN {' AND '.join(conditions)}" if conditions else ""
    return f"{head['head']}{when} BEGIN{sql[head.end():]}"


def _remake_sqlite_triggers(*, deferrable: bool) -> None:
    connection = op.get_bind()
    for name in SQLITE_TRIGGERS:
        sql = connection.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"), {"name": name}).scalar_one()
        op.execute(f"DROP TRIGGER {name}")
        op.execute(_with_condition(sql, deferrable=deferrable))


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        # A row present means "deferred", and only the transaction that wrote it ever sees one.
        op.execute(f"CREATE TABLE {SQLITE_TABLE} (deferred INTEGER NOT NULL)")
        _remake_sqlite_triggers(deferrable=True)
    else:
        for statement in POSTGRES_UP:
            op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        _remake_sqlite_triggers(deferrable=False)
        op.execute(f"DROP TABLE {SQLITE_TABLE}")
    else:
        for statement in POSTGRES_DOWN:
            op.execute(statement)
