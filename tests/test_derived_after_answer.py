"""A create's derived data, written just after its answer (migration 0015).

On SQLite a create through the API commits its completion (metadata included) and its history,
and marks it pending instead of writing its search index entries, rollup counts and metadata
filter rows (with their pair counts); every ``PENDING_BATCH``-th create of a process writes what
is pending after its answer, and every transaction writes it first when it begins. So no reader
ever sees a stored completion unsearchable, uncounted or unfiltered, and no UPDATE or DELETE
trigger meets a row the index does not hold. On PostgreSQL a create keeps everything in its own
transaction; the end-to-end tests run on both backends.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import sqlalchemy as sa

from webapp import store, validation
from webapp.api import create as create_view
from webapp.extensions import db, keep_pending_derived_data, write_connection, write_transaction
from webapp.store import derived
from webapp.store.overview import DAY, HOUR, Usage
from webapp.upstream import EXTENSION_KEY

from .helpers import LiveServer
from .sdk import sdk_client
from .test_api_create import store_server, upstream_double  # noqa: F401 (the store in front of an upstream double)
from .test_import_derived import assert_consistent
from .test_overview_rollup import T0, assert_no_drift, record
from .upstream_double import MODEL, Choice, Scripted, UpstreamDouble

WORD = "quixotically"
METADATA = {"team": "a", "lang": "en"}


def keep(completion_id: str, *, created: int = T0 + 10, words: str = WORD, usage: tuple[int, int] = (10, 5)) -> str:
    """Store a completion as a create through the API does (``_save``); return the id it is stored under."""
    body = record(completion_id, created=created, usage=usage)
    body["choices"][0]["message"]["content"] = f"an answer said {words}"
    messages = [{"role": "user", "content": "ask"}]
    with write_connection() as writer:
        return store.create_completion(writer, body=body, messages=messages, metadata=METADATA, actor="key:test")


def raw(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` on a driver connection of its own, outside SQLAlchemy's transactions (which write pending rows first)."""
    connection = db.engine.raw_connection()
    try:
        cursor = connection.cursor()
        rows = cursor.execute(sql, params).fetchall()
        connection.commit()
        return rows
    finally:
        connection.close()


def assert_whole() -> None:
    """Nothing is pending, and every derived table agrees with the completions (the metadata rows too)."""
    assert pending() == []
    assert_consistent("sqlite")
    assert_no_drift()
    expanded = raw(
        "SELECT c.seq, m.key, m.value FROM completions AS c, json_each(c.metadata) AS m WHERE NOT c.deleted ORDER BY 1, 2"
    )
    assert raw("SELECT completion_seq, key, value FROM completion_metadata ORDER BY 1, 2") == expanded


def pending() -> list[int]:
    return [seq for (seq,) in raw("SELECT seq FROM derived_data_pending ORDER BY seq")]


def indexed(word: str = WORD) -> list[int]:
    """The seqs the trigram index finds ``word`` in, read without writing pending rows first."""
    return [rowid for (rowid,) in raw("SELECT rowid FROM completions_search WHERE completions_search MATCH ? ORDER BY rowid", f'"{word}"')]


def found(word: str = WORD) -> list[str]:
    """The ids a search for ``word`` lists (the store's own search, in a transaction of the session)."""
    db.session.rollback()
    query = validation.clean_list_query([("search", word), ("order", "asc"), ("limit", "100")])
    return [row.id for row in store.list_completions(db.session, filter=query.filter, page=query.page).rows]


