"""The admin list at ``/``: filters kept in the URL, keyset paging and the export download (bulk changes: test_admin_bulk.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import event

from webapp import validation
from webapp.admin.views import PAGE_SIZE
from webapp.extensions import db

from .admin_helpers import Admin, element, form_fields, metadata_of, text
from .cases import FILTER_CASES, SEARCH_CASES, FilterCase, SearchCase, message_of
from .helpers import completion_body, seed


def listed(page: str) -> list[str]:
    """Return the completion ids a list page shows, top to bottom (from the bulk checkboxes)."""
    import html

    return [html.unescape(value) for value in re.findall(r'name="ids" value="([^"]*)"', page)]


def link(page: str, rel: str) -> str | None:
    """Return the href of the pager's ``rel`` link (prev: newer, next: older), or None."""
    import html

    match = re.search(rf'rel="{rel}" href="([^"]+)"', page)
    return html.unescape(match.group(1)) if match else None


def test_the_list_shows_the_newest_first_with_what_each_says(admin: Admin, seeded: list) -> None:
    page = admin.page("/")
    assert listed(page) == ["c5", "c4", "c3", "c2", "c1", "c0"]
    row = text(page[page.index('value="c5"') : page.index('value="c4"')])
    assert "gpt-a" in row and "Say hello (c5)" in row and "Reply number 5" in row and "team blue" in row and "n 5" in row
    assert '<time datetime="2023-11-14T22:13:25Z" title="2023-11-14T22:13:25Z">14 Nov 2023, 22:13 UTC</time>' in page
    assert link(page, "prev") is None and link(page, "next") is None


def test_long_messages_are_cut_short_in_the_list(admin: Admin) -> None:
    seed(completion_body("long", content="word " * 200, messages=[{"role": "user", "content": "question " * 100}]))
    row = text(admin.page("/"))
    assert "question question" in row and "…" in row
    assert "question " * 20 not in row


def test_the_model_select_offers_the_models_present(admin: Admin, seeded: list) -> None:
    page = admin.page("/")
    assert re.findall(r'<option value="(gpt-[ab])"', page) == ["gpt-a", "gpt-b"]
    assert '<option value="gpt-a" selected>' in admin.page("/?model=gpt-a")


@pytest.mark.parametrize("case", FILTER_CASES, ids=lambda c: c.id)
def test_filters_live_in_the_url(admin: Admin, seeded: list, case: FilterCase) -> None:
    page = admin.page(f"/?{case.admin_query()}")
    assert listed(page) == case.expected[::-1]
    if not case.expected:
        assert "No completions match this filter." in text(page)


def test_blank_filter_inputs_are_ignored(admin: Admin, seeded: list) -> None:
    assert listed(admin.page("/?metadata=&metadata=team%3Dblue&metadata=")) == ["c5", "c4", "c3"]


def test_the_filter_form_shows_the_current_filter_and_a_spare_input(admin: Admin, seeded: list) -> None:
    page = admin.page("/?metadata=team%3Dred&metadata=n%3D1")
    assert 'value="team=red"' in page and 'value="n=1"' in page
    assert 'id="filter-metadata-2"' in page, "one empty input to add a filter"
    assert '<label for="filter-metadata-0" class="visually-hidden">' in page


@pytest.mark.parametrize(
    "query, message",
    [
        ("metadata=team", "Invalid metadata filter 'team': write it as KEY=VALUE."),
        ("metadata=" + "k" * 65 + "%3Dv", "Invalid 'metadata." + "k" * 65 + "': property name too long."),
        ("metadata=topic%3D" + "x" * 513, "Invalid 'metadata.topic': string too long."),
        ("&".join(f"metadata=k{i}%3Dv" for i in range(17)), "Invalid 'metadata': too many properties."),
    ],
)
def test_a_bad_filter_is_shown_beside_its_input(admin: Admin, seeded: list, query: str, message: str) -> None:
    response = admin.get(f"/?{query}")
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert message in text(page)
    assert listed(page) == []
    if "too many" not in message:
        assert message in element(page, "filter-metadata-0-error")
        assert re.search(r'aria-describedby="filter-metadata-0-error" aria-invalid="true"', page)


