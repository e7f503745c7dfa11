"""``flask sync``: mirroring a second live Completion Store (its own database, gunicorn) through
a proxy that can answer 429 and 500 now and then, with the official openai SDK as the client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from webapp import create_app, store
from webapp.extensions import db, write_transaction
from webapp.models import Completion, MetadataChange, SyncSource
from webapp.validation import Filter

from .faulty_proxy import FaultyProxy
from .helpers import (
    ROOT,
    TEST_SECRET_KEY,
    LiveServer,
    completion_body,
    empty_database,
    free_port,
    make_key,
    seed,
    start_gunicorn,
    stop_server,
)


@dataclass
class Source:
    """The second store: its app (for seeding), its server, the proxy in front, a key."""

    app: Flask
    server: LiveServer
    proxy: FaultyProxy
    key: str = ""

    @property
    def v1(self) -> str:
        return f"{self.proxy.url}/v1"

    @contextmanager
    def context(self) -> Iterator[None]:
        with self.app.app_context():
            yield
            db.session.remove()


@pytest.fixture(scope="session")
def _source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    from flask_migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('source') / 'source.db'}"
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": TEST_SECRET_KEY, "TESTING": True})
    with app.app_context():
        upgrade()
    server = start_gunicorn({"DATABASE_URL": url})
    proxy = FaultyProxy(server.url).start()
    yield Source(app=app, server=server, proxy=proxy)
    proxy.stop()
    stop_server(server)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def source(app: Flask, _source: Source) -> Source:
    """The source store, emptied, with a fresh key; the proxy passes everything and counts it."""
    with _source.context():
        empty_database()
        _source.key = make_key(name="mirror")
    _source.proxy.reset()
    return _source


def source_records(count: int, *, start: int = 0) -> list[dict[str, Any]]:
    """Completions of every shape: metadata or none, multi-part content, tool calls, a long conversation."""
    records = []
    for i in range(start, start + count):
        messages: list[dict[str, Any]] | None = None
        if i % 7 == 0:
            messages = [{"role": "user", "content": [{"type": "text", "text": f"part one {i}"}, {"type": "text", "text": " ünïcode ✓"}]}]
        if i % 11 == 0:
            messages = [{"role": "system", "content": "tools"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
        if i == start + 3:
            messages = [{"role": "user" if n % 2 else "assistant", "content": f"turn {n}"} for n in range(130)]  # more than a page
        records.append(
            completion_body(
                f"src-{i:05d}",
                created=1_700_000_000 + i // 3,  # several per second: ties in the order
                model="gpt-a" if i % 2 else "gpt-b",
                metadata={"team": "red" if i % 3 else "blue", "n": str(i)} if i % 5 else {},
                messages=messages,
            )
        )
    return records


def snapshot() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every live completion of the current app's store, as the API shows it: object and messages."""
    db.session.rollback()
    return {row.id: (store.completion_object(row), store.message_objects(row)) for row in store.iter_completions(db.session, filter=Filter())}


def source_snapshot(source: Source) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    with source.context():
        return snapshot()


def at_source(source: Source, *records: dict[str, Any]) -> None:
    with source.context():
        seed(*records)


def sync(runner, source: Source, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(args=["sync", "--from", source.v1, "--api-key", source.key, *args])


def test_a_full_mirror_equals_the_source_and_a_second_run_changes_nothing(runner, source: Source) -> None:
    at_source(source, *source_records(250))
    result = sync(runner, source)
    assert result.exit_code == 0, result.output
    assert "Synced 250 completions" in result.output and "(250 new or changed, 0 unchanged)" in result.output
    mirrored = snapshot()
    assert mirrored == source_snapshot(source)
    assert len(mirrored["src-00003"][1]) == 130
    assert [row for row in mirrored] == [f"src-{i:05d}" for i in range(250)]  # the source's order, ties included
    assert source.proxy.count("/messages") == 250 + 1  # one call each, two for the long conversation

    versions = dict(db.session.execute(select(Completion.id, Completion.version)).all())
    history = db.session.scalar(select(func.count()).select_from(MetadataChange))
    source.proxy.reset()
    again = sync(runner, source)
    assert again.exit_code == 0 and "Synced 0 completions" in again.output
    assert source.proxy.count("/messages") == 0
    db.session.rollback()
    assert dict(db.session.execute(select(Completion.id, Completion.version)).all()) == versions
    assert db.session.scalar(select(func.count()).select_from(MetadataChange)) == history


def test_a_rerun_fetches_only_what_is_new(runner, source: Source) -> None:
    at_source(source, *source_records(30))
    assert sync(runner, source).exit_code == 0
    at_source(source, *source_records(3, start=30))
    source.proxy.reset()
    result = sync(runner, source)
    assert "Synced 3 completions" in result.output and "(3 new or changed, 0 unchanged)" in result.output
    assert source.proxy.count("/messages") == 3
    assert source.proxy.count("after=src-00029") == 1
    assert snapshot() == source_snapshot(source)


def test_full_brings_changed_metadata_without_fetching_messages_again(runner, source: Source, client, auth) -> None:
    at_source(source, *source_records(12))
    assert sync(runner, source).exit_code == 0
    with source.context(), write_transaction() as session:
        store.update_metadata(session, completion_id="src-00004", metadata={"label": "good"}, actor="reviewer")
    assert "Synced 0 completions" in sync(runner, source).output  # incremental: nothing new
    source.proxy.reset()
    result = sync(runner, source, "--full")
    assert result.exit_code == 0 and "(1 new or changed, 11 unchanged)" in result.output
    assert source.proxy.count("/messages") == 0
    assert client.get("/v1/chat/completions/src-00004", headers=auth).get_json()["metadata"] == {"label": "good"}
    latest = store.metadata_history(db.session, completion_id="src-00004")[0]
    assert (latest.actor, latest.after) == ("sync", {"label": "good"})
    assert snapshot() == source_snapshot(source)


def test_deleted_at_the_source_stays_here_and_deleted_here_stays_deleted(runner, source: Source, client, auth) -> None:
    at_source(source, *source_records(6))
    assert sync(runner, source).exit_code == 0
    with source.context(), write_transaction() as session:
        store.delete_completion(session, completion_id="src-00001")
    assert client.delete("/v1/chat/completions/src-00002", headers=auth).status_code == 200
    result = sync(runner, source, "--full")
    assert result.exit_code == 0 and "1 deleted here and left so" in result.output
    assert client.get("/v1/chat/completions/src-00001", headers=auth).status_code == 200
    assert client.get("/v1/chat/completions/src-00002", headers=auth).status_code == 404


def test_filters_mirror_part_of_the_source_and_keep_their_own_position(runner, source: Source) -> None:
    at_source(source, *source_records(20))
    result = sync(runner, source, "--model", "gpt-a", "--metadata", "team=red")
    assert result.exit_code == 0, result.output
    expected = {cid for cid, (obj, _m) in source_snapshot(source).items() if obj["model"] == "gpt-a" and obj["metadata"].get("team") == "red"}
    assert set(snapshot()) == expected and expected
    assert sync(runner, source).exit_code == 0  # the whole source: a position of its own, from the start
    assert snapshot() == source_snapshot(source)
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(SyncSource)) == 2


