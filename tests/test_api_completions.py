"""The stored-completions operations through the Flask test client, on every backend."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete as sa_delete
from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy import text as sa_text

from webapp import store, validation
from webapp.extensions import db, write_transaction
from webapp.models import Completion, CompletionMetadata, MetadataChange, MetadataPairCount
from webapp.store import completions, search

from .cases import (
    BAD_LIST_QUERIES,
    BAD_METADATA,
    FILTER_CASES,
    SEARCH_CASES,
    BadMetadata,
    BadQuery,
    FilterCase,
    SearchCase,
    message_of,
)
from .helpers import completion_body, seed

URL = "/v1/chat/completions"


def ids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in body["data"]]


def test_list_returns_the_completion_objects(client: FlaskClient, auth: dict, seeded: list[dict]) -> None:
    response = client.get(URL, headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert ids(body) == [f"c{i}" for i in range(6)]
    assert body["first_id"] == "c0" and body["last_id"] == "c5" and body["has_more"] is False
    expected = {k: v for k, v in seeded[0].items() if k != "messages"}
    assert body["data"][0] == expected


def test_empty_list(client: FlaskClient, auth: dict) -> None:
    assert client.get(URL, headers=auth).get_json() == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False,
    }


@pytest.mark.parametrize("case", FILTER_CASES, ids=lambda c: c.id)
def test_list_filters(client: FlaskClient, auth: dict, seeded: list, case: FilterCase) -> None:
    assert ids(client.get(f"{URL}?{case.api_query()}", headers=auth).get_json()) == case.expected


@pytest.mark.parametrize(
    "query, expected",
    [
        ("order=desc", [f"c{i}" for i in range(5, -1, -1)]),
        ("order=desc&after=c2", ["c1", "c0"]),
        ("after=c2", ["c3", "c4", "c5"]),
        ("limit=2", ["c0", "c1"]),
    ],
)
def test_list_order_and_paging(client: FlaskClient, auth: dict, seeded: list, query: str, expected: list[str]) -> None:
    assert ids(client.get(f"{URL}?{query}", headers=auth).get_json()) == expected


def test_paging_through_ties_never_skips_or_repeats(client: FlaskClient, auth: dict, app) -> None:
    seed(*(completion_body(f"c-{i:02d}", created=1_700_000_000) for i in range(23)))
    for order in ("asc", "desc"):
        seen, after = [], None
        while True:
            query = f"limit=5&order={order}" + (f"&after={after}" if after else "")
            body = client.get(f"{URL}?{query}", headers=auth).get_json()
            seen += ids(body)
            if not body["has_more"]:
                break
            after = body["last_id"]
        expected = [f"c-{i:02d}" for i in range(23)]
        assert seen == (expected if order == "asc" else expected[::-1])


def test_a_deleted_cursor_still_pages_on(client: FlaskClient, auth: dict, seeded: list) -> None:
    assert client.delete(f"{URL}/c1", headers=auth).status_code == 200
    assert ids(client.get(f"{URL}?after=c1", headers=auth).get_json()) == ["c2", "c3", "c4", "c5"]
    assert ids(client.get(f"{URL}?after=c1&order=desc", headers=auth).get_json()) == ["c0"]


def test_an_unknown_cursor_is_a_400(client: FlaskClient, auth: dict, seeded: list) -> None:
    response = client.get(f"{URL}?after=never-existed", headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "after"


def test_the_last_page_after_a_real_cursor_is_empty_not_an_error(client: FlaskClient, auth: dict, seeded: list) -> None:
    body = client.get(f"{URL}?after=c5", headers=auth).get_json()
    assert body["data"] == [] and body["has_more"] is False


@pytest.mark.parametrize("case", BAD_LIST_QUERIES, ids=lambda c: c.id)
def test_bad_list_queries(client: FlaskClient, auth: dict, case: BadQuery) -> None:
    response = client.get(URL, query_string=case.query, headers=auth)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", case.param, case.code)


def test_retrieve_has_an_etag(client: FlaskClient, auth: dict, seeded: list) -> None:
    response = client.get(f"{URL}/c3", headers=auth)
    assert response.status_code == 200
    assert response.get_json()["metadata"] == {"team": "blue", "n": "3"}
    assert response.headers["ETag"] == '"1"'


def test_retrieve_unknown_is_404(client: FlaskClient, auth: dict) -> None:
    response = client.get(f"{URL}/nope", headers=auth)
    assert response.status_code == 404
    assert response.get_json()["error"]["message"] == "No chat completion found with id 'nope'."


def test_update_replaces_the_whole_map_and_records_history(client: FlaskClient, auth: dict, seeded: list) -> None:
    response = client.post(f"{URL}/c0", json={"metadata": {"label": "good"}}, headers=auth)
    assert response.status_code == 200
    assert response.get_json()["metadata"] == {"label": "good"}
    assert response.headers["ETag"] == '"2"'
    assert client.get(f"{URL}/c0", headers=auth).get_json()["metadata"] == {"label": "good"}
    assert ids(client.get(f"{URL}?metadata[label]=good", headers=auth).get_json()) == ["c0"]
    assert ids(client.get(f"{URL}?metadata[team]=red", headers=auth).get_json()) == ["c1", "c2"]
    change = db.session.scalars(select(MetadataChange).where(MetadataChange.actor == "key:test")).one()
    assert (change.completion_id, change.before, change.after) == ("c0", {"team": "red", "n": "0"}, {"label": "good"})


@pytest.mark.parametrize("cleared", [None, {}])
def test_null_or_empty_metadata_clears(client: FlaskClient, auth: dict, seeded: list, cleared: Any) -> None:
    response = client.post(f"{URL}/c0", json={"metadata": cleared}, headers=auth)
    assert response.get_json()["metadata"] == {}
    assert db.session.scalars(select(CompletionMetadata).where(CompletionMetadata.completion_seq == 1)).all() == []


@pytest.mark.parametrize("case", BAD_METADATA, ids=lambda c: c.id)
def test_bad_metadata_on_update_changes_nothing(client: FlaskClient, auth: dict, seeded: list, case: BadMetadata) -> None:
    response = client.post(f"{URL}/c0", json={"metadata": case.metadata}, headers=auth)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", case.param, case.code)
    assert error["message"] == message_of(validation.clean_metadata, case.metadata)
    assert client.get(f"{URL}/c0", headers=auth).get_json()["metadata"] == seeded[0]["metadata"]


def test_if_match_guards_the_update(client: FlaskClient, auth: dict, seeded: list) -> None:
    etag = client.get(f"{URL}/c0", headers=auth).headers["ETag"]
    first = client.post(f"{URL}/c0", json={"metadata": {"a": "1"}}, headers={**auth, "If-Match": etag})
    assert first.status_code == 200
    stale = client.post(f"{URL}/c0", json={"metadata": {"a": "2"}}, headers={**auth, "If-Match": etag})
    assert stale.status_code == 412
    assert stale.get_json()["error"]["code"] == "precondition_failed"
    assert client.get(f"{URL}/c0", headers=auth).get_json()["metadata"] == {"a": "1"}
    fresh = client.post(f"{URL}/c0", json={"metadata": {"a": "3"}}, headers={**auth, "If-Match": first.headers["ETag"]})
    assert fresh.status_code == 200
    star = client.post(f"{URL}/c0", json={"metadata": {"a": "4"}}, headers={**auth, "If-Match": "*"})
    assert star.status_code == 200


def test_delete_then_everything_is_404(client: FlaskClient, auth: dict, seeded: list) -> None:
    response = client.delete(f"{URL}/c2", headers=auth)
    assert response.get_json() == {"object": "chat.completion.deleted", "id": "c2", "deleted": True}
    for method, path in [("get", ""), ("delete", ""), ("get", "/messages")]:
        assert getattr(client, method)(f"{URL}/c2{path}", headers=auth).status_code == 404
    assert client.post(f"{URL}/c2", json={"metadata": {}}, headers=auth).status_code == 404
    assert "c2" not in ids(client.get(URL, headers=auth).get_json())
    assert ids(client.get(f"{URL}?metadata[team]=red", headers=auth).get_json()) == ["c0", "c1"]


def test_reimporting_a_deleted_id_brings_it_back_in_its_place(client: FlaskClient, auth: dict, seeded: list) -> None:
    client.delete(f"{URL}/c2", headers=auth)
    seed(seeded[2])
    assert ids(client.get(URL, headers=auth).get_json()) == [f"c{i}" for i in range(6)]


def test_messages_are_listed_with_ids_and_paged(client: FlaskClient, auth: dict, app) -> None:
    parts = [{"type": "text", "text": "What is "}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, {"type": "text", "text": "this?"}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?", "name": "ann"},
    ]
    seed(completion_body("m1", messages=messages))
    body = client.get(f"{URL}/m1/messages", headers=auth).get_json()
    assert ids(body) == ["m1-0", "m1-1", "m1-2", "m1-3"]
    assert body["data"][0] == {"id": "m1-0", "role": "system", "content": "Be brief.", "name": None, "refusal": None, "content_parts": None}
    assert body["data"][1]["content"] == "What is this?" and body["data"][1]["content_parts"] == parts
    assert body["data"][3]["name"] == "ann"
    page = client.get(f"{URL}/m1/messages?limit=2", headers=auth).get_json()
    assert ids(page) == ["m1-0", "m1-1"] and page["has_more"] is True
    page = client.get(f"{URL}/m1/messages?limit=2&after=m1-1", headers=auth).get_json()
    assert ids(page) == ["m1-2", "m1-3"] and page["has_more"] is False
    page = client.get(f"{URL}/m1/messages?order=desc&limit=3", headers=auth).get_json()
    assert ids(page) == ["m1-3", "m1-2", "m1-1"]
    bad = client.get(f"{URL}/m1/messages?after=m1-9", headers=auth)
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "after"


def test_read_only_key_reads_but_cannot_write(client: FlaskClient, read_only_key: str, seeded: list) -> None:
    headers = {"Authorization": f"Bearer {read_only_key}"}
    assert client.get(URL, headers=headers).status_code == 200
    assert client.get(f"{URL}/c0", headers=headers).status_code == 200
    for response in (
        client.post(f"{URL}/c0", json={"metadata": {}}, headers=headers),
        client.delete(f"{URL}/c0", headers=headers),
    ):
        assert response.status_code == 403
        assert response.get_json()["error"]["code"] == "insufficient_permissions"
    assert client.get(f"{URL}/c0", headers=headers).get_json()["metadata"] == seeded[0]["metadata"]


def test_revoked_key_is_refused(client: FlaskClient, runner, api_key: str) -> None:
    assert runner.invoke(args=["keys", "revoke", "test"]).exit_code == 0
    response = client.get(URL, headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_api_key"


def test_healthz_needs_no_key(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


# --- Search, time range ---------------------------------------------------------------------------


def search_ids(client: FlaskClient, auth: dict, query: list[tuple[str, str]]) -> list[str]:
    response = client.get(URL, query_string=query + [("limit", "100")], headers=auth)
    assert response.status_code == 200, response.get_json()
    return ids(response.get_json())


@pytest.fixture(params=["indexes-drive", "walk-the-order"])
def plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a query can go: driven by a small candidate set from an index, or walking the
    order (every candidate set "large"), where counts are driven by the search index."""
    if request.param == "walk-the-order":
        monkeypatch.setattr(completions, "SELECTIVE_ROWS", 1)
    return request.param