@pytest.fixture
def sqlite_only(backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("PostgreSQL keeps a create's derived data in its own transaction: nothing is pending")


def test_a_create_marks_its_completion_pending_and_the_next_transaction_writes_its_derived_data(app, sqlite_only) -> None:
    keep("chatcmpl-a")
    keep("chatcmpl-b", created=T0 + HOUR + 1, usage=(7, 1))
    # Committed with its metadata and history; not indexed, counted or filterable yet.
    assert pending() == [1, 2]
    assert indexed() == []
    assert raw("SELECT count(*) FROM completion_rollup") == [(0,)]
    assert raw("SELECT count(*) FROM completion_metadata") == [(0,)]
    assert raw("SELECT count(*) FROM metadata_pair_counts") == [(0,)]
    assert raw("SELECT count(*) FROM metadata_changes") == [(2,)]
    assert raw("SELECT count(*) FROM completions WHERE metadata IS NOT NULL") == [(2,)]
    # A reader's transaction writes them first (as after a server that stopped before it did).
    assert found() == ["chatcmpl-a", "chatcmpl-b"]
    assert pending() == [] and indexed() == [1, 2]
    assert raw("SELECT key_a, value_a, key_b, value_b, count FROM metadata_pair_counts") == [("lang", "en", "team", "a", 2)]
    assert assert_no_drift() == {
        (HOUR, T0, "gpt-a"): Usage(1, 10, 5),
        (HOUR, T0 + HOUR, "gpt-a"): Usage(1, 7, 1),
        (DAY, T0, "gpt-a"): Usage(2, 17, 6),
    }
    assert_whole()


def test_a_filter_by_metadata_finds_a_pending_completion(app, client, auth, sqlite_only) -> None:
    keep("chatcmpl-a")
    response = client.get("/v1/chat/completions", query_string={"metadata[team]": "a", "metadata[lang]": "en"}, headers=auth)
    assert [c["id"] for c in response.get_json()["data"]] == ["chatcmpl-a"]
    assert_whole()


def test_keep_pending_derived_data_writes_them_in_a_transaction_of_its_own(app, sqlite_only) -> None:
    keep("chatcmpl-a")
    keep_pending_derived_data()
    assert pending() == [] and indexed() == [1]
    keep_pending_derived_data()  # nothing pending: nothing to do
    assert indexed() == [1]
    assert_whole()


def test_a_write_transaction_writes_them_first_and_keeps_them_pending_when_it_fails(app, sqlite_only) -> None:
    keep("chatcmpl-a")
    with pytest.raises(RuntimeError), write_transaction():
        raise RuntimeError("the write fails")
    assert pending() == [1] and indexed() == []
    with write_transaction() as session:
        store.update_metadata(session, completion_id="chatcmpl-a", metadata={"team": "b"}, actor="test")
    assert pending() == [] and indexed() == [1]
    assert_whole()


def test_when_writing_them_fails_a_reader_goes_on_without_and_a_writer_fails(app, sqlite_only, monkeypatch, caplog) -> None:
    keep("chatcmpl-a")

    def failing(_connection: Any) -> None:
        raise sa.exc.OperationalError("INSERT", (), Exception("database is locked"))

    monkeypatch.setattr(derived, "_keep_pending", failing)
    assert found() == []  # the reader reads, without the pending completion
    assert "reads without them" in caplog.text
    with pytest.raises(sa.exc.OperationalError), write_transaction():
        pass
    monkeypatch.undo()
    assert found() == ["chatcmpl-a"]
    assert_whole()


def test_a_reader_writes_at_most_settle_attempts_times_when_creates_keep_coming(app, sqlite_only, monkeypatch) -> None:
    keep("chatcmpl-0")
    checks = []
    original = derived._pending

    def after_another_create(connection: Any) -> bool:
        # Between the reader's write and its next snapshot, a create on another connection commits.
        if checks:
            keep(f"chatcmpl-{len(checks)}")
        checks.append(1)
        return original(connection)

    monkeypatch.setattr(derived, "_pending", after_another_create)
    listed = found()
    assert len(checks) == derived.SETTLE_ATTEMPTS  # bounded, though there was always one more
    assert listed == [f"chatcmpl-{i}" for i in range(derived.SETTLE_ATTEMPTS)]
    monkeypatch.undo()
    assert_whole()


@pytest.mark.parametrize("change", ["delete", "purge", "update", "import"])
def test_a_pending_completion_changed_by_any_writer_stays_sound(app, client, auth, sqlite_only, change: str, runner, tmp_path) -> None:
    keep("chatcmpl-a")
    keep("chatcmpl-b", words="other words")
    if change == "delete":
        assert client.delete("/v1/chat/completions/chatcmpl-a", headers=auth).status_code == 200
        expected: list[str] = []
    elif change == "update":
        assert client.post("/v1/chat/completions/chatcmpl-a", json={"metadata": {"x": "1"}}, headers=auth).status_code == 200
        expected = ["chatcmpl-a"]
    elif change == "purge":
        result = runner.invoke(args=["purge", "--older-than", "0", "--yes"])
        assert result.exit_code == 0, result.output
        expected = []
    else:
        # The import upserts by id: the pending row takes the imported text instead.
        line = record("chatcmpl-a", created=T0 + 20)
        line["choices"][0]["message"]["content"] = f"imported text, {WORD} again"
        path = tmp_path / "one.jsonl"
        path.write_text(json.dumps(line) + "\n")
        result = runner.invoke(args=["import", str(path)])
        assert result.exit_code == 0, result.output
        expected = ["chatcmpl-a"]
    assert found() == expected
    assert found("other words") == ([] if change == "purge" else ["chatcmpl-b"])
    # The contentless index agrees with itself (FTS5 refuses a delete of what it never held).
    assert_whole()


def test_every_pending_batch_th_create_writes_them_after_its_answer(app, client, auth, sqlite_only, monkeypatch, upstream_double) -> None:
    monkeypatch.setattr(create_view, "PENDING_BATCH", 3)
    monkeypatch.setattr(create_view, "_stored_creates", itertools.count())
    monkeypatch.delitem(app.extensions, EXTENSION_KEY, raising=False)
    monkeypatch.setitem(app.config, "UPSTREAM_BASE_URL", upstream_double.url)
    upstream_double.reset(Scripted(choices=(Choice(content=(f"said {WORD}",)),)))
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "store": True}
    for count in (1, 2):
        with client.post("/v1/chat/completions", json=request, headers=auth) as response:
            assert response.status_code == 200
        assert len(pending()) == count and indexed() == []
    with client.post("/v1/chat/completions", json=request, headers=auth) as response:
        assert response.status_code == 200
    # The third create's answer has been closed: all three are indexed and counted.
    assert pending() == [] and indexed() == [1, 2, 3]
    assert_whole()


# --- End to end: gunicorn, the SDK, and a reader at once after the create (both backends) ------


def test_a_created_completion_is_found_and_counted_by_the_very_next_request(
    app, store_server: LiveServer, api_key: str, upstream_double: UpstreamDouble
) -> None:
    upstream_double.reset(Scripted(choices=(Choice(content=(f"the answer is {WORD}",)),)))
    sdk = sdk_client(store_server.v1, api_key)
    created = [
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"question {i}"}], store=True, metadata={"i": str(i)})
        for i in range(5)
    ]
    # Straight after the answers, on the same connection and on a new one.
    listed = sdk.chat.completions.list(extra_query={"search": WORD}, limit=100)
    assert sorted(c.id for c in listed) == sorted(c.id for c in created)
    fresh = sdk_client(store_server.v1, api_key)
    assert [c.id for c in fresh.chat.completions.list(extra_query={"search": "question 3"})] == [created[3].id]
    assert [c.id for c in fresh.chat.completions.list(metadata={"i": "4"})] == [created[4].id]
    counted = assert_no_drift()
    assert sum(usage.completions for (span, _start, _model), usage in counted.items() if span == DAY) == 5
    if db.engine.dialect.name == "sqlite":
        assert_whole()