def test_the_filter_messages_are_the_apis(admin: Admin, seeded: list) -> None:
    message = message_of(validation.clean_list_query, [(f"metadata[{'k' * 65}]", "v")])
    assert message in text(admin.get("/?metadata=" + "k" * 65 + "%3Dv").get_data(as_text=True))


def walk(admin: Admin, url: str | None, rel: str) -> Iterator[tuple[str, list[str]]]:
    """Follow the pager's ``rel`` links from ``url``; yield each page's URL and ids."""
    while url:
        page = admin.page(url)
        yield url, listed(page)
        url = link(page, rel)


def test_paging_older_then_newer_never_skips_or_repeats(admin: Admin, many: list[str]) -> None:
    older = list(walk(admin, "/", "next"))
    assert [len(ids) for _, ids in older] == [PAGE_SIZE, PAGE_SIZE, 7]
    assert sum((ids for _, ids in older), []) == many
    last_url = older[-1][0]
    newer = list(walk(admin, link(admin.page(last_url), "prev"), "prev"))
    assert [ids for _, ids in newer] == [older[1][1], older[0][1]]
    assert link(admin.page("/"), "prev") is None, "the first page has nothing newer"


def test_paging_keeps_the_filter(admin: Admin, many: list[str]) -> None:
    pages = [ids for _, ids in walk(admin, "/?metadata=even%3DTrue", "next")]
    expected = [i for i in many if int(i[1:]) % 2 == 0]
    assert sum(pages, []) == expected and len(pages) == 2


def test_a_page_is_one_query_and_counts_only_up_to_a_cap(admin: Admin, many: list[str]) -> None:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        admin.page(f"/?after={many[PAGE_SIZE - 1]}&metadata=even%3DTrue&model=gpt-test")
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    selects = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    # The store may probe how selective a filter is, but only ever counts up to a small LIMIT.
    assert not [s for s in selects if "count(" in s.lower() and "LIMIT" not in s], "no count of the whole table"
    pages = [s for s in selects if re.search(r"FROM completions\b", s) and "LIMIT" in s and "count(" not in s.lower()]
    assert len(pages) == 1, pages


def test_a_cursor_that_never_existed_goes_back_to_the_newest(admin: Admin, seeded: list) -> None:
    response = admin.get("/?after=never-existed&model=gpt-a")
    assert response.status_code == 302 and response.headers["Location"] == "/?model=gpt-a"
    assert "That page of the list no longer exists" in text(admin.page("/?model=gpt-a"))


def test_an_empty_store_says_how_to_fill_it(admin: Admin) -> None:
    assert "No completions are stored yet." in text(admin.page("/"))


# --- Export -----------------------------------------------------------------------------


