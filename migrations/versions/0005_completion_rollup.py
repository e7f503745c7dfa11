"""completion rollup: completions and tokens per hour and per day, per model, kept by triggers

The overview reads this table instead of a million rows. Database triggers keep it, so
every path that writes ``completions`` (the ORM, a Core batch import, a purge, a hand-typed
SQL statement) moves it in the same transaction and no Python write path can forget it.
A completion counts while it is live (``deleted`` false): a delete (tombstone), an upsert
that changes its model, time or usage, a resurrection and a physical DELETE each move the
counts from the old values to the new ones.

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

HOUR, DAY = 3600, 86400

# --- SQLite -------------------------------------------------------------------------------
# A token count is counted when it is a whole number from 0 to 999,999,999,999; anything
# else (missing, text, fractional, absurd) counts as 0. webapp/store/overview.py reads rows
# with the same rule, and a test rebuilds the rollup from the rows and compares.


def _sqlite_tokens(row: str, field: str) -> str:
    path = f"'$.usage.{field}'"
    # json_valid first: a body holding NaN (Python writes it) is no JSON to SQLite, and must not fail the write.
    return (
        f"CASE WHEN json_valid({row}.body) THEN (CASE WHEN json_type({row}.body, {path}) = 'integer' "
        f"AND json_extract({row}.body, {path}) BETWEEN 0 AND 999999999999 "
        f"THEN json_extract({row}.body, {path}) ELSE 0 END) ELSE 0 END"
    )


def _sqlite_start(row: str, span: int) -> str:
    # Floor, also for times before 1970 (% truncates towards zero).
    return f"{row}.created - ((({row}.created % {span}) + {span}) % {span})"


def _sqlite_add(row: str, sign: int) -> str:
    values = ", ".join(
        f"({span}, {_sqlite_start(row, span)}, {row}.model, {sign}, "
        f"{sign} * ({_sqlite_tokens(row, 'prompt_tokens')}), {sign} * ({_sqlite_tokens(row, 'completion_tokens')}))"
        for span in (HOUR, DAY)
    )
    statement = (
        "INSERT INTO completion_rollup (span, start, model, completions, prompt_tokens, completion_tokens) "
        f"VALUES {values} "
        "ON CONFLICT (span, start, model) DO UPDATE SET "
        "completions = completions + excluded.completions, "
        "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens;"
    )
    if sign < 0:
        statement += (
            f" DELETE FROM completion_rollup WHERE model = {row}.model AND completions = 0 AND ("
            + " OR ".join(f"(span = {span} AND start = {_sqlite_start(row, span)})" for span in (HOUR, DAY))
            + ");"
        )
    return statement


SQLITE_TRIGGERS = {
    "completion_rollup_insert": f"AFTER INSERT ON completions WHEN NOT NEW.deleted BEGIN {_sqlite_add('NEW', 1)} END",
    "completion_rollup_update_old": (
        "AFTER UPDATE OF deleted, created, model, body ON completions WHEN NOT OLD.deleted "
        f"BEGIN {_sqlite_add('OLD', -1)} END"
    ),
    "completion_rollup_update_new": (
        "AFTER UPDATE OF deleted, created, model, body ON completions WHEN NOT NEW.deleted "
        f"BEGIN {_sqlite_add('NEW', 1)} END"
    ),
    "completion_rollup_delete": f"AFTER DELETE ON completions WHEN NOT OLD.deleted BEGIN {_sqlite_add('OLD', -1)} END",
}

# --- PostgreSQL ---------------------------------------------------------------------------

POSTGRES_FUNCTIONS = [
    # The same rule as SQLite's: a whole number from 0 to 999,999,999,999, else 0.
    """
    CREATE FUNCTION completion_usage_count(value json) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
      SELECT CASE WHEN json_typeof(value) = 'number' AND value::text ~ '^[0-9]{1,12}$'
                  THEN value::text::bigint ELSE 0 END
    $$
    """,
    # PostgreSQL cannot read a json text holding \u0000 or a lone surrogate escape (anywhere, a
    # key included), although it stores one. Then the usage is read from a copy with those
    # escapes made U+FFFD (an escaped backslash before "u0000" stays valid JSON too). The
    # EXCEPTION block is a subtransaction, which no parallel plan may start: PARALLEL UNSAFE.
    r"""
    CREATE FUNCTION completion_usage_tokens(body json, field text) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE PARALLEL UNSAFE AS $$
    BEGIN
      RETURN completion_usage_count(body -> 'usage' -> field);
    EXCEPTION WHEN others THEN
      RETURN completion_usage_count(
        regexp_replace(body::text, '\\u(0000|[dD][89abcdefABCDEF][0-9a-fA-F]{2})', '\\ufffd', 'g')::json -> 'usage' -> field
      );
    END
    $$
    """,
    f"""
    CREATE FUNCTION completion_rollup_add(p_created bigint, p_model text, p_body json, p_sign integer) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
      prompt bigint := p_sign * completion_usage_tokens(p_body, 'prompt_tokens');
      reply bigint := p_sign * completion_usage_tokens(p_body, 'completion_tokens');
      hour_start bigint := p_created - mod(mod(p_created, {HOUR}) + {HOUR}, {HOUR});
      day_start bigint := p_created - mod(mod(p_created, {DAY}) + {DAY}, {DAY});
    BEGIN
      INSERT INTO completion_rollup AS r (span, start, model, completions, prompt_tokens, completion_tokens)
      VALUES ({HOUR}, hour_start, p_model, p_sign, prompt, reply), ({DAY}, day_start, p_model, p_sign, prompt, reply)
      ON CONFLICT (span, start, model) DO UPDATE SET
        completions = r.completions + EXCLUDED.completions,
        prompt_tokens = r.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = r.completion_tokens + EXCLUDED.completion_tokens;
      IF p_sign < 0 THEN
        DELETE FROM completion_rollup
        WHERE model = p_model AND completions = 0
          AND ((span = {HOUR} AND start = hour_start) OR (span = {DAY} AND start = day_start));
      END IF;
    END
    $$
    """,
    """
    CREATE FUNCTION completion_rollup_trigger() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP <> 'INSERT' THEN
        IF NOT OLD.deleted THEN
          PERFORM completion_rollup_add(OLD.created, OLD.model, OLD.body, -1);
        END IF;
      END IF;
      IF TG_OP <> 'DELETE' THEN
        IF NOT NEW.deleted THEN
          PERFORM completion_rollup_add(NEW.created, NEW.model, NEW.body, 1);
        END IF;
      END IF;
      RETURN NULL;
    END
    $$
    """,
]
POSTGRES_TRIGGERS = [
    "CREATE TRIGGER completion_rollup_insert_delete AFTER INSERT OR DELETE ON completions "
    "FOR EACH ROW EXECUTE FUNCTION completion_rollup_trigger()",
    "CREATE TRIGGER completion_rollup_update AFTER UPDATE OF deleted, created, model, body ON completions "
    "FOR EACH ROW EXECUTE FUNCTION completion_rollup_trigger()",
]


def _fill(dialect: str) -> str:
    """Return the statement that counts the completions already stored."""
    if dialect == "sqlite":
        prompt, reply = _sqlite_tokens("completions", "prompt_tokens"), _sqlite_tokens("completions", "completion_tokens")
    else:
        prompt, reply = "completion_usage_tokens(body, 'prompt_tokens')", "completion_usage_tokens(body, 'completion_tokens')"
    selects = " UNION ALL ".join(
        f"SELECT {span} AS span, created - (((created % {span}) + {span}) % {span}) AS start, model, "
        f"COUNT(*) AS completions, SUM({prompt}) AS prompt_tokens, SUM({reply}) AS completion_tokens "
        f"FROM completions WHERE NOT deleted GROUP BY 2, model"
        for span in (HOUR, DAY)
    )
    return (
        "INSERT INTO completion_rollup (span, start, model, completions, prompt_tokens, completion_tokens) "
        f"SELECT span, start, model, completions, prompt_tokens, completion_tokens FROM ({selects}) AS counted"
    )


def upgrade():
    op.create_table('completion_rollup',
    sa.Column('span', sa.Integer(), nullable=False),
    sa.Column('start', sa.BigInteger(), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('completions', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('span', 'start', 'model')
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    else:
        for statement in POSTGRES_FUNCTIONS + POSTGRES_TRIGGERS:
            op.execute(statement)
    op.execute(_fill(dialect))


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    else:
        op.execute("DROP TRIGGER completion_rollup_update ON completions")
        op.execute("DROP TRIGGER completion_rollup_insert_delete ON completions")
        op.execute("DROP FUNCTION completion_rollup_trigger()")
        op.execute("DROP FUNCTION completion_rollup_add(bigint, text, json, integer)")
        op.execute("DROP FUNCTION completion_usage_tokens(json, text)")
        op.execute("DROP FUNCTION completion_usage_count(json)")
    op.drop_table('completion_rollup')
