"""The Alembic migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from webapp.extensions import db
from webapp.models import is_search_index


def test_migrated_schema_matches_the_models(app) -> None:
    with db.engine.connect() as connection:
        # The search indexes are made by hand in the migration (FTS5 tables, GIN indexes).
        include = lambda name, type_, _parents: not is_search_index(name)  # noqa: E731
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include})
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def test_list_queries_have_their_indexes(app) -> None:
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(db.engine).get_indexes("completions")}
    assert indexes["ix_completions_created_seq"] == ["created", "seq"]
    assert indexes["ix_completions_model_created_seq"] == ["model", "created", "seq"]
    meta = {ix["name"]: ix["column_names"] for ix in inspect(db.engine).get_indexes("completion_metadata")}
    assert meta["ix_completion_metadata_key_value"] == ["key", "value", "completion_seq"]