def test_429_and_500_from_the_source_are_retried(runner, source: Source) -> None:
    at_source(source, *source_records(60))
    source.proxy.reset(fail_every=4)
    result = sync(runner, source)
    assert result.exit_code == 0, result.output
    assert source.proxy.faults[429] >= 5 and source.proxy.faults[500] >= 5
    print(f"\nfigures: sync through {source.proxy.faults[429]} 429s and {source.proxy.faults[500]} 500s: every completion mirrored")
    assert snapshot() == source_snapshot(source)


def test_a_vanished_cursor_walks_the_source_again(runner, source: Source) -> None:
    at_source(source, *source_records(5))
    assert sync(runner, source).exit_code == 0
    at_source(source, *source_records(2, start=5))
    with write_transaction() as session:  # as if the completion our position names had expired there
        session.execute(SyncSource.__table__.update().values(last_id="chatcmpl-expired-at-the-source"))
    source.proxy.reset()
    result = sync(runner, source)
    assert result.exit_code == 0, result.output
    assert "no longer knows chatcmpl-expired-at-the-source" in result.output
    assert "(2 new or changed, 5 unchanged)" in result.output
    assert source.proxy.count("/messages") == 2
    assert snapshot() == source_snapshot(source)


def test_killed_then_run_again_mirrors_everything_once(source: Source, database_url: str) -> None:
    at_source(source, *source_records(400))
    source.proxy.reset(delay=0.01)
    env = {**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY}
    command = [sys.executable, "-m", "flask", "--app", "webapp", "sync", "--from", source.v1, "--api-key", source.key]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        db.session.rollback()
        stored = db.session.scalar(select(func.count()).select_from(Completion)) or 0
        if stored >= 100:
            break
        assert first.poll() is None, first.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert stored < 400, "the sync finished before it could be killed"
    source.proxy.reset()
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert second.returncode == 0, second.stderr.decode()
    assert snapshot() == source_snapshot(source)
    db.session.rollback()
    history = dict(db.session.execute(select(MetadataChange.completion_id, func.count()).group_by(MetadataChange.completion_id)).all())
    assert set(history.values()) == {1} and len(history) == sum(1 for i in range(400) if i % 5)
    print(f"\nfigures: sync of 400 completions killed after {stored} were stored; the rerun fetched {source.proxy.count('/messages')} messages lists")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unreachable", "Could not reach"),
        ("bad key", "refused the API key (401)"),
        ("not the API root", "does not exist (404)"),
    ],
)
def test_a_bad_source_is_a_clear_error(runner, source: Source, case: str, expected: str) -> None:
    base, key = {
        "unreachable": (f"http://127.0.0.1:{free_port()}/v1", source.key),
        "bad key": (source.v1, "cs-not-a-key"),
        "not the API root": (f"{source.proxy.url}/nope", source.key),
    }[case]
    result = runner.invoke(args=["sync", "--from", base, "--api-key", key])
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert key not in result.output


def test_sync_needs_a_url_and_a_key(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert "needs a key" in runner.invoke(args=["sync", "--from", "http://127.0.0.1:1/v1"]).output
    result = runner.invoke(args=["sync", "--from", "ftp://example/v1", "--api-key", "k"])
    assert result.exit_code == 2 and "http://" in result.output
