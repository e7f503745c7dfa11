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


def test_postgresql_intersects_a_term_and_a_cjk_word_in_one_index_scan(tmp_path: Path) -> None:
    """Migration 0010: the trigram and gram columns are one GIN index, so "order 发票" is one index
    scan (no BitmapAnd of two whole bitmaps); a downgrade brings back 0004's two indexes."""
    from flask_migrate import downgrade

    from webapp import create_app
    from webapp.models import Completion
    from webapp.store import search

    with scratch_database("postgresql", tmp_path) as url:
        migrate_database(url, revision="0011")  # 0012 replaces the index with one of three columns
        app = create_app({"DATABASE_URL": url, "SECRET_KEY": "test", "TESTING": True})
        with app.app_context():
            definitions = dict(db.session.execute(sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'completions'")).all())
            assert "ix_completions_search_trgm" not in definitions and "ix_completions_search_grams" not in definitions
            assert "gin (search_text gin_trgm_ops, string_to_array(search_grams, ' '::text))" in definitions["ix_completions_search_text_grams"]
            # Only the statement's shape matters here: on a tiny table the planner would rather read it all.
            db.session.execute(sa.text("SET LOCAL enable_seqscan = off"))
            query = sa.select(Completion.seq).where(*search.index_conditions(db.session, ("order", "发票")))
            compiled = query.compile(dialect=db.engine.dialect)
            plan = "\n".join(row[0] for row in db.session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))
            db.session.rollback()
            assert "ix_completions_search_text_grams" in plan and "BitmapAnd" not in plan
            downgrade(revision="0009")
            names = set(db.session.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'completions'")).scalars())
            db.session.rollback()
            db.engine.dispose()
        assert {"ix_completions_search_trgm", "ix_completions_search_grams"} <= names and "ix_completions_search_text_grams" not in names


def test_postgresql_keeps_filter_words_and_intersects_them_with_the_terms_in_one_index_scan(tmp_path: Path) -> None:
    """Migration 0012: PostgreSQL keeps each completion's filter words (its model, its metadata
    pairs) in a generated column, through every write, and the GIN index holds them beside the
    terms, so that a search beside a model and a pair is one index scan; a downgrade gives
    back 0010's index and drops the column."""
    from flask_migrate import downgrade

    from webapp import create_app, store
    from webapp.models import Completion
    from webapp.store import search
    from webapp.validation import Filter

    def words(completion_id: str) -> list[str] | None:
        return db.session.scalar(sa.text("SELECT filter_words FROM completions WHERE id = :id"), {"id": completion_id})

    with scratch_database("postgresql", tmp_path) as url:
        migrate_database(url)
        app = create_app({"DATABASE_URL": url, "SECRET_KEY": "test", "TESTING": True})
        with app.app_context():
            reply = {"index": 0, "message": {"role": "assistant", "content": "Your order shipped"}, "finish_reason": "stop"}
            body = {"id": "cmpl-a", "created": 1, "model": "gpt-x", "choices": [reply]}
            store.save_completion(db.session, body=body, messages=[], metadata={"team": "red", "te": "amred"}, actor="t")
            db.session.commit()
            # The key's length keeps "team"="red" and "te"="amred" apart.
            assert sorted(words("cmpl-a")) == ["2:teamred", "4:teamred", "=gpt-x"]

            def found(model: str, metadata: dict[str, str]) -> int:
                # A search beside a model and pairs is decided by the words: no check of completion_metadata.
                return store.count_completions(db.session, filter=Filter(search=("order",), model=model, metadata=metadata))

            assert (found("gpt-x", {"team": "red"}), found("gpt-x", {"te": "amred"}), found("gpt-y", {"team": "red"})) == (1, 1, 0)
            assert found("gpt-x", {"te": "amre"}) == found("gpt-x", {"tea": "mred"}) == 0
            store.update_metadata(db.session, completion_id="cmpl-a", metadata={"team": "blue"}, actor="t")
            db.session.commit()
            assert sorted(words("cmpl-a")) == ["4:teamblue", "=gpt-x"]
            assert (found("gpt-x", {"team": "red"}), found("gpt-x", {"team": "blue"})) == (0, 1)
            # The largest metadata allowed (16 pairs of 64 + 512 characters) is kept (its words do not fit
            # the index of short texts, which must refuse no write), and found by a count along it.
            big = {f"k{i:02d}".ljust(64, "k"): f"v{i}".ljust(512, "é") for i in range(16)}
            store.save_completion(db.session, body={**body, "id": "cmpl-big"}, messages=[], metadata=big, actor="t")
            db.session.commit()
            assert len(words("cmpl-big")) == 17
            assert found("gpt-x", dict([next(iter(big.items()))])) == 1
            # So is a model name of 255 characters of three bytes each beside it, and a text of 1,800 bytes.
            wide = {**body, "id": "cmpl-wide", "model": "模" * 255, "choices": [{**reply, "message": {"role": "assistant", "content": "order " + "x" * 1794}}]}
            store.save_completion(db.session, body=wide, messages=[], metadata=dict(list(big.items())[:1]), actor="t")
            db.session.commit()
            assert found("模" * 255, dict(list(big.items())[:1])) == 1
            db.session.execute(sa.text("SET LOCAL enable_seqscan = off"))
            db.session.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
            walk = sa.select(Completion.seq).where(
                *search.filter_words(db.session, model="gpt-x", metadata={"team": "blue"}), search.exact_match(db.session, "order"),
                Completion.deleted.is_(False), search.short_text(short=True),
            ).order_by(Completion.created, Completion.seq)
            compiled = walk.compile(dialect=db.engine.dialect)
            plan = "\n".join(row[0] for row in db.session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))
            assert [*db.session.scalars(walk)] == [db.session.scalar(sa.text("SELECT seq FROM completions WHERE id = 'cmpl-a'"))]
            db.session.rollback()
            # The short texts' index keeps the words: the walk tests them there, reading no row.
            assert "Index Only Scan using ix_completions_created_seq_search_text" in plan and "filter_words @>" in plan
            store.delete_completion(db.session, completion_id="cmpl-a")
            db.session.commit()
            assert words("cmpl-a") == ["=gpt-x"]  # a tombstone's metadata is JSON null

            definitions = dict(db.session.execute(sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'completions'")).all())
            assert "ix_completions_search_text_grams" not in definitions
            assert "gin (search_text gin_trgm_ops, string_to_array(search_grams, ' '::text), filter_words)" in definitions["ix_completions_search_words"]
            db.session.execute(sa.text("SET LOCAL enable_seqscan = off"))
            conditions = [
                *search.index_conditions(db.session, ("order", "发票")),
                *search.filter_words(db.session, model="gpt-x", metadata={"team": "red"}),
            ]
            compiled = sa.select(Completion.seq).where(*conditions).compile(dialect=db.engine.dialect)
            plan = "\n".join(row[0] for row in db.session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))
            db.session.rollback()
            assert "ix_completions_search_words" in plan and "BitmapAnd" not in plan and "filter_words @>" in plan
            downgrade(revision="0011")
            definitions = dict(db.session.execute(sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'completions'")).all())
            columns = set(db.session.execute(sa.text("SELECT column_name FROM information_schema.columns WHERE table_name = 'completions'")).scalars())
            db.session.rollback()
            db.engine.dispose()
        assert "ix_completions_search_text_grams" in definitions and "ix_completions_search_words" not in definitions
        assert "INCLUDE (search_text) WHERE" in definitions["ix_completions_seq_search_text"]  # 0011's, as it was
        assert "ix_completions_created_seq_search_text" not in definitions and "filter_words" not in columns


def test_sqlite_trigram_table_holds_the_gram_words_and_the_downgrade_gives_back_the_triggers(tmp_path: Path) -> None:
    """Migration 0010 on SQLite: existing rows and every later write put the gram words (between
    spaces) beside the text in the trigram table; going down restores 0009's triggers to the letter."""
    from flask_migrate import downgrade, upgrade

    from webapp import create_app

    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'completions_search%' ORDER BY name"
    insert = (
        "INSERT INTO completions (seq, id, created, model, deleted, version, updated_at, search_text, search_grams) "
        "VALUES (:seq, :id, 1, 'm', 0, 1, CURRENT_TIMESTAMP, :text, :grams)"
    )
    with scratch_database("sqlite", tmp_path) as url:
        migrate_database(url, "0009")
        app = create_app({"DATABASE_URL": url, "SECRET_KEY": "test", "TESTING": True})
        with app.app_context():
            before = db.session.execute(sa.text(triggers)).all()
            db.session.execute(sa.text(insert), {"seq": 1, "id": "old", "text": "order 发票", "grams": "发 发票 票"})
            db.session.commit()
            upgrade(revision="0010")
            db.session.execute(sa.text(insert), {"seq": 2, "id": "new", "text": "开发票", "grams": "发 发票 开 开发 票"})
            db.session.execute(sa.text("UPDATE completions SET search_text = 'no order', search_grams = '' WHERE seq = 1"))
            db.session.commit()
            rows = db.session.execute(sa.text("SELECT rowid, search_text, search_grams FROM completions_search ORDER BY rowid")).all()
            found = db.session.scalars(sa.text("SELECT rowid FROM completions_search WHERE completions_search MATCH 'search_grams : \" 发票 \"'")).all()
            db.session.rollback()  # no snapshot of before the downgrade
            downgrade(revision="0009")
            after = db.session.execute(sa.text(triggers)).all()
            columns = [row[1] for row in db.session.execute(sa.text("PRAGMA table_info(completions_search)"))]
            db.session.rollback()
            db.engine.dispose()
    assert rows == [(1, "no order", "  "), (2, "开发票", " 发 发票 开 开发 票 ")]
    assert found == [2]
    assert after == before and columns == ["search_text"]


def test_cheaper_create_writes_keep_every_search_and_count_with_fewer_structures(backend: str, tmp_path: Path) -> None:
    """Migration 0013. SQLite: the trigram table keeps no texts and forgets one by FTS5's delete
    command; the gram table holds a document only for a text with gram words; every later write
    (insert, update either way, delete) keeps both right: searches find exactly what they
    should and FTS5's integrity checks pass. ``completion_metadata`` has no rowids, and its
    pair counts stay and go on counting. Both: the history's batch index holds bulk changes only,
    and an undo's lookup (``batch_id = ?``) still uses it. Going down gives back 0010's triggers
    to the letter, the tables as they were and the full index."""
    from flask_migrate import downgrade, upgrade

    from webapp import create_app

    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN ('completions', 'completion_metadata') ORDER BY name"
    insert = (
        "INSERT INTO completions (seq, id, created, model, deleted, version, updated_at, search_text, search_grams) "
        "VALUES (:seq, :id, 1, 'm', false, 1, CURRENT_TIMESTAMP, :text, :grams)"
    )
    pair = "INSERT INTO completion_metadata (completion_seq, key, value) VALUES (:seq, :key, :value)"
    change = (
        "INSERT INTO metadata_changes (completion_id, changed_at, actor, before, after, batch_id) "
        "VALUES ('c', CURRENT_TIMESTAMP, 'a', '{}', '{}', NULL)"
    )
    counts = "SELECT key_a, value_a, key_b, value_b, count FROM metadata_pair_counts WHERE count > 0 ORDER BY 1, 2, 3, 4"
    batch_lookup = "SELECT id FROM metadata_changes WHERE batch_id = 7 AND id > 0 ORDER BY batch_id, id"
    sqlite = backend == "sqlite"

    def index_sql() -> str:
        if sqlite:
            return db.session.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'ix_metadata_changes_batch'"))
        return db.session.scalar(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_metadata_changes_batch'"))

    def found(table: str, phrase: str) -> list[int]:
        query = f"SELECT rowid FROM {table} WHERE {table} MATCH :phrase ORDER BY rowid"
        return list(db.session.scalars(sa.text(query), {"phrase": f'"{phrase}"'}))

    def check_integrity() -> None:
        for table in ("completions_search", "completions_grams"):
            db.session.execute(sa.text(f"INSERT INTO {table}({table}) VALUES ('integrity-check')"))

    with scratch_database(backend, tmp_path) as url:
        migrate_database(url, "0012")
        app = create_app({"DATABASE_URL": url, "SECRET_KEY": "test", "TESTING": True})
        with app.app_context():
            before = db.session.execute(sa.text(triggers)).all() if sqlite else []
            db.session.execute(sa.text(insert), {"seq": 1, "id": "cjk", "text": "退款 order", "grams": "退 退款 款"})
            db.session.execute(sa.text(insert), {"seq": 2, "id": "plain", "text": "order only", "grams": ""})
            for seq in (1, 2):
                db.session.execute(sa.text(pair), {"seq": seq, "key": "team", "value": "red"})
                db.session.execute(sa.text(pair), {"seq": seq, "key": "lang", "value": "en"})
            db.session.execute(sa.text(change))
            db.session.commit()
            counted_before = db.session.execute(sa.text(counts)).all()
            if sqlite:
                db.session.execute(sa.text("ANALYZE"))  # a store that has statistics keeps them
                db.session.commit()
            db.session.rollback()
            upgrade()
            partial = index_sql()
            statistics = list(db.session.scalars(sa.text("SELECT idx FROM sqlite_stat1 WHERE tbl = 'completion_metadata'"))) if sqlite else []
            counted_after = db.session.execute(sa.text(counts)).all()
            db.session.execute(sa.text(pair), {"seq": 2, "key": "tier", "value": "gold"})
            db.session.execute(sa.text("DELETE FROM completion_metadata WHERE completion_seq = 1 AND key = 'lang'"))
            db.session.commit()
            counted_later = db.session.execute(sa.text(counts)).all()
            if sqlite:
                made = db.session.execute(sa.text(triggers)).all()
                tables = {name: sql for name, sql in db.session.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))}
                refilled = {"退款": found("completions_grams", "退款"), "order": found("completions_search", "order")}
                db.session.execute(sa.text(insert), {"seq": 3, "id": "new-cjk", "text": "开发票 order", "grams": "发 发票 开 开发 票"})
                db.session.execute(sa.text(insert), {"seq": 4, "id": "new-plain", "text": "no grams here", "grams": ""})
                db.session.execute(sa.text("UPDATE completions SET search_text = 'no refund', search_grams = '' WHERE seq = 1"))
                db.session.execute(sa.text("UPDATE completions SET search_text = '发票', search_grams = '发 发票 票' WHERE seq = 2"))
                db.session.execute(sa.text("DELETE FROM completions WHERE seq IN (3, 4)"))
                db.session.commit()
                kept = {
                    "退款": found("completions_grams", "退款"), "发票": found("completions_grams", "发票"),
                    "order": found("completions_search", "order"), "refund": found("completions_search", "refund"),
                    "grams": found("completions_search", " 发票 "), "rows": list(db.session.scalars(sa.text("SELECT rowid FROM completions_search"))),
                }
                check_integrity()
                plan = " ".join(row[-1] for row in db.session.execute(sa.text(f"EXPLAIN QUERY PLAN {batch_lookup}")))
            db.session.rollback()  # no snapshot of before the downgrade
            downgrade(revision="0012")
            full = index_sql()
            counted_down = db.session.execute(sa.text(counts)).all()
            if sqlite:
                after = db.session.execute(sa.text(triggers)).all()
                back = {"发票": found("completions_grams", "发票"), "refund": found("completions_search", "refund")}
                texts = list(db.session.scalars(sa.text("SELECT search_text FROM completions_search ORDER BY rowid")))
                metadata_sql = db.session.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'completion_metadata'"))
                check_integrity()
            db.session.rollback()
            db.engine.dispose()
    assert counted_before == [("lang", "en", "team", "red", 2)]
    assert counted_after == counted_before
    assert counted_later == [("lang", "en", "team", "red", 1), ("lang", "en", "tier", "gold", 1), ("team", "red", "tier", "gold", 1)]
    assert counted_down == counted_later
    assert "WHERE" in partial and "batch_id IS NOT NULL" in partial.replace("(", "").replace(")", "")
    assert "WHERE" not in full
    if sqlite:
        searches = {name: sql for name, sql in made if name.startswith("completions_search")}
        assert len(searches) == 3 and all("search_grams <> ''" in sql for sql in searches.values())
        assert "'delete'" in searches["completions_search_delete"] and "DELETE FROM completions_search" not in " ".join(searches.values())
        assert "completions_search_content" not in tables and "completions_grams_docsize" not in tables
        assert "WITHOUT ROWID" in tables["completion_metadata"] and "ix_completion_metadata_key_value" in statistics
        assert refilled == {"退款": [1], "order": [1, 2]}
        assert kept == {"退款": [], "发票": [2], "order": [], "refund": [1], "grams": [2], "rows": [1, 2]}
        assert "ix_metadata_changes_batch" in plan
        assert after == before and back == {"发票": [2], "refund": [1]} and texts == ["no refund", "发票"]
        assert "WITHOUT ROWID" not in metadata_sql


def test_postgresql_keeps_short_search_texts_beside_their_seq_for_counts(tmp_path: Path) -> None:
    """Migrations 0011 and 0012: the store's short-text condition is the index's predicate, so a
    count of short texts reads that index alone (and the long ones theirs), existing rows
    included; the planner gets its statistics; a downgrade takes them all away."""
    from flask_migrate import downgrade, upgrade

    from webapp import create_app
    from webapp.models import Completion
    from webapp.store import search

    insert = (
        "INSERT INTO completions (seq, id, created, model, deleted, version, updated_at, search_text, search_grams) "
        "VALUES (:seq, :id, 1, 'm', :deleted, 1, CURRENT_TIMESTAMP, :text, '')"
    )
    rows = [(1, "short", False, "order one"), (2, "long", False, "order " + "x" * 2000), (3, "gone", True, None), (4, "other", False, "none")]

    def plan_and_count(short: bool) -> tuple[str, int]:
        # Only the statement's shape matters here: on a tiny table the planner would rather read it all.
        db.session.execute(sa.text("SET LOCAL enable_seqscan = off"))
        db.session.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
        query = sa.select(Completion.seq).where(
            Completion.deleted.is_(False), search.short_text(short=short), search.exact_match(db.session, "order")
        )
        compiled = query.compile(dialect=db.engine.dialect)
        plan = "\n".join(row[0] for row in db.session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))
        found = db.session.scalars(query).all()
        db.session.rollback()
        return plan, len(found)

    with scratch_database("postgresql", tmp_path) as url:
        migrate_database(url, "0010")
        app = create_app({"DATABASE_URL": url, "SECRET_KEY": "test", "TESTING": True})
        with app.app_context():
            for seq, cid, deleted, text in rows:
                db.session.execute(sa.text(insert), {"seq": seq, "id": cid, "deleted": deleted, "text": text})
            db.session.commit()
            upgrade()
            short_plan, short_count = plan_and_count(True)
            long_plan, long_count = plan_and_count(False)
            statistics = set(db.session.scalars(sa.text("SELECT stxname FROM pg_statistic_ext")))
            db.session.rollback()
            downgrade(revision="0010")
            names = set(db.session.scalars(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'completions'")))
            after = set(db.session.scalars(sa.text("SELECT stxname FROM pg_statistic_ext")))
            db.session.rollback()
            db.engine.dispose()
    assert "Index Only Scan using ix_completions_created_seq_search_text" in short_plan and short_count == 1
    assert "ix_completions_long_search_text" in long_plan and long_count == 1
    assert {"completions_search_text_bytes", "completion_metadata_key_value", "completions_filter_bytes"} <= statistics
    assert not {"ix_completions_seq_search_text", "ix_completions_created_seq_search_text", "ix_completions_long_search_text"} & names
    assert not after


def test_rollup_seq_bounds_are_filled_and_widened_and_the_downgrade_gives_back_the_triggers(backend: str, tmp_path: Path) -> None:
    """Migration 0014. SQLite: each rollup bucket gets the least and greatest seq of the
    completions it counts (the fill), and every later insert or change of time widens them; going
    down gives back 0009's triggers to the letter and the table without the columns. PostgreSQL:
    the columns are there, NULL (its counts do without them)."""
    from flask_migrate import downgrade, upgrade

    from webapp import create_app

    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'completion_rollup%' ORDER BY name"
    insert = (
        "INSERT INTO completions (seq, id, created, model, deleted, version, updated_at, search_text, search_grams) "
        "VALUES (:seq, :id, :created, 'm', false, 1, CURRENT_TIMESTAMP, 'x', '')"
    )
    bounds = "SELECT span, start, first_seq, last_seq FROM completion_rollup ORDER BY span, start"
    hour, day = 3600, 86400
    with scratch_database(backend, tmp_path) as url:
        migrate_database(url, "0013")
        app = create_app({"DATABASE_URL": url, "SECRET_KEY": "test", "TESTING": True})
        with app.app_context():
            sqlite = backend == "sqlite"
            before = db.session.execute(sa.text(triggers)).all() if sqlite else []
            for seq, created in ((1, day), (2, day + 10), (3, day + hour), (4, 2 * day), (5, day + 20)):
                db.session.execute(sa.text(insert), {"seq": seq, "id": f"c{seq}", "created": created})
            db.session.commit()
            upgrade(revision="0014")
            filled = db.session.execute(sa.text(bounds)).all()
            # Seq 6 is created in the first hour, and seq 3 moves to the day after.
            db.session.execute(sa.text(insert), {"seq": 6, "id": "c6", "created": day + 30})
            db.session.execute(sa.text("UPDATE completions SET created = :created WHERE seq = 3"), {"created": 2 * day + 5})
            db.session.commit()
            widened = db.session.execute(sa.text(bounds)).all()
            from webapp import store

            outside = store.seqs_outside_bounds(db.session)
            db.session.rollback()
            downgrade(revision="0013")
            after = db.session.execute(sa.text(triggers)).all() if sqlite else []
            columns = [c["name"] for c in sa.inspect(db.engine).get_columns("completion_rollup")]
            db.session.rollback()
            db.engine.dispose()
    if sqlite:
        assert filled == [(hour, day, 1, 5), (hour, day + hour, 3, 3), (hour, 2 * day, 4, 4), (day, day, 1, 5), (day, 2 * day, 4, 4)]
        # Seq 3's old hour held only it and is gone; the others widen (and nothing narrows them).
        assert widened == [(hour, day, 1, 6), (hour, 2 * day, 3, 4), (day, day, 1, 6), (day, 2 * day, 3, 4)]
    else:
        assert {(first, last) for *_, first, last in widened} == {(None, None)}
    assert outside == []
    assert after == before
    assert "first_seq" not in columns and "last_seq" not in columns
