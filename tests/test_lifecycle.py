"""The data lifecycle commands: purge (retention) and backup, alone and beside live API writers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from webapp import store
from webapp.cli import lifecycle
from webapp.extensions import db, write_transaction
from webapp.models import Completion, CompletionMetadata, MetadataChange

from .helpers import ROOT, TEST_SECRET_KEY, LiveServer, completion_body, make_key, seed

NOW = 1_800_000_000
DAY = 86_400


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> int:
    """Purge's clock stopped at NOW, so a cut-off can be tested to the second."""
    monkeypatch.setattr(lifecycle, "_now", lambda: NOW)
    return NOW


def bulk_seed(ids_and_created: list[tuple[str, int]], **fields: object) -> None:
    """Store many completions quickly (the import's batch writer), each with metadata and history."""
    with write_transaction() as session:
        for start in range(0, len(ids_and_created), 1000):
            store.upsert_completions(
                session,
                completions=[
                    store.IncomingCompletion(body=body, messages=body["messages"], metadata=body["metadata"])
                    for body in (
                        completion_body(cid, created=created, metadata={"team": "red", "n": cid}, **fields)  # type: ignore[arg-type]
                        for cid, created in ids_and_created[start : start + 1000]
                    )
                ],
                actor="test",
            )


def live_ids() -> set[str]:
    db.session.rollback()
    return set(db.session.scalars(select(Completion.id).where(Completion.deleted.is_(False))))


def test_purge_refuses_without_an_age(runner, seeded) -> None:
    result = runner.invoke(args=["purge", "--yes"])
    assert result.exit_code == 2 and "--older-than DAYS, or set RETENTION_DAYS" in result.output
    assert len(live_ids()) == 6


def test_purge_cuts_off_to_the_second_and_dry_run_changes_nothing(runner, clock) -> None:
    cutoff = NOW - 30 * DAY
    seed(*(completion_body(cid, created=created) for cid, created in [("old", cutoff - 1), ("edge", cutoff), ("new", cutoff + 1)]))
    dry = runner.invoke(args=["purge", "--older-than", "30", "--dry-run"])
    assert dry.exit_code == 0 and "Would purge 1 completions created before" in dry.output
    assert live_ids() == {"old", "edge", "new"}
    done = runner.invoke(args=["purge", "--older-than", "30", "--yes"])
    assert done.exit_code == 0, done.output
    assert "Purged 1 completions" in done.output
    assert live_ids() == {"edge", "new"}


