"""The overview at ``/overview``: totals, per-day and per-hour numbers by model for every filter,
charts whose bars link to the list, empty and single-day ranges, and its links from the list and nav."""

from __future__ import annotations

import html
import re
import time
from datetime import date, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from webapp import store, validation
from webapp.extensions import write_transaction

from .admin_helpers import Admin, element
from .cases import message_of
from .helpers import seed
from .test_overview_rollup import record

T0 = 1_767_225_600  # Thursday 1 January 2026 00:00:00 UTC
H, D = 3600, 86400


@pytest.fixture
def usage(app) -> None:
    """Four days, three models, known usage; one more completion deleted."""
    seed(
        record("a1", created=T0 + 10 * H, model="gpt-a", usage=(100, 10), metadata={"team": "red"}),
        record("a2", created=T0 + 11 * H + 1800, model="gpt-a", usage=(50, 5), metadata={"team": "blue"}),
        record("b1", created=T0 + D + 9 * H, model="gpt-b", usage=(20, 2), metadata={"team": "red"}),
        record("a3", created=T0 + 3 * D, model="gpt-a", usage=(1, 1), metadata={"team": "red"}),
        record("c1", created=T0 + 4 * D - 1, model="gpt-c", usage=(7, 3), metadata={"team": "blue"}),
        record("gone", created=T0 + 2 * D, model="gpt-a", usage=(1000, 1000)),
    )
    with write_transaction() as session:
        store.delete_completion(session, completion_id="gone")


def totals(page: str) -> str:
    """Return the three totals as read: ``Completions 5 Prompt tokens 178 Completion tokens 21``."""
    return " ".join(f"{label} {value}" for label, value in re.findall(r'<dt>(.*?)</dt>\s*<dd class="stat-value">(.*?)</dd>', page))


def rows(page: str, table_id: str) -> list[list[str]]:
    """Return the text of each body row of a table: its header cell, then its figures."""
    match = re.search(rf'<table[^>]*id="{table_id}".*?<tbody>(.*?)</tbody>', page, re.S)
    assert match, f"no table {table_id}"
    cells = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)]
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in row] for row in cells]


def columns(page: str, table_id: str) -> list[str]:
    match = re.search(rf'<table[^>]*id="{table_id}".*?<thead>(.*?)</thead>', page, re.S)
    assert match
    return [html.unescape(cell) for cell in re.findall(r"<th[^>]*>(.*?)</th>", match.group(1))]


def bar_links(page: str) -> dict[str, dict[str, list[str]]]:
    """Return each chart segment's accessible name and the query of the list URL it links to."""
    found = re.findall(r'<a href="([^"]+)" aria-label="([^"]+)">', page)
    return {html.unescape(label): parse_qs(urlsplit(html.unescape(href)).query) for href, label in found}


CASES = [
    # (query, totals, per-day rows of the completions chart)
    (
        "",
        "Completions 5 Prompt tokens 178 Completion tokens 21",
        [["Thu 1 Jan 2026", "2", "0", "0", "2"], ["Fri 2 Jan 2026", "0", "1", "0", "1"], ["Sat 3 Jan 2026", "0", "0", "0", "0"], ["Sun 4 Jan 2026", "1", "0", "1", "2"]],
    ),
    (
        "?model=gpt-a",
        "Completions 3 Prompt tokens 151 Completion tokens 16",
        [["Thu 1 Jan 2026", "2", "2"], ["Fri 2 Jan 2026", "0", "0"], ["Sat 3 Jan 2026", "0", "0"], ["Sun 4 Jan 2026", "1", "1"]],
    ),
    (
        "?metadata=team%3Dred",
        "Completions 3 Prompt tokens 121 Completion tokens 13",
        [["Thu 1 Jan 2026", "1", "0", "1"], ["Fri 2 Jan 2026", "0", "1", "1"], ["Sat 3 Jan 2026", "0", "0", "0"], ["Sun 4 Jan 2026", "1", "0", "1"]],
    ),
    (
        # Seconds that cut through hours: a1 (10:00:00) is out, a3 (4 Jan 00:00:00) in, c1 out.
        f"?created_after={T0 + 10 * H + 1}&created_before={T0 + 3 * D + 1}",
        "Completions 3 Prompt tokens 71 Completion tokens 8",
        [["Thu 1 Jan 2026", "1", "0", "1"], ["Fri 2 Jan 2026", "0", "1", "1"], ["Sat 3 Jan 2026", "0", "0", "0"], ["Sun 4 Jan 2026", "1", "0", "1"]],
    ),
    (
        "?created_after=2026-01-02&created_before=2026-01-10",
        "Completions 3 Prompt tokens 28 Completion tokens 6",
        [["Fri 2 Jan 2026", "1", "0", "0", "1"]] + [[day, "0", "0", "0", "0"] for day in ("Sat 3 Jan 2026",)]
        + [["Sun 4 Jan 2026", "0", "1", "1", "2"]]
        + [[f"{name} {n} Jan 2026", "0", "0", "0", "0"] for name, n in zip(("Mon", "Tue", "Wed", "Thu", "Fri"), range(5, 10))],
    ),
    (
        "?model=gpt-a&metadata=team%3Dred&created_after=2026-01-01&created_before=2026-01-05",
        "Completions 2 Prompt tokens 101 Completion tokens 11",
        [["Thu 1 Jan 2026", "1", "1"], ["Fri 2 Jan 2026", "0", "0"], ["Sat 3 Jan 2026", "0", "0"], ["Sun 4 Jan 2026", "1", "1"]],
    ),
]