def lines(response: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def test_export_downloads_the_filtered_completions_in_store_format(admin: Admin, seeded: list) -> None:
    response = admin.get("/export?format=store&metadata=team%3Dred&model=gpt-a")
    assert response.status_code == 200 and response.mimetype == "application/jsonl"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="completions-store-')
    assert response.is_streamed
    assert lines(response) == [seeded[1]]


def test_export_in_chat_format(admin: Admin, seeded: list) -> None:
    records = lines(admin.get("/export?format=chat&metadata=n%3D4"))
    assert records == [{"messages": [*seeded[4]["messages"], {"role": "assistant", "content": "Reply number 4"}]}]


def test_the_download_can_leave_out_replies_cut_off_by_the_length_limit(admin: Admin, seeded: list) -> None:
    cut = completion_body("cut", created=1_700_000_010, content="It all began when")
    cut["choices"][0]["finish_reason"] = "length"
    seed(cut)
    assert "cut" in [r["id"] for r in lines(admin.get("/export?format=store"))]
    assert [r["messages"][-1]["content"] for r in lines(admin.get("/export?format=chat&skip_truncated=1"))] == [
        f"Reply number {i}" for i in range(6)
    ]
    assert 'name="skip_truncated" value="1"' in admin.page("/")


def test_export_of_everything(admin: Admin, seeded: list) -> None:
    assert [r["id"] for r in lines(admin.get("/export"))] == [f"c{i}" for i in range(6)]


def test_the_export_form_carries_the_current_filter(admin: Admin, seeded: list) -> None:
    page = admin.page("/?model=gpt-a&metadata=team%3Dred")
    form = page[page.index('action="/export"') : page.index("</form>", page.index('action="/export"'))]
    assert 'name="model" value="gpt-a"' in form and 'name="metadata" value="team=red"' in form


@pytest.mark.parametrize("query", ["format=xml", "metadata=broken"])
def test_a_bad_export_request_goes_back_to_the_list(admin: Admin, seeded: list, query: str) -> None:
    response = admin.get(f"/export?{query}")
    assert response.status_code == 302


# --- Search, dates, count, excerpts ---------------------------------------------------------


@pytest.mark.parametrize("case", SEARCH_CASES, ids=lambda c: c.id)
def test_the_list_finds_what_the_api_finds(admin: Admin, searchable: list, case: SearchCase) -> None:
    query = urlencode([("search", case.search)] + [(name, value) for name, value in case.extra if not name.startswith("metadata[")]
                      + [("metadata", f"{name[9:-1]}={value}") for name, value in case.extra if name.startswith("metadata[")])
    page = admin.page(f"/?{query}")
    assert listed(page) == case.expected[::-1]
    count = len(case.expected)
    noun = ("match" if count == 1 else "matches") if (case.search.strip() or case.extra) else "completions"
    assert text(element(page, "match-count")) == f"{count} {noun}"


def test_each_row_shows_the_first_match_marked(admin: Admin, searchable: list) -> None:
    page = admin.page("/?search=REFUND")
    assert "I want a <mark>REFUND</mark> for my order" in page
    assert "Is this ticket non<mark>refund</mark>able?" in page
    assert "<mark>退款</mark>" in admin.page("/?search=退款")
    assert "Stra<mark>ße</mark>" in admin.page("/?search=SSE")
    assert 'name="search" id="filter-search" value="REFUND"' in page


def test_an_excerpt_is_escaped(admin: Admin, app) -> None:
    seed(completion_body("x1", content='<script>alert("refund")</script>' + " tail" * 40))
    page = admin.page("/?search=refund")
    assert '&lt;script&gt;alert(&#34;<mark>refund</mark>&#34;)&lt;/script&gt; tail' in page
    assert "<script>alert" not in page


def test_the_count_stops_at_the_cap(admin: Admin, app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("webapp.admin.views.COUNT_CAP", 3)
    seed(*(completion_body(f"n{i}", content=f"refund {i}") for i in range(5)))
    assert text(element(admin.page("/?search=refund"), "match-count")) == "3+ matches"
    assert text(element(admin.page("/?search=refund%201"), "match-count")) == "1 match"
    assert text(element(admin.page("/"), "match-count")) == "3+ completions"


def test_dates_are_utc_days_and_the_to_day_is_included(admin: Admin, app) -> None:
    day = 1_760_000_000 - 1_760_000_000 % 86_400  # 2025-10-09 00:00 UTC
    seed(*(completion_body(f"d{i}", created=day + offset) for i, offset in enumerate([-1, 0, 86_399, 86_400])))
    response = admin.get("/?search=&created_after=2025-10-09&created_to=2025-10-09")
    assert response.status_code == 302
    assert response.headers["Location"] == "/?created_after=2025-10-09&created_before=2025-10-10"
    page = admin.page(response.headers["Location"])
    assert listed(page) == ["d2", "d1"]
    assert 'id="filter-from" value="2025-10-09"' in page and 'id="filter-to" value="2025-10-09"' in page
    assert listed(admin.page(f"/?created_after={day}&created_before={day + 86_400}")) == ["d2", "d1"]
    assert admin.get("/?created_to=2025-10-08").headers["Location"] == "/?created_before=2025-10-09"


@pytest.mark.parametrize(
    "query, field, param",
    [
        ("created_after=yesterday", "filter-from", "created_after"),
        ("created_before=2025-02-30", "filter-to", "created_before"),
        ("search=" + "x" * 257, "filter-search", "search"),
    ],
)
def test_a_bad_search_or_date_is_shown_beside_its_input(admin: Admin, searchable: list, query: str, field: str, param: str) -> None:
    response = admin.get(f"/?{query}")
    page = response.get_data(as_text=True)
    value = query.partition("=")[2]
    assert response.status_code == 400 and listed(page) == []
    assert element(page, f"{field}-error")
    assert text(element(page, f"{field}-error")) == message_of(
        lambda v: validation.clean_filters(days=True, **{param: v}), value
    )


def test_downloads_and_bulk_changes_take_the_whole_filter(admin: Admin, searchable: list) -> None:
    query = "search=refund&created_before=" + str(1_700_100_001)
    page = admin.page(f"/?{query}")
    form = page[page.index('action="/export"') : page.index("</form>", page.index('action="/export"'))]
    assert 'name="search" value="refund"' in form and 'name="created_before" value="1700100001"' in form
    assert [r["id"] for r in lines(admin.get(f"/export?{query}"))] == ["s-refund"]
    bulk_form = form_fields(page, "/bulk")
    assert ("search", "refund") in bulk_form and ("created_before", "1700100001") in bulk_form
    fields = [(name, value) for name, value in bulk_form if name not in ("key", "value", "scope", "action")]
    confirmation = admin.post("/bulk", dict(fields) | {"action": "set", "key": "label", "value": "refunds", "scope": "all"})
    assert confirmation.status_code == 200, confirmation.get_data(as_text=True)
    response = admin.post("/bulk/apply", form_fields(confirmation.get_data(as_text=True), "/bulk/apply"))
    assert response.status_code == 303 and "search=refund" in response.headers["Location"]
    assert metadata_of("s-refund")["label"] == "refunds" and "label" not in metadata_of("s-ticket")


# --- Getting around: a completion opened from the list knows its place -------------------


def test_a_row_opens_its_completion_with_the_lists_filter_and_cursor(admin: Admin, seeded: list) -> None:
    page = admin.page("/?metadata=team+%3D+blue&after=c5")  # spaces around the parts are dropped
    assert 'href="/completions/c4?metadata=team%3Dblue&amp;after=c5"' in page


def test_previous_and_next_stay_within_the_filter_and_order(admin: Admin, seeded: list) -> None:
    detail = admin.page("/completions/c4?metadata=team%3Dblue&after=c5")
    assert link(detail, "prev") == "/completions/c5?metadata=team%3Dblue&after=c5"
    assert link(detail, "next") == "/completions/c3?metadata=team%3Dblue&after=c5"
    last = admin.page("/completions/c3?metadata=team%3Dblue&after=c5")
    assert link(last, "next") is None, "c2 is not in the filter"
    assert 'id="back-to-list" href="/?metadata=team%3Dblue&amp;after=c5"' in last, "back to the same list page"
    everything = admin.page("/completions/c3")
    assert (link(everything, "prev"), link(everything, "next")) == ("/completions/c4", "/completions/c2")


def test_saving_and_deleting_keep_the_place_in_the_list(admin: Admin, seeded: list) -> None:
    from .admin_helpers import metadata_form

    saved = admin.post("/completions/c4?model=gpt-b&after=c5", metadata_form({"team": "blue"}, version=1, save="1"))
    assert saved.status_code == 303 and saved.headers["Location"] == "/completions/c4?model=gpt-b&after=c5"
    confirm = admin.page("/delete/c4?model=gpt-b&after=c5")
    assert 'href="/?model=gpt-b&amp;after=c5"' in confirm
    deleted = admin.post("/delete/c4?model=gpt-b&after=c5")
    assert deleted.headers["Location"] == "/?model=gpt-b&after=c5"


def test_a_long_metadata_value_is_cut_in_the_list_and_whole_on_hover_and_on_its_page(admin: Admin) -> None:
    value = "v" * 200 + " end"
    seed(completion_body("long", metadata={"note": value, "k" * 64: "short"}))
    page = admin.page("/")
    assert f'<span class="pair-value" title="{value}">' in page
    assert value not in text(page) and "vvvv…" in text(page)
    assert value in text(admin.page("/completions/long")), "whole on the completion's page"
