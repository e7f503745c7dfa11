"""A batch import keeps the derived data exactly as single writes would: the search indexes, the
metadata pair counts and the overview's rollup (store.derived, migration 0009).

The batch path lets the INSERT triggers stand aside and keeps the derived data of its inserts in
a few statements per batch; these tests load the same completions both ways and compare.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from webapp import store, validation
from webapp.extensions import db, write_transaction
from webapp.models import Completion, MetadataPairCount

from .helpers import TEST_SECRET_KEY, completion_body, empty_database, migrate_database, scratch_database, seed

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
TERMS = ["退款", "申请", "退", "refund", "nonrefundable", "ship", "订单号", "42"]


def records() -> list[dict[str, Any]]:
    """Completions in Chinese and English, over hours, days and models, with metadata, odd usage among them."""
    lines = []
    for i in range(40):
        chinese = i % 3 == 0
        body = completion_body(
            f"d{i:03d}",
            created=T0 + i * 1_900,
            model=f"m{i % 4}",
            content=f"我想申请退款，订单号 {i}" if chinese else f"Refund {i}: the ticket is nonrefundable, we ship it",
            # "Zeta" sorts before "lang" by code point, after it in most collations: the pairs take the database's order.
            metadata={
                "team": "客服" if chinese else f"team-{i % 5}",
                "lang": "zh" if chinese else "en",
                **({"tier": f"t{i % 2}"} if i % 4 else {}),
                **({"Zeta": f"z{i % 3}"} if i % 5 == 0 else {}),
            },
        )
        body["usage"] = [
            {"prompt_tokens": i, "completion_tokens": 2 * i},
            {"prompt_tokens": "7"},
            {"prompt_tokens": 1.5},
            None,
            {"prompt_tokens": -3, "completion_tokens": True},
            {"prompt_tokens": 999_999_999_999, "completion_tokens": 10**12},
        ][i % 6]
        lines.append(body)
    lines.append(completion_body("bare", created=T0 - 3_600, metadata={}))  # no metadata at all
    # The same id again later: its second version (new text, new metadata) replaces the first.
    lines.append(completion_body("d001", created=T0 + 5, content="退货已完成 shipped", metadata={"team": "blue", "lang": "zh"}))
    return lines


def derived_data(backend: str) -> dict[str, Any]:
    """Everything derived from the stored completions, by id (seqs differ from one load to another)."""
    db.session.rollback()
    pairs = db.session.execute(
        select(MetadataPairCount.key_a, MetadataPairCount.value_a, MetadataPairCount.key_b, MetadataPairCount.value_b, MetadataPairCount.count)
        .where(MetadataPairCount.count > 0)
    ).all()
    found = {
        term: sorted(c.id for c in store.iter_completions(db.session, filter=validation.clean_filters(search=term))) for term in TERMS
    }
    state = {"rollup": store.read_rollup(db.session), "pairs": sorted(map(tuple, pairs)), "found": found}
    if backend == "sqlite":
        ids = dict(db.session.execute(select(Completion.seq, Completion.id)).all())
        # The trigram table keeps no texts (migration 0013): which completions it holds, and the searches above.
        indexed = db.session.scalars(sa.text("SELECT rowid FROM completions_search")).all()
        state["indexed"] = sorted(ids[seq] for seq in indexed)
    return state


def assert_consistent(backend: str) -> None:
    """The rollup equals a recount, the pair counts a fresh count, the FTS5 tables their content; no deferral is left on."""
    db.session.rollback()
    assert store.read_rollup(db.session) == store.recount_rollup(db.session)
    assert store.seqs_outside_bounds(db.session) == []
    fresh = db.session.execute(
        sa.text(
            "SELECT a.key, a.value, b.key, b.value, count(*) FROM completion_metadata a JOIN completion_metadata b "
            "ON b.completion_seq = a.completion_seq AND a.key < b.key GROUP BY a.key, a.value, b.key, b.value"
        )
    ).all()
    kept = db.session.execute(
        select(MetadataPairCount.key_a, MetadataPairCount.value_a, MetadataPairCount.key_b, MetadataPairCount.value_b, MetadataPairCount.count)
        .where(MetadataPairCount.count > 0)
    ).all()
    assert sorted(map(tuple, kept)) == sorted(map(tuple, fresh))
    if backend == "sqlite":
        for table in ("completions_search", "completions_grams"):
            db.session.execute(sa.text(f"INSERT INTO {table}({table}) VALUES ('integrity-check')"))
        assert db.session.scalar(sa.text("SELECT count(*) FROM derived_data_deferred")) == 0
        live = db.session.scalar(select(sa.func.count()).select_from(Completion).where(Completion.search_text.is_not(None)))
        assert db.session.scalar(sa.text("SELECT count(*) FROM completions_search")) == live
    else:
        assert db.session.scalar(sa.text("SELECT current_setting('completion_store.defer_derived_data', true)")) in (None, "", "off")
    db.session.rollback()


def test_a_batch_import_keeps_derived_data_as_single_writes_do(app, runner, backend: str, tmp_path: Path, monkeypatch) -> None:
    """Many small batches (the writer thread pipelined), a line the database refuses in one of them
    (that batch is written again line by line, in savepoints), a repeated id (an update, by triggers)."""
    monkeypatch.setattr("webapp.cli.data.IMPORT_BATCH", 7)
    lines = records()
    refused = completion_body("too-big", created=10**20, content="我想申请退款 refund", metadata={"team": "blue", "lang": "en"})
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines[:10] + [refused] + lines[10:]), encoding="utf-8")
    result = runner.invoke(args=["import", str(path)])
    assert "line 11: the database refused it" in result.output
    assert "Imported 42 completions (42 new or changed, 0 unchanged); 1 bad lines skipped." in result.output
    assert_consistent(backend)
    imported = derived_data(backend)
    assert imported["found"]["退款"] == [f"d{i:03d}" for i in range(0, 40, 3)]
    assert imported["found"]["ship"] == [f"d{i:03d}" for i in range(40) if i % 3]
    assert "d001" not in imported["found"]["refund"]  # its second line replaced the text

    # The same completions written one at a time, by the triggers alone.
    empty_database()
    seed(*lines)
    assert_consistent(backend)
    assert derived_data(backend) == imported


def test_re_importing_changed_completions_keeps_derived_data(app, runner, backend: str, tmp_path: Path) -> None:
    """Updates (new text, model, time, metadata) and a tombstone brought back go through the triggers; new rows through the batch."""
    lines = records()[:20]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert runner.invoke(args=["import", str(path)]).exit_code == 0
    with write_transaction() as session:
        store.delete_completion(session, completion_id="d004")
    changed = [
        {**line, "model": "m9", "created": line["created"] + 90_000, "metadata": {"team": "客服", "lang": "zh"}} if i % 2 else line
        for i, line in enumerate(lines)
    ]
    changed[3]["choices"][0]["message"]["content"] = "退款已拒绝"
    changed += records()[20:]
    path.write_text("".join(json.dumps(line) + "\n" for line in changed), encoding="utf-8")
    result = runner.invoke(args=["import", str(path)])
    assert result.exit_code == 0, result.output
    # Changed: the 10 odd ones, the tombstone, 20 + 1 new, the repeated id; unchanged: the other 9 even ones.
    assert "Imported 42 completions (33 new or changed, 9 unchanged)" in result.output
    assert_consistent(backend)
    imported = derived_data(backend)
    empty_database()
    seed(*changed)
    assert derived_data(backend) == imported


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0009_goes_down_to_the_triggers_it_found(backend: str, tmp_path: Path) -> None:
    """Down again, every trigger is exactly as 0008 left it."""
    from flask_migrate import downgrade, upgrade

    from webapp import create_app

    with scratch_database(backend, tmp_path) as url:
        migrate_database(url, "0008")
        app = create_app({"DATABASE_URL": url, "SECRET_KEY": TEST_SECRET_KEY, "TESTING": True})
        with app.app_context():
            before = _triggers()
            upgrade(revision="0009")
            assert _triggers() != before
            downgrade(revision="0008")
            assert _triggers() == before
            db.engine.dispose()


def _triggers() -> list[tuple[str, str]]:
    with db.engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            rows = connection.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"))
        else:
            rows = connection.execute(
                sa.text("SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname")
            )
        return [tuple(row) for row in rows]


def test_a_writer_that_fails_stops_the_import_with_its_error(database_url: str, tmp_path: Path) -> None:
    """The writer thread stops on a database error (the store held by another writer past the
    timeout): the import ends with that error instead of hanging, writes nothing half, and a
    re-run stores every line."""
    from webapp import create_app

    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY, "TESTING": True, "DATABASE_TIMEOUT": 0.2})
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in records()), encoding="utf-8")
    with app.app_context():
        empty_database()
        other_writer = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"])
        holder = other_writer.connect()
        try:
            if db.engine.dialect.name == "sqlite":
                holder.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                holder.begin()
                holder.exec_driver_sql("LOCK TABLE completions IN ACCESS EXCLUSIVE MODE")
            result = app.test_cli_runner().invoke(args=["import", str(path)])
        finally:
            holder.rollback()
            holder.close()
            other_writer.dispose()
        assert result.exit_code != 0 and isinstance(result.exception, sa.exc.OperationalError), result.output
        assert db.session.scalar(select(sa.func.count()).select_from(Completion)) == 0
        assert_consistent(db.engine.dialect.name)
        again = app.test_cli_runner().invoke(args=["import", str(path)])
        assert "Imported 42 completions (42 new or changed, 0 unchanged)" in again.output, again.output
        assert_consistent(db.engine.dialect.name)
        empty_database()
        db.engine.dispose()