@pytest.mark.parametrize("query, expected_totals, expected_rows", CASES, ids=["all", "model", "metadata", "seconds", "dates", "everything"])
def test_totals_and_days_for_every_filter(admin: Admin, usage: None, query: str, expected_totals: str, expected_rows: list[list[str]]) -> None:
    page = admin.page("/overview" + query)
    assert totals(page) == expected_totals
    assert rows(page, "chart-completions-numbers") == expected_rows


def test_per_hour_for_two_days_or_less(admin: Admin, usage: None) -> None:
    page = admin.page("/overview?created_after=2026-01-01&created_before=2026-01-03")
    hours = rows(page, "chart-completions-numbers")
    assert len(hours) == 48
    assert hours[10] == ["1 Jan 2026 10:00 UTC", "1", "0", "1"]
    assert hours[11] == ["1 Jan 2026 11:00 UTC", "1", "0", "1"]
    assert hours[24 + 9] == ["2 Jan 2026 09:00 UTC", "0", "1", "1"]
    assert sum(int(row[-1]) for row in hours) == 3
    tokens = rows(page, "chart-tokens-numbers")
    assert tokens[10] == ["1 Jan 2026 10:00 UTC", "110", "0", "110"]
    assert "per hour" in page


def test_tokens_per_day_and_by_model(admin: Admin, usage: None) -> None:
    page = admin.page("/overview")
    assert columns(page, "chart-tokens-numbers") == ["When", "gpt-a", "gpt-b", "gpt-c", "Total"]
    assert rows(page, "chart-tokens-numbers")[0] == ["Thu 1 Jan 2026", "165", "0", "0", "165"]
    assert rows(page, "models") == [
        ["gpt-a", "3", "60.0 %", "151", "16"],
        ["gpt-b", "1", "20.0 %", "20", "2"],
        ["gpt-c", "1", "20.0 %", "7", "3"],
    ]


def test_every_bar_links_to_the_list_of_its_day_and_model(admin: Admin, usage: None) -> None:
    page = admin.page("/overview?metadata=team%3Dred")
    links = bar_links(page)
    assert links["Thu 1 Jan 2026, gpt-a: 1"] == {
        "model": ["gpt-a"], "metadata": ["team=red"], "created_after": ["2026-01-01"], "created_before": ["2026-01-02"]
    }
    assert links["Fri 2 Jan 2026, gpt-b: 1"]["model"] == ["gpt-b"]
    assert "Sat 3 Jan 2026, gpt-a: 0" not in links, "an empty segment is not drawn"
    hourly = bar_links(admin.page("/overview?created_after=2026-01-01&created_before=2026-01-02"))
    assert hourly["1 Jan 2026 10:00 UTC, gpt-a: 1"]["created_after"] == [str(T0 + 10 * H)]
    assert hourly["1 Jan 2026 10:00 UTC, gpt-a: 1"]["created_before"] == [str(T0 + 11 * H)]
    assert admin.get("/" + "?" + urlsplit(html.unescape(re.search(r'<a href="(/\?[^"]+)" aria-label', page).group(1))).query).status_code == 200


def test_quick_ranges_end_now(admin: Admin) -> None:
    page = admin.page("/overview")
    quick = dict((html.unescape(label), parse_qs(urlsplit(html.unescape(href)).query)) for href, label in re.findall(r'<a class="button button-small" href="([^"]+)">([^<]+)</a>', page))
    last_day = quick["Last 24 hours"]
    assert int(last_day["created_before"][0]) - int(last_day["created_after"][0]) == 24 * H
    assert int(last_day["created_before"][0]) % H == 0 and int(last_day["created_before"][0]) > time.time()
    week = quick["Last 7 days"]
    assert date.fromisoformat(week["created_before"][0]) - date.fromisoformat(week["created_after"][0]) == timedelta(days=7)
    assert date.fromisoformat(week["created_before"][0]) == datetime.now(timezone.utc).date() + timedelta(days=1)


