"""The overview's rollup never drifts: after every kind of write it equals a recount from the rows.

Triggers keep ``completion_rollup`` (migration 0007), so whatever writes ``completions`` (the
store's create and upsert, the import command, a Core batch insert, the metadata update,
delete, a physical DELETE as a purge does it) moves it in the same transaction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from webapp import store
from webapp.extensions import db, write_transaction
from webapp.models import Completion, utcnow
from webapp.validation import Filter
from webapp.store.overview import DAY, HOUR, Usage

from .helpers import completion_body, seed

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC


def record(completion_id: str, *, created: int, model: str = "gpt-a", usage: Any = (10, 5), **extra: Any) -> dict[str, Any]:
    """A completion with the usage given as (prompt, completion) tokens, or any JSON value to store as ``usage``."""
    body = completion_body(completion_id, created=created, model=model, **extra)
    body["usage"] = (
        {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]}
        if isinstance(usage, tuple)
        else usage
    )
    return body


def assert_no_drift() -> dict[tuple[int, int, str], Usage]:
    """Assert the rollup equals a recount from the rows, and on SQLite that each bucket's seq
    bounds hold every seq it counts; return it."""
    db.session.rollback()
    kept = store.read_rollup(db.session)
    assert kept == store.recount_rollup(db.session)
    assert store.seqs_outside_bounds(db.session) == []
    return kept


def test_creates_count_per_hour_and_day_and_model(app) -> None:
    seed(
        record("a", created=T0 + 10, usage=(10, 5)),
        record("b", created=T0 + HOUR + 1, usage=(7, 1)),
        record("c", created=T0 + DAY + 5, model="gpt-b", usage=(3, 2)),
    )
    kept = assert_no_drift()
    assert kept == {
        (HOUR, T0, "gpt-a"): Usage(1, 10, 5),
        (HOUR, T0 + HOUR, "gpt-a"): Usage(1, 7, 1),
        (HOUR, T0 + DAY, "gpt-b"): Usage(1, 3, 2),
        (DAY, T0, "gpt-a"): Usage(2, 17, 6),
        (DAY, T0 + DAY, "gpt-b"): Usage(1, 3, 2),
    }


@pytest.mark.parametrize(
    "usage",
    [None, {}, {"prompt_tokens": "12", "completion_tokens": 1.5}, {"prompt_tokens": -4, "completion_tokens": 10**15}, [1, 2], "many"],
    ids=["none", "empty", "text-and-fraction", "negative-and-absurd", "array", "string"],
)
def test_usage_that_is_not_a_count_counts_as_zero_tokens(app, usage: Any) -> None:
    seed(record("odd", created=T0, usage=usage))
    assert assert_no_drift()[(DAY, T0, "gpt-a")] == Usage(1, 0, 0)


@pytest.mark.parametrize(
    "odd_text",
    ["nul \x00 inside", "lone surrogate \udf46", "escaped backslash \\u0000"],
    ids=["nul", "surrogate", "backslash"],
)
def test_text_postgresql_cannot_read_still_counts(app, odd_text: str) -> None:
    """A body whose JSON holds \\u0000 or a lone surrogate (in a value or a key) is counted by its usage."""
    body = record("odd", created=T0, usage=(10, 5), content=odd_text)
    body["system_fingerprint"] = {odd_text: odd_text}
    seed(body)
    assert assert_no_drift()[(DAY, T0, "gpt-a")] == Usage(1, 10, 5)


def test_rows_are_counted_in_a_parallel_plan_too(app, backend: str) -> None:
    """A metadata filter counts rows; on a big table PostgreSQL plans that in parallel workers."""
    seed(*(record(f"p{i}", created=T0 + i, usage=(1, 2), metadata={"team": "red"}) for i in range(30)))
    if backend == "postgresql":
        # Named force_parallel_mode before PostgreSQL 16.
        force = db.session.scalar(sa.text("SELECT name FROM pg_settings WHERE name IN ('debug_parallel_query', 'force_parallel_mode')"))
        for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0", f"{force} = on"):
            db.session.execute(sa.text(f"SET LOCAL {setting}"))
    series = store.usage_series(db.session, filter=Filter(metadata={"team": "red"}))
    assert series.total == Usage(30, 30, 60)


def test_a_body_sqlite_cannot_parse_is_stored_and_counted_without_tokens(app, backend: str) -> None:
    """Python writes NaN into JSON; SQLite keeps such a body (PostgreSQL refuses it at the door)."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL's json type refuses NaN before any trigger runs")
    body = record("nan", created=T0, usage=(10, 5))
    body["temperature"] = float("nan")
    seed(body)
    assert assert_no_drift()[(DAY, T0, "gpt-a")] == Usage(1, 0, 0)