@pytest.mark.parametrize("case", SEARCH_CASES, ids=lambda c: c.id)
def test_search(client: FlaskClient, auth: dict, searchable: list, case: SearchCase, plan: str) -> None:
    assert search_ids(client, auth, case.api_query()) == case.expected
    selection = validation.clean_list_query(case.api_query()).filter
    assert store.count_completions(db.session, filter=selection) == len(case.expected)
    assert store.count_completions(db.session, filter=selection, cap=1) == min(2, len(case.expected))


@pytest.mark.parametrize("case", SEARCH_CASES, ids=lambda c: c.id)
def test_search_finds_the_same_where_trigrams_are_blind_to_cjk(
    client: FlaskClient, auth: dict, searchable: list, case: SearchCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a ``C`` ctype PostgreSQL's pg_trgm makes no trigrams of CJK text, and the CJK pairs
    of a long term narrow instead: the answers stay the same (SQLite has no such case)."""
    monkeypatch.setitem(search._TRIGRAMS_SEE_CJK, db.engine, False)
    assert search_ids(client, auth, case.api_query()) == case.expected
    selection = validation.clean_list_query(case.api_query()).filter
    assert store.count_completions(db.session, filter=selection) == len(case.expected)


@pytest.mark.parametrize("case", FILTER_CASES, ids=lambda c: c.id)
def test_filter_counts(client: FlaskClient, auth: dict, seeded: list, case: FilterCase, plan: str) -> None:
    assert ids(client.get(f"{URL}?{case.api_query()}", headers=auth).get_json()) == case.expected
    selection = validation.clean_filters(model=case.model, metadata=case.metadata)
    assert store.count_completions(db.session, filter=selection, cap=100) == len(case.expected)


def test_a_changed_text_is_found_by_its_new_text_at_once(client: FlaskClient, auth: dict, searchable: list) -> None:
    record = dict(searchable[0])
    record["choices"] = [{**record["choices"][0], "message": {"role": "assistant", "content": "Exchange granted", "refusal": None}}]
    record["messages"] = [{"role": "user", "content": "Swap it"}]
    seed(record)
    assert search_ids(client, auth, [("search", "exchange")]) == ["s-refund"]
    assert search_ids(client, auth, [("search", "refund")]) == ["s-ticket"]


def test_a_term_beside_a_cjk_word_is_counted_after_every_write(client: FlaskClient, auth: dict, searchable: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted from the search index alone (as at scale): a text change, a delete, a purge and a
    revived tombstone each leave SQLite's trigram table (text and gram words) as the text says."""
    monkeypatch.setattr(completions, "SELECTIVE_ROWS", 1)

    def count(terms: str) -> int:
        return store.count_completions(db.session, filter=validation.clean_filters(search=terms))

    assert (count("申请退款 发票"), count("order 发票")) == (1, 0)
    record = dict(searchable[0])
    record["choices"] = [{**record["choices"][0], "message": {"role": "assistant", "content": "发票 for your order", "refusal": None}}]
    seed(record)
    assert (count("order 发票"), count("申请退款 发票"), count("order 票")) == (1, 1, 1)
    assert client.delete(f"{URL}/s-zh", headers=auth).status_code == 200
    assert count("申请退款 发票") == 0
    with write_transaction() as session:
        session.execute(sa_delete(Completion).where(Completion.id == "s-refund"))
    assert count("order 发票") == 0
    seed(searchable[5])
    assert (count("申请退款 发票"), count("order 发票")) == (1, 0)


def test_deleted_and_purged_completions_are_never_found(client: FlaskClient, auth: dict, searchable: list) -> None:
    assert client.delete(f"{URL}/s-zh", headers=auth).status_code == 200
    with write_transaction() as session:
        # What a purge does: the rows go, tombstones included.
        session.execute(sa_delete(Completion).where(Completion.id.in_(["s-ja", "s-gone"])))
    for term in ("退款", "申请退款", "返品", "かしこまりました", "deleted"):
        assert search_ids(client, auth, [("search", term)]) == []
    # The index forgot them too (it only narrows, so this is about its size, not the answers).
    for term in ("退款", "返品した"):
        assert [db.session.scalars(source).all() for source in search.candidate_sources(db.session, (term,))] == [[]]
    seed(searchable[5])
    assert search_ids(client, auth, [("search", "退款")]) == ["s-zh"]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_a_search_one_at_a_time_returns_each_match_once(client: FlaskClient, auth: dict, app, order: str) -> None:
    seed(*(completion_body(f"p-{i:02d}", created=1_700_000_000 + i // 3, content=f"refund {i}" if i % 2 else f"other {i}") for i in range(30)))
    seen, after = [], None
    while True:
        query = [("search", "refund"), ("limit", "1"), ("order", order)] + ([("after", after)] if after else [])
        body = client.get(URL, query_string=query, headers=auth).get_json()
        seen += ids(body)
        if not body["has_more"]:
            break
        after = body["last_id"]
    expected = [f"p-{i:02d}" for i in range(30) if i % 2]
    assert seen == (expected if order == "asc" else expected[::-1])


def test_counts_stop_at_the_cap(app, searchable: list) -> None:
    everything = validation.clean_filters()
    assert store.count_completions(db.session, filter=everything) == len(searchable) - 1
    assert store.count_completions(db.session, filter=everything, cap=5) == 6
    assert store.count_completions(db.session, filter=validation.clean_filters(search="refund")) == 2
    assert store.count_completions(db.session, filter=validation.clean_filters(search="zx refund")) == 0


@pytest.mark.parametrize("walk", [True, False], ids=["along-short-texts", "as-planned"])
@pytest.mark.parametrize("cap", [None, 1, 2, 3, 4, 100])
def test_a_term_beside_a_pair_is_counted_exactly_in_short_and_long_texts(
    client: FlaskClient, auth: dict, app, cap: int | None, walk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL may count the texts an index keeps (up to 1,800 bytes with metadata and model up
    to 600, migration 0012) first, and the others only while below the cap (``walk``: whatever the
    planner expects): together exact up to the cap, deleted ones left out, as every other way
    of counting, beside a pair, a model or dates alike."""
    if walk:
        monkeypatch.setattr(completions, "SHORT_TEXT_MARGIN", 0)
    long = "x" * 2500
    seed(
        completion_body("c-short-1", content="refund please", metadata={"team": "a"}),
        completion_body("c-short-b", content="a refund", metadata={"team": "b"}),
        # 700 Chinese characters are 2,100 bytes (not characters) over the index's 1,800.
        completion_body("c-long-zh", content="退款" * 350 + " refund", metadata={"team": "a"}),
        # A short text, but metadata over the index's 600 bytes of JSON and model: counted with the long ones.
        completion_body("c-big-meta", content="refund", metadata={"team": "a", "note": "n" * 450}),
        completion_body("c-short-2", content="Refunds", metadata={"team": "a", "shard": "s"}),
        completion_body("c-long-1", content=f"REFUND {long}", metadata={"team": "a"}),
        completion_body("c-long-b", content=f"refund {long}", metadata={"team": "b"}),
        completion_body("c-long-gone", content=f"refund {long}", metadata={"team": "a"}),
        completion_body("c-long-none", content=long, metadata={"team": "a"}),
    )
    assert client.delete(f"{URL}/c-long-gone", headers=auth).status_code == 200

    def count(terms: str, **narrower: object) -> int:
        selection = validation.clean_filters(search=terms, metadata=[("team", "a")], **narrower)  # type: ignore[arg-type]
        return store.count_completions(db.session, filter=selection, cap=cap)

    capped = lambda n: n if cap is None else min(n, cap + 1)  # noqa: E731
    assert count("refund") == capped(5)
    assert count("退款 refund") == capped(1)
    assert count("refund xxx") == capped(1)
    assert count("refunds") == capped(1)
    model = completion_body("c-short-1", content="-")["model"]
    assert count("refund", model=model, created_after="1") == capped(5)
    assert count("refund", model=model + "-other") == count("refund", created_before="1") == 0


def test_sqlite_counts_a_search_beside_a_pair_from_the_matches_in_a_store_never_analyzed(
    app, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store starts without planner statistics (nothing runs ANALYZE): a count of search terms
    beside a pair must still run the search once and look each match's pair up by its
    completion, never run the search once per completion holding the pair (74 s for a capped
    count at a million rows)."""
    if backend != "sqlite":
        pytest.skip("SQLite's join order; PostgreSQL's planner has its statistics")
    seed(*(completion_body(f"c-{i}", content="我想申请退款 refund" if i % 2 else "other", metadata={"team": "a", "n": str(i)}) for i in range(6)))
    assert db.session.scalar(sa_text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")) == 0
    monkeypatch.setattr(completions, "SELECTIVE_ROWS", 1)  # every index "large": counted from the search indexes
    statements: list[tuple[str, Any]] = []

    def seen(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if " MATCH " in statement and "completion_metadata" in statement:
            statements.append((statement, parameters))

    sa_event.listen(db.engine, "before_cursor_execute", seen)
    try:
        for terms in ("退款", "refund", "退款 refund", "申请退款 fu"):
            selection = validation.clean_filters(search=terms, metadata=[("team", "a")])
            assert store.count_completions(db.session, filter=selection, cap=10_000) == 3
            selection = validation.clean_filters(search=terms, metadata=[("team", "a"), ("n", "3")])
            assert store.count_completions(db.session, filter=selection, cap=10_000) == 1
    finally:
        sa_event.remove(db.engine, "before_cursor_execute", seen)
    assert len(statements) == 8
    for statement, parameters in statements:
        steps = [row[-1] for row in db.session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
        loops = [step for step in steps if step.startswith(("SCAN", "SEARCH")) and "anon" not in step]
        assert loops[0].startswith("SCAN completions_") and "VIRTUAL TABLE" in loops[0], steps
        # Then each match is looked up: its pairs (and, for a term no index decides, its text) by its seq.
        assert all("completion_seq=?" in step or "(rowid=?)" in step for step in loops[1:]), steps


def test_the_metadata_pair_counts_follow_every_write(client: FlaskClient, auth: dict, seeded: list) -> None:
    """What the database keeps for "these two pairs never meet" equals a fresh count after creates, updates, deletes and a purge."""
    client.post(f"{URL}/c0", json={"metadata": {"team": "blue", "n": "4", "x": "1"}}, headers=auth)
    client.post(f"{URL}/c1", json={"metadata": None}, headers=auth)
    client.delete(f"{URL}/c2", headers=auth)
    seed(completion_body("c9", metadata={"team": "red", "n": "4"}), {**seeded[3], "metadata": {"team": "red"}})
    with write_transaction() as session:
        session.execute(sa_delete(Completion).where(Completion.id == "c5"))
    fresh = db.session.execute(
        sa_text(
            "SELECT a.key, a.value, b.key, b.value, count(*) FROM completion_metadata a JOIN completion_metadata b "
            "ON b.completion_seq = a.completion_seq AND a.key < b.key GROUP BY a.key, a.value, b.key, b.value"
        )
    ).all()
    kept = db.session.execute(select(MetadataPairCount.key_a, MetadataPairCount.value_a, MetadataPairCount.key_b, MetadataPairCount.value_b, MetadataPairCount.count).where(MetadataPairCount.count > 0)).all()
    assert sorted(map(tuple, kept)) == sorted(map(tuple, fresh))
    assert ids(client.get(f"{URL}?metadata[team]=blue&metadata[n]=4", headers=auth).get_json()) == ["c0", "c4"]
    assert ids(client.get(f"{URL}?metadata[team]=red&metadata[n]=4", headers=auth).get_json()) == ["c9"]


@pytest.mark.parametrize(
    "pairs",
    [[("team", "red")], [("team", "blue")], [("team", "red"), ("n", "2")], [("team", "blue"), ("n", "0")], [("n", "1"), ("team", "red")]],
    ids=lambda pairs: "&".join(f"{k}={v}" for k, v in pairs),
)
def test_metadata_counts_agree_with_the_list_after_deletes_purges_and_changes(
    client: FlaskClient, auth: dict, seeded: list, pairs: list[tuple[str, str]]
) -> None:
    """One or two metadata pairs are counted from the metadata tables alone (no completion is read):
    a delete, a purge and a metadata change must leave them agreeing with the list."""
    client.delete(f"{URL}/c1", headers=auth)
    client.post(f"{URL}/c0", json={"metadata": {"team": "blue", "n": "0"}}, headers=auth)
    with write_transaction() as session:
        assert store.purge_batch(session, filter=validation.clean_filters(metadata=[("n", "3")]), created_before=2_000_000_000, limit=10) == ["c3"]
    listed = search_ids(client, auth, [(f"metadata[{key}]", value) for key, value in pairs])
    selection = validation.clean_filters(metadata=pairs)
    assert store.count_completions(db.session, filter=selection) == len(listed)
    assert store.count_completions(db.session, filter=selection, cap=1) == min(2, len(listed))
