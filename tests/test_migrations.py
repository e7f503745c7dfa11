"""The Alembic migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from webapp import validation
from webapp.config import normalize_database_url
from webapp.extensions import db
from webapp.models import is_hand_made

from .helpers import migrate_database, scratch_database


def test_migrated_schema_matches_the_models(app) -> None:
    with db.engine.connect() as connection:
        # The search indexes (FTS5 tables, GIN indexes) and the deferral mark are made by hand in the migrations.
        include = lambda name, type_, _parents: not is_hand_made(name)  # noqa: E731
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include})
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def test_list_queries_have_their_indexes(app) -> None:
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(db.engine).get_indexes("completions")}
    assert indexes["ix_completions_created_seq"] == ["created", "seq"]
    assert indexes["ix_completions_model_created_seq"] == ["model", "created", "seq"]
    meta = {ix["name"]: ix["column_names"] for ix in inspect(db.engine).get_indexes("completion_metadata")}
    assert meta["ix_completion_metadata_key_value"] == ["key", "value", "completion_seq"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_stored_ids_that_break_the_id_rule_are_renamed_by_the_migration(backend: str, tmp_path: Path, capfd) -> None:
    """Before the id rule an import could store ``imp/messages``, whose URL is ``imp``'s message
    list: the migration renames every such id (history too) and says so."""
    with scratch_database(backend, tmp_path) as url:
        migrate_database(url, "0001")
        engine = sa.create_engine(normalize_database_url(url))
        old_ids = ["imp", "imp/messages", "imp_messages", "has space", "tab\there", "ok-id"]
        with engine.begin() as conn:
            for seq, cid in enumerate(old_ids, start=1):
                conn.execute(
                    sa.text("INSERT INTO completions (seq, id, created, model, deleted, version, updated_at) "
                            "VALUES (:seq, :id, 1, 'm', :deleted, 1, CURRENT_TIMESTAMP)"),
                    {"seq": seq, "id": cid, "deleted": False},
                )
            conn.execute(
                sa.text("INSERT INTO metadata_changes (completion_id, changed_at, actor, before, after) "
                        "VALUES ('imp/messages', CURRENT_TIMESTAMP, 'import', '{}', '{\"k\": \"v\"}')")
            )
        migrate_database(url)
        with engine.connect() as conn:
            ids = list(conn.scalars(sa.text("SELECT id FROM completions ORDER BY seq")))
            history = list(conn.scalars(sa.text("SELECT completion_id FROM metadata_changes")))
        engine.dispose()
    assert ids[0] == "imp" and ids[2] == "imp_messages" and ids[4:] == ["tab_here", "ok-id"]
    assert ids[1].startswith("imp_messages-") and ids[3] == "has_space"
    assert all(validation.completion_id_fault(cid) is None for cid in ids) and len(set(ids)) == 6
    assert history == [ids[1]]
    output = capfd.readouterr().out
    assert f"Renamed completion 'imp/messages' to '{ids[1]}'" in output and "'has space'" in output