def test_purge_uses_retention_days(runner, app, clock, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(completion_body("old", created=NOW - 8 * DAY), completion_body("recent", created=NOW - 6 * DAY))
    monkeypatch.setitem(app.config, "RETENTION_DAYS", 7)
    result = runner.invoke(args=["purge", "--yes"])
    assert result.exit_code == 0 and "(7 days ago)" in result.output
    assert live_ids() == {"recent"}
    # The option wins over the setting.
    assert runner.invoke(args=["purge", "--older-than", "5", "--yes"]).exit_code == 0
    assert live_ids() == set()


def test_purged_content_is_gone_and_a_cursor_naming_it_still_pages(runner, client, auth, clock) -> None:
    seed(*(completion_body(f"p{i}", created=NOW - 100 * DAY + i, metadata={"team": "red", "secret": f"s{i}"}) for i in range(4)))
    seed(completion_body("keep", created=NOW, metadata={"team": "red"}))
    seed(completion_body("deleted-earlier", created=NOW - 100 * DAY, metadata={"secret": "x"}))
    assert client.delete("/v1/chat/completions/deleted-earlier", headers=auth).status_code == 200
    cursor = client.get("/v1/chat/completions?limit=2", headers=auth).get_json()["last_id"]
    assert cursor == "p1"
    assert client.post("/v1/chat/completions/p0", json={"metadata": {"team": "blue"}}, headers=auth).status_code == 200

    result = runner.invoke(args=["purge", "--older-than", "90", "--yes"])
    assert result.exit_code == 0, result.output
    assert "Purged 4 completions" in result.output and "Removed the history of 1 completions deleted earlier." in result.output

    db.session.rollback()
    gone = [f"p{i}" for i in range(4)]
    rows = db.session.execute(select(Completion.id, Completion.deleted, Completion.body, Completion.messages, Completion.metadata_map).where(Completion.id.in_(gone))).all()
    assert sorted(rows) == [(cid, True, None, None, None) for cid in gone]
    assert db.session.scalar(select(func.count()).select_from(CompletionMetadata)) == 1  # keep's one pair
    assert set(db.session.scalars(select(MetadataChange.completion_id))) == {"keep"}
    for cid in gone:
        assert client.get(f"/v1/chat/completions/{cid}", headers=auth).status_code == 404
    assert [c["id"] for c in client.get("/v1/chat/completions?metadata[team]=red", headers=auth).get_json()["data"]] == ["keep"]
    page = client.get(f"/v1/chat/completions?after={cursor}", headers=auth)
    assert page.status_code == 200 and [c["id"] for c in page.get_json()["data"]] == ["keep"]


@pytest.mark.parametrize(
    "filters, left",
    [
        (["--model", "gpt-a"], {"c0", "c2", "c4"}),
        (["--metadata", "team=red"], {"c3", "c4", "c5"}),
        (["--model", "gpt-a", "--metadata", "team=blue"], {"c0", "c1", "c2", "c4"}),
    ],
)
def test_purge_takes_the_api_filter(runner, seeded, clock, filters: list[str], left: set[str]) -> None:
    result = runner.invoke(args=["purge", "--older-than", "1", "--yes", *filters])
    assert result.exit_code == 0, result.output
    assert live_ids() == left


def test_purge_refuses_a_bad_filter(runner, seeded) -> None:
    result = runner.invoke(args=["purge", "--older-than", "1", "--yes", "--metadata", "team"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    assert len(live_ids()) == 6


def test_purge_without_yes_and_without_a_terminal_refuses(runner, seeded) -> None:
    result = runner.invoke(args=["purge", "--older-than", "1"], input="y\n")
    assert result.exit_code == 1 and "no terminal" in result.output and "--yes" in result.output
    assert len(live_ids()) == 6


def purge_on_a_terminal(database_url: str, answer: str) -> tuple[int, str]:
    """Run ``flask purge --older-than 1`` with a terminal as its stdin, answering ``answer``."""
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "webapp", "purge", "--older-than", "1"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY},
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    os.close(terminal)
    os.write(controller, f"{answer}\n".encode())
    output, _ = process.communicate(timeout=60)
    os.close(controller)
    return process.returncode, output.decode()


@pytest.mark.parametrize("answer, purged", [("n", False), ("y", True)])
def test_purge_asks_on_a_terminal(seeded, database_url: str, answer: str, purged: bool) -> None:
    code, output = purge_on_a_terminal(database_url, answer)
    assert "Purge 6 completions created before" in output and "cannot be undone" in output
    assert (code, len(live_ids())) == ((0, 0) if purged else (1, 6)), output


def test_a_large_purge_never_makes_api_writers_wait_too_long(runner, live_server: LiveServer, clock) -> None:
    old = 6 * lifecycle.PURGE_BATCH
    bulk_seed([(f"old-{i:05d}", NOW - 400 * DAY + i) for i in range(old)])
    seed(*(completion_body(f"hot{n}", created=NOW) for n in range(4)))
    headers = {"Authorization": f"Bearer {make_key(name='writer')}"}
    statuses: Counter[int] = Counter()
    slowest = 0.0
    done = threading.Event()

    def writer(n: int) -> None:
        nonlocal slowest
        with httpx.Client(base_url=live_server.v1, headers=headers, timeout=30) as http:
            round_ = 0
            while not done.is_set():
                start = time.monotonic()
                response = http.post(f"/chat/completions/hot{n}", json={"metadata": {"round": str(round_)}})
                slowest = max(slowest, time.monotonic() - start)
                statuses[response.status_code] += 1
                round_ += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        started = time.monotonic()
        result = runner.invoke(args=["purge", "--older-than", "30", "--yes"])
        took = time.monotonic() - started
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert result.exit_code == 0, result.output
    assert f"Purged {old} completions" in result.output
    assert set(statuses) == {200}, statuses
    print(f"\nfigures: purge of {old} completions in {took:.1f} s beside 4 API writers: {sum(statuses.values())} updates, all 200, slowest {slowest * 1000:.0f} ms")
    assert live_ids() == {f"hot{n}" for n in range(4)}


def test_backup_while_writers_run_holds_everything_committed_before_it(runner, backend: str, live_server: LiveServer, tmp_path: Path) -> None:
    if backend != "sqlite":
        pytest.skip("backup copies the embedded SQLite store; PostgreSQL has pg_dump (tested below)")
    bulk_seed([(f"b{i:05d}", 1_700_000_000 + i) for i in range(3000)])
    seed(*(completion_body(f"hot{n}") for n in range(4)))
    headers = {"Authorization": f"Bearer {make_key(name='writer')}"}
    statuses: Counter[int] = Counter()
    done = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(base_url=live_server.v1, headers=headers, timeout=30) as http:
            round_ = 0
            while not done.is_set():
                statuses[http.post(f"/chat/completions/hot{n}", json={"metadata": {"round": str(round_)}}).status_code] += 1
                round_ += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        db.session.rollback()
        committed = db.session.scalar(select(func.max(MetadataChange.id)))
        target = tmp_path / "copy.db"
        result = runner.invoke(args=["backup", str(target)])
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert result.exit_code == 0, result.output
    assert set(statuses) == {200}, statuses
    assert target.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT count(*) FROM completions").fetchone() == (3004,)
        ids = {row[0] for row in copy.execute("SELECT id FROM metadata_changes")}
        assert set(range(1, committed + 1)) <= ids
    assert not list(tmp_path.glob(".*partial"))


def test_backup_on_postgresql_says_to_use_pg_dump(runner, backend: str, tmp_path: Path) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL only")
    result = runner.invoke(args=["backup", str(tmp_path / "x.db")])
    assert result.exit_code == 1 and "pg_dump" in result.output
    assert not (tmp_path / "x.db").exists()