def test_upserts_move_the_counts_from_the_old_values_to_the_new(app) -> None:
    seed(record("a", created=T0, usage=(10, 5)), record("b", created=T0, usage=(1, 1)))
    seed(record("a", created=T0 + 3 * DAY, model="gpt-b", usage=(20, 8)))  # moved: time, model and usage
    seed(record("b", created=T0, usage=(1, 1), metadata={"team": "red"}))  # metadata only
    kept = assert_no_drift()
    assert kept[(DAY, T0, "gpt-a")] == Usage(1, 1, 1)
    assert kept[(DAY, T0 + 3 * DAY, "gpt-b")] == Usage(1, 20, 8)


def test_metadata_updates_deletes_and_resurrection(app) -> None:
    seed(*(record(f"c{i}", created=T0 + i * HOUR, usage=(i, 1)) for i in range(4)))
    with write_transaction() as session:
        store.update_metadata(session, completion_id="c0", metadata={"label": "good"}, actor="test")
        store.delete_completion(session, completion_id="c1")
        store.delete_completion(session, completion_id="c2")
    kept = assert_no_drift()
    assert kept[(DAY, T0, "gpt-a")] == Usage(2, 0 + 3, 2)
    assert (HOUR, T0 + HOUR, "gpt-a") not in kept, "an hour left empty has no row"
    seed(record("c1", created=T0 + HOUR, usage=(5, 5)))  # imported again: back to life
    assert assert_no_drift()[(HOUR, T0 + HOUR, "gpt-a")] == Usage(1, 5, 5)


def test_the_import_command(app, runner, tmp_path: Path) -> None:
    lines = [record(f"i{i}", created=T0 + i * 7_200, model=f"m{i % 3}", usage=(i, 2 * i)) for i in range(40)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert runner.invoke(args=["import", str(path)]).exit_code == 0
    assert runner.invoke(args=["import", str(path)]).exit_code == 0  # twice changes nothing
    kept = assert_no_drift()
    assert sum(usage.completions for (span, _start, _model), usage in kept.items() if span == DAY) == 40


def test_core_batch_inserts_and_physical_deletes(app) -> None:
    """A fast import path (Core executemany) and a purge (DELETE) keep it too: no Python hook is involved."""
    rows = [
        {
            "id": f"b{i}",
            "created": T0 + i * 600,
            "model": "bulk",
            "deleted": False,
            "body": record(f"b{i}", created=T0 + i * 600, usage=(i, 1)),
            "messages": [],
            "metadata_map": {},
            "version": 1,
            "updated_at": utcnow(),
        }
        for i in range(300)
    ]
    with write_transaction() as session:
        session.execute(sa.insert(Completion), rows)
    assert assert_no_drift()[(DAY, T0, "bulk")].completions == 144
    with write_transaction() as session:
        store.delete_completion(session, completion_id="b0")  # a tombstone, then purged with the rest
        session.execute(sa.delete(Completion).where(Completion.created < T0 + DAY))
    kept = assert_no_drift()
    assert (DAY, T0, "bulk") not in kept
    assert kept[(DAY, T0 + DAY, "bulk")].completions == 144


def test_the_batch_import_and_purge(app) -> None:
    """The lifecycle's paths: batch upserts (COPY on PostgreSQL) and purge in batches."""
    batch = [record(f"u{i}", created=T0 + i * 900, model=f"m{i % 2}", usage=(i, 1)) for i in range(200)]
    incoming = [store.IncomingCompletion(body=body, messages=body["messages"], metadata=body["metadata"]) for body in batch]
    with write_transaction() as session:
        store.upsert_completions(session, completions=incoming[:150], actor="import")
    with write_transaction() as session:  # again, overlapping: some unchanged, some new, one changed
        changed = record("u0", created=T0 + 5 * DAY, model="m9", usage=(7, 7))
        incoming[0] = store.IncomingCompletion(body=changed, messages=changed["messages"], metadata={})
        store.upsert_completions(session, completions=incoming, actor="import")
    kept = assert_no_drift()
    assert sum(usage.completions for (span, _start, _model), usage in kept.items() if span == DAY) == 200
    assert kept[(DAY, T0 + 5 * DAY, "m9")] == Usage(1, 7, 7)
    with write_transaction() as session:
        assert len(store.purge_batch(session, filter=Filter(), created_before=T0 + DAY, limit=50)) == 50
        # m1 is the odd ones: 96 before the second day, of which the first purge took 25.
        assert len(store.purge_batch(session, filter=Filter(model="m1"), created_before=T0 + 2 * DAY, limit=1000)) == 71
    kept = assert_no_drift()
    assert sum(usage.completions for (span, _start, _model), usage in kept.items() if span == DAY) == 200 - 50 - 71


def test_a_failed_transaction_leaves_it_as_it_was(app) -> None:
    seed(record("a", created=T0))
    with pytest.raises(RuntimeError), write_transaction() as session:
        store.delete_completion(session, completion_id="a")
        seed_in = record("z", created=T0)
        store.save_completion(session, body=seed_in, messages=[], metadata={}, actor="test")
        raise RuntimeError("the request failed")
    assert assert_no_drift() == {(HOUR, T0, "gpt-a"): Usage(1, 10, 5), (DAY, T0, "gpt-a"): Usage(1, 10, 5)}
