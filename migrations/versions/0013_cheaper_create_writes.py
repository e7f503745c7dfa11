"""cheaper create writes: SQLite's search tables and metadata table write fewer pages; the bulk-change history index holds bulk changes only

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 20:10:00

Every ``store: true`` create writes its completion, its metadata and history rows, and what
triggers derive from them, in one transaction: on SQLite 23 pages a commit (counted from the
WAL over 40 creates), each one written to the WAL and, for the FTS5 tables, flushed at commit.
Some of those pages hold nothing any query reads:

- The trigram table ``completions_search`` kept its own copy of every search text (its
  ``content`` table), which only the rare test of a one- or two-letter term read. It becomes
  contentless (``content=''``): such a term is tested on ``completions.search_text`` instead
  (``store.search``), and the triggers remove a completion's text with FTS5's ``delete``
  command, given the very values they indexed (FTS5 refuses a wrong one as a malformed index,
  never silently). Its document sizes stay (a contentless table needs them to list its rows).
- The gram table ``completions_grams`` (external content) took a document for every
  completion, also one whose text has no CJK letters and so no gram words (most of them), and
  a size record for each, which only ranking functions read (no query ranks). It is remade with
  ``columnsize=0`` and takes only texts with gram words; the triggers write it only then.
- ``completion_metadata`` was a rowid table with its primary key (``completion_seq``, ``key``)
  in a second B-tree beside it. It becomes a ``WITHOUT ROWID`` table keyed by that primary key:
  one B-tree less to write, and the same lookups.
- ``ix_metadata_changes_batch`` (``batch_id``, ``id``) held an entry for every history row,
  though only a bulk change sets ``batch_id`` and only its undo looks one up (``batch_id = ?``,
  which a partial index serves). It becomes partial: ``WHERE batch_id IS NOT NULL``. Both backends.

A create now writes 18 pages on SQLite. The trigram table is refilled from ``completions``
(minutes at a million rows: README, Production), the gram and metadata tables are copied.
Going down gives back the tables as they were and 0010's triggers to the letter (each
trigger is rewritten in place, not written anew).
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

# --- Both backends ------------------------------------------------------------------------------

BATCH_INDEX = {
    True: "CREATE INDEX ix_metadata_changes_batch ON metadata_changes (batch_id, id) WHERE batch_id IS NOT NULL",
    False: "CREATE INDEX ix_metadata_changes_batch ON metadata_changes (batch_id, id)",
}
DROP_BATCH_INDEX = "DROP INDEX ix_metadata_changes_batch"

# --- SQLite: the search tables ------------------------------------------------------------------

TRIGRAM_TABLE = {
    True: "CREATE VIRTUAL TABLE completions_search USING fts5(search_text, search_grams, tokenize='trigram case_sensitive 1', content='')",
    False: "CREATE VIRTUAL TABLE completions_search USING fts5(search_text, search_grams, tokenize='trigram case_sensitive 1')",
}
TRIGRAM_FILL = (
    "INSERT INTO completions_search(rowid, search_text, search_grams) "
    "SELECT seq, search_text, ' ' || search_grams || ' ' FROM completions WHERE search_text IS NOT NULL"
)
GRAMS_TABLE = {
    True: "CREATE VIRTUAL TABLE completions_grams USING fts5(search_grams, content='completions', content_rowid='seq', "
    "tokenize='unicode61 remove_diacritics 0', detail='none', columnsize=0)",
    False: "CREATE VIRTUAL TABLE completions_grams USING fts5(search_grams, content='completions', content_rowid='seq', "
    "tokenize='unicode61 remove_diacritics 0', detail='none')",
}
GRAMS_FILLS = {
    True: "INSERT INTO completions_grams(rowid, search_grams) SELECT seq, search_grams FROM completions "
    "WHERE search_text IS NOT NULL AND search_grams <> ''",
    False: "INSERT INTO completions_grams(rowid, search_grams) SELECT seq, search_grams FROM completions WHERE search_text IS NOT NULL",
}
# Each search trigger's writes before (0004, 0009, 0010) and after this migration. A contentless
# table forgets a text only by the ``delete`` command, given exactly what was indexed (a row
# holds a text in the trigram table when its search_text is not null).
_FORGET_TEXT = "INSERT INTO completions_search(completions_search, rowid, search_text, search_grams) "
_OLD_TEXT = "'delete', old.seq, old.search_text, ' ' || old.search_grams || ' '"
SEARCH_WRITES = {
    "completions_search_insert": [
        ("VALUES (new.seq, new.search_grams);", "SELECT new.seq, new.search_grams WHERE new.search_grams <> '';"),
    ],
    "completions_search_delete": [
        ("DELETE FROM completions_search WHERE rowid = old.seq;", f"{_FORGET_TEXT}VALUES ({_OLD_TEXT});"),
        ("VALUES ('delete', old.seq, old.search_grams);", "SELECT 'delete', old.seq, old.search_grams WHERE old.search_grams <> '';"),
    ],
    "completions_search_update": [
        ("DELETE FROM completions_search WHERE rowid = old.seq;", f"{_FORGET_TEXT}SELECT {_OLD_TEXT} WHERE old.search_text IS NOT NULL;"),
        (
            "SELECT 'delete', old.seq, old.search_grams WHERE old.search_text IS NOT NULL;",
            "SELECT 'delete', old.seq, old.search_grams WHERE old.search_text IS NOT NULL AND old.search_grams <> '';",
        ),
        (
            "SELECT new.seq, new.search_grams WHERE new.search_text IS NOT NULL;",
            "SELECT new.seq, new.search_grams WHERE new.search_text IS NOT NULL AND new.search_grams <> '';",
        ),
    ],
}


def _rewritten(sql: str, name: str, *, up: bool) -> str:
    """Return trigger ``name``'s CREATE text with this migration's writes (``up``) or 0010's."""
    for before, after in SEARCH_WRITES[name]:
        old, new = (before, after) if up else (after, before)
        if sql.count(old) != 1:
            raise RuntimeError(f"unexpected text of trigger {name}: {sql[:300]}")
        sql = sql.replace(old, new)
    return sql


