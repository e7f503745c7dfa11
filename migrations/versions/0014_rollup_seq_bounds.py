"""rollup seq bounds: each SQLite rollup bucket knows the least and greatest seq of its completions, so a date range narrows a search by seq

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26 23:40:00

SQLite's FTS5 search tables know a completion by its seq (their rowid) and nothing of its
time. A capped count of a search within dates therefore looked up each match's wide row for
its ``created``, newest match first, also every match newer than the range (``order``
within one day at a million rows: 137 ms on a fast machine, 209 ms on a slow one). FTS5 takes a
rowid range beside MATCH and seeks to it; what was missing is the range of seqs a span of time
holds.

The rollup (0007) already has a row per hour and per day and model, written by the same
trigger statement on every create. It gains ``first_seq`` and ``last_seq``: bounds of the
seqs of the completions counted in the bucket (``store.completions`` reads them). The INSERT
triggers widen them (``min``/``max`` with the new seq), in the row they already write, so a
create writes no page more. Nothing narrows them: a delete or a change of time leaves them
wide, which keeps them bounds (never tight, never wrong). NULL means unknown and stays so
(``min`` of NULL is NULL), and a count then does without them.

On PostgreSQL the columns stay NULL: its count of a search within dates walks the index of
short search texts by (created, seq) (0012) and needs no bounds.

The SQLite triggers are rewritten in place (exact string pairs), so the downgrade gives 0009's
text back to the letter. The fill reads ``ix_completions_model_created_seq`` alone (tombstones
included: bounds may be wider than needed).
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

COLUMNS = ("first_seq", "last_seq")
# The INSERT triggers' rollup statement (0007's text, through 0009) before and after this migration.
_TUPLE_END = "'$.usage.completion_tokens') ELSE 0 END) ELSE 0 END))"
_WIDEN = (
    "completion_tokens = completion_tokens + excluded.completion_tokens;",
    "completion_tokens = completion_tokens + excluded.completion_tokens, "
    "first_seq = min(first_seq, excluded.first_seq), last_seq = max(last_seq, excluded.last_seq);",
)
TRIGGER_WRITES = {
    name: [
        ("prompt_tokens, completion_tokens) VALUES", "prompt_tokens, completion_tokens, first_seq, last_seq) VALUES"),
        (f"{_TUPLE_END}, (86400,", f"{_TUPLE_END[:-1]}, NEW.seq, NEW.seq), (86400,"),
        (f"{_TUPLE_END} ON CONFLICT", f"{_TUPLE_END[:-1]}, NEW.seq, NEW.seq) ON CONFLICT"),
        _WIDEN,
    ]
    for name in ("completion_rollup_insert", "completion_rollup_update_new")
}

FILL = (
    "UPDATE completion_rollup SET "
    + ", ".join(
        f"{column} = (SELECT {aggregate}(c.seq) FROM completions AS c WHERE c.model = completion_rollup.model "
        "AND c.created >= completion_rollup.start AND c.created < completion_rollup.start + completion_rollup.span)"
        for column, aggregate in zip(COLUMNS, ("min", "max"))
    )
)


def _rewritten(sql: str, name: str, *, up: bool) -> str:
    """Return trigger ``name``'s CREATE text with this migration's writes (``up``) or without them."""
    for before, after in TRIGGER_WRITES[name]:
        old, new = (before, after) if up else (after, before)
        if sql.count(old) != 1:
            raise RuntimeError(f"unexpected text of trigger {name}: {sql[:300]}")
        sql = sql.replace(old, new)
    return sql


def _remake_triggers(*, up: bool) -> None:
    connection = op.get_bind()
    for name in TRIGGER_WRITES:
        sql = connection.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"), {"name": name}).scalar_one()
        op.execute(f"DROP TRIGGER {name}")
        op.execute(_rewritten(sql, name, up=up))


def upgrade():
    for column in COLUMNS:
        op.add_column("completion_rollup", sa.Column(column, sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        op.execute(FILL)
        _remake_triggers(up=True)


def downgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _remake_triggers(up=False)
    for column in reversed(COLUMNS):
        if sqlite:
            op.execute(f"ALTER TABLE completion_rollup DROP COLUMN {column}")
        else:
            op.drop_column("completion_rollup", column)