def test_a_single_day_reads_as_24_hours(admin: Admin) -> None:
    seed(record("only", created=T0 + 13 * H + 5, model="gpt-a", usage=(1, 2)))
    page = admin.page("/overview")
    hours = rows(page, "chart-completions-numbers")
    assert [row[0] for row in hours][:2] == ["1 Jan 2026 00:00 UTC", "1 Jan 2026 01:00 UTC"]
    assert len(hours) == 24 and hours[13][1:] == ["1", "1"]
    assert "From 1 Jan 2026 00:00 UTC to 1 Jan 2026 23:00 UTC, per hour" in element(page, "main")


def test_more_than_400_days_are_drawn_per_week(admin: Admin) -> None:
    seed(record("old", created=T0, usage=(1, 1)), record("new", created=T0 + 500 * D, usage=(1, 1)))
    weeks = rows(admin.page("/overview"), "chart-completions-numbers")
    assert weeks[0] == ["Week of Mon 29 Dec 2025", "1", "1"]
    assert weeks[-1][1:] == ["1", "1"] and len(weeks) == 72


def test_many_models_share_one_colour_past_six(admin: Admin) -> None:
    seed(*(record(f"m{i}", created=T0 + i, model=f"model-{i}", usage=(1, 0)) for i in range(8)))
    page = admin.page("/overview")
    assert columns(page, "chart-completions-numbers")[-2:] == ["Other models", "Total"]
    assert len(rows(page, "models")) == 8, "the by-model table names every model"


@pytest.mark.parametrize(
    "query, message",
    [("", "No completions are stored."), ("?created_after=2030-01-01&created_before=2030-01-08", "No completions are stored between Tue 1 Jan 2030 and Mon 7 Jan 2030.")],
)
def test_nothing_to_count(admin: Admin, query: str, message: str) -> None:
    page = admin.page("/overview" + query)
    assert totals(page) == "Completions 0 Prompt tokens 0 Completion tokens 0"
    assert message in element(page, "main")
    assert "<svg" not in page


def test_the_period_before_is_compared(admin: Admin, usage: None) -> None:
    page = admin.page("/overview?created_after=2026-01-03&created_before=2026-01-05")
    assert "Completions 2 -33 % against the period before (3)" in element(page, "totals")
    page = admin.page("/overview?created_after=2025-12-30&created_before=2026-01-01")
    assert "None in the period before (0)" in element(page, "totals")


@pytest.mark.parametrize(
    "query, message",
    [
        ("?created_after=yesterday", message_of(lambda value: validation.clean_filters(days=True, created_after=value), "yesterday")),
        ("?created_before=2026-02-30", "Invalid 'created_before'"),
        ("?metadata=nokey", "KEY=VALUE"),
    ],
)
def test_a_bad_filter_is_named_and_nothing_is_counted(admin: Admin, usage: None, query: str, message: str) -> None:
    response = admin.get("/overview" + query)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert message in html.unescape(page)
    assert "Fix the filter above to see the overview." in page


def test_hostile_model_names_stay_text(admin: Admin) -> None:
    seed(record("x", created=T0, model='<script>alert(1)</script>"', usage=(1, 1)))
    page = admin.page("/overview")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_signed_out_visitors_sign_in_first(client, app) -> None:
    response = client.get("/overview?model=gpt-a")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=/overview")


def test_linked_from_the_nav_and_from_the_list_with_its_filter(admin: Admin, usage: None) -> None:
    page = admin.page("/?model=gpt-a&metadata=team%3Dred")
    assert '<a href="/overview">Overview</a>' in page
    assert 'href="/overview?model=gpt-a&amp;metadata=team%3Dred">Overview of the matches</a>' in page
    overview = admin.page("/overview?model=gpt-a")
    assert '<a href="/overview" aria-current="page">Overview</a>' in overview
    assert 'href="/?model=gpt-a">These completions in the list</a>' in overview


def test_all_figures_are_written_in_full(admin: Admin) -> None:
    seed(record("big", created=T0, usage=(1_234_567, 89_012)))
    assert totals(admin.page("/overview")) == "Completions 1 Prompt tokens 1,234,567 Completion tokens 89,012"