def sqlite_statements(triggers: dict[str, str], *, up: bool) -> list[str]:
    """Return the SQL that remakes both search tables (refilled) and the search ``triggers``
    (name -> their CREATE text) as this migration has them (``up``) or as 0010 left them."""
    return [
        *(f"DROP TRIGGER {name}" for name in triggers),
        "DROP TABLE completions_search",
        "DROP TABLE completions_grams",
        TRIGRAM_TABLE[up],
        TRIGRAM_FILL,
        GRAMS_TABLE[up],
        GRAMS_FILLS[up],
        *(_rewritten(sql, name, up=up) for name, sql in triggers.items()),
    ]


def index_statements(dialect: str, *, up: bool, earlier: list[str] | None = None) -> list[str]:
    """Return the SQL that builds the search tables as this migration has them; bench/ seeds reuse it.

    ``earlier``: the statements the earlier migrations' ``index_statements`` gave (a seed runs
    them first), whose SQLite search triggers this one rewrites. Dropping needs nothing:
    0004's statements drop the tables and the triggers. (The metadata table and the batch index
    are the schema's, made by the migration itself.)
    """
    if dialect != "sqlite" or not up:
        return []
    made = earlier or []
    # The last CREATE of each trigger (0010 made them again).
    triggers = {name: [s for s in made if s.startswith(f"CREATE TRIGGER {name} ")][-1] for name in SEARCH_WRITES}
    return sqlite_statements(triggers, up=True)


# --- SQLite: the metadata table -----------------------------------------------------------------

_METADATA_COLUMNS = (
    "completion_seq INTEGER NOT NULL, \"key\" VARCHAR(64) NOT NULL, value VARCHAR(512) NOT NULL, "
    "PRIMARY KEY (completion_seq, \"key\"), FOREIGN KEY(completion_seq) REFERENCES completions (seq) ON DELETE CASCADE"
)
METADATA_TABLE = {
    True: f"CREATE TABLE completion_metadata_new ({_METADATA_COLUMNS}) WITHOUT ROWID",
    False: f"CREATE TABLE completion_metadata_new ({_METADATA_COLUMNS})",
}


def metadata_statements(triggers: list[str], *, up: bool) -> list[str]:
    """Return the SQL that copies ``completion_metadata`` into a table without (``up``) or with rowids,
    its index and its pair-count ``triggers`` (their CREATE texts) made again."""
    return [
        METADATA_TABLE[up],
        "INSERT INTO completion_metadata_new (completion_seq, \"key\", value) SELECT completion_seq, \"key\", value FROM completion_metadata",
        # Its index and triggers go with it.
        "DROP TABLE completion_metadata",
        "ALTER TABLE completion_metadata_new RENAME TO completion_metadata",
        "CREATE INDEX ix_completion_metadata_key_value ON completion_metadata (\"key\", value, completion_seq)",
        *triggers,
    ]


def _sqlite(*, up: bool) -> None:
    connection = op.get_bind()

    def trigger_sql(condition: str, **params: str) -> list[tuple[str, str]]:
        query = f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND {condition} ORDER BY name"
        return [tuple(row) for row in connection.execute(sa.text(query), params)]

    search = dict(trigger_sql("name IN ('completions_search_insert', 'completions_search_delete', 'completions_search_update')"))
    for statement in sqlite_statements({name: search[name] for name in SEARCH_WRITES}, up=up):
        op.execute(statement)
    pair_counts = [sql for _name, sql in trigger_sql("tbl_name = :table", table="completion_metadata")]
    # The planner's statistics of the table go with it: counted again when it had some (ANALYZE
    # was run), so that every plan over it stays as it was. A store never analyzed stays so.
    analyzed = connection.execute(
        sa.text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
    ).scalar_one() and connection.execute(sa.text("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'completion_metadata'")).scalar_one()
    for statement in metadata_statements(pair_counts, up=up):
        op.execute(statement)
    if analyzed:
        op.execute("ANALYZE completion_metadata")


def _remake(*, up: bool) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite(up=up)
    op.execute(DROP_BATCH_INDEX)
    op.execute(BATCH_INDEX[up])


def upgrade():
    _remake(up=True)


def downgrade():
    _remake(up=False)
