"""A capped count of a search within dates is exact however seqs and times interleave.

On SQLite such a count is narrowed to the seqs the rollup's buckets of those dates span
(migration 0014: each bucket keeps bounds of its completions' seqs), and when the dates are
whole hours that no bucket outside them reaches into, the dates are not checked row by row.
Each count here is compared with one made from the records themselves, over ranges whole and
not, open at either end, and empty, after writes that move, delete and purge completions.
"""

from __future__ import annotations

import pytest

from webapp import store
from webapp.extensions import db, write_transaction
from webapp.store import completions
from webapp.store.base import DAY, HOUR
from webapp.validation import Filter

from .helpers import completion_body, seed

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
TERM = "refund"


def _records() -> list[dict]:
    """Completions of three days stored in time order (the usual store), every third without the term."""
    records = []
    for day in range(3):
        for hour in (1, 5, 9, 13, 20):
            n = len(records)
            content = f"note {n}" if n % 3 == 2 else f"a {TERM} for order {n}"
            records.append(completion_body(f"c{n:02d}", created=T0 + day * DAY + hour * HOUR + 60 * n, content=content,
                                           metadata={"team": "red" if n % 2 else "blue"}))
    return records


def _expected(records: dict[str, dict], *, after: int | None, before: int | None, team: str | None = None) -> int:
    return sum(
        1
        for record in records.values()
        if TERM in record["choices"][0]["message"]["content"]
        and (after is None or record["created"] >= after)
        and (before is None or record["created"] < before)
        and (team is None or record["metadata"]["team"] == team)
    )


RANGES = [
    (T0, T0 + DAY),
    (T0 + DAY, T0 + 2 * DAY),
    (T0 + DAY, None),
    (None, T0 + DAY),
    (T0 + HOUR, T0 + 6 * HOUR),
    (T0 + 1800, T0 + DAY + 1),  # neither end a whole hour
    (T0 + 9 * HOUR + 1, T0 + 9 * HOUR + 2),
    (T0 + 5 * DAY, T0 + 6 * DAY),  # nothing stored then
    (None, T0),
]


def _assert_counts(live: dict[str, dict]) -> None:
    db.session.rollback()
    for after, before in RANGES:
        for team in (None, "red"):
            counted = store.count_completions(
                db.session,
                filter=Filter(search=(TERM,), created_after=after, created_before=before, metadata={"team": team} if team else {}),
                cap=1000,
            )
            assert counted == _expected(live, after=after, before=before, team=team), (after, before, team)
        db.session.rollback()


def _only_dated(after: int | None, before: int | None) -> bool | None:
    seqs = completions._dated_seqs(db.session, Filter(search=(TERM,), created_after=after, created_before=before))
    db.session.rollback()
    return None if seqs is None else seqs.only_dated


def test_counts_within_dates_stay_exact_as_completions_move_in_time(app, backend: str, monkeypatch) -> None:
    # Every index "large", as at scale: counted from the search indexes, not from a few candidates.
    monkeypatch.setattr(completions, "SELECTIVE_ROWS", 1)
    records = _records()
    seed(*records)
    live = {record["id"]: record for record in records}
    _assert_counts(live)
    if backend == "sqlite":
        # Stored in time order: a whole day's seqs are its own, and its rows are not looked up.
        assert _only_dated(T0 + DAY, T0 + 2 * DAY) is True
        assert _only_dated(None, T0 + DAY) is True
        # Not whole hours: the bounds narrow the search and each match's time is checked.
        assert _only_dated(T0 + 1800, T0 + DAY + 1) is False

    # An old completion imported late (a greater seq than the days after it), another one moved
    # to the first day by an upsert, one deleted and one purged.
    late = completion_body("late", created=T0 + 2 * HOUR, content=f"late {TERM}", metadata={"team": "red"})
    moved = {**live["c10"], "created": T0 + 3 * HOUR}
    seed(late, moved)
    live.update(late=late, c10=moved)
    with write_transaction() as session:
        store.delete_completion(session, completion_id="c04")
        purged = store.purge_batch(session, filter=Filter(), created_before=T0 + DAY + 2 * HOUR, limit=1)
    for gone in ("c04", *purged):
        live.pop(gone)
    assert store.get_completion(db.session, completion_id="late").id == "late"
    db.session.rollback()
    _assert_counts(live)
    if backend == "sqlite":
        # The first day's bounds now reach past the second day's seqs: its matches are checked by row.
        assert _only_dated(T0, T0 + DAY) is False
        assert _only_dated(T0 + DAY, T0 + 2 * DAY) is False
        assert store.seqs_outside_bounds(db.session) == []
    else:
        assert _only_dated(T0, T0 + DAY) is None


@pytest.mark.parametrize("after, before", [(T0 + 7 * DAY, T0 + 8 * DAY), (T0 + 7 * DAY, None)])
def test_dates_holding_no_completion_count_none_at_once(app, backend: str, after: int, before: int | None, monkeypatch) -> None:
    monkeypatch.setattr(completions, "SELECTIVE_ROWS", 1)
    seed(*_records())
    db.session.rollback()
    assert store.count_completions(db.session, filter=Filter(search=(TERM,), created_after=after, created_before=before), cap=1000) == 0
    if backend == "sqlite":
        seqs = completions._dated_seqs(db.session, Filter(search=(TERM,), created_after=after, created_before=before))
        assert seqs is not None and seqs.first > seqs.last


def test_more_buckets_than_a_count_reads_give_up_the_bounds_and_still_count_exactly(app, backend: str, monkeypatch) -> None:
    """A count reads at most BOUNDS_BUCKETS rollup rows on each side of its dates: past that (a long
    history of many models) it narrows less, or not at all, and its counts stay exact."""
    monkeypatch.setattr(completions, "SELECTIVE_ROWS", 1)
    records = _records()
    seed(*records)
    live = {record["id"]: record for record in records}
    if backend == "sqlite":
        assert _only_dated(T0 + 2 * DAY, None) is True
    monkeypatch.setattr(completions, "BOUNDS_BUCKETS", 1)
    _assert_counts(live)
    if backend == "sqlite":
        assert _only_dated(T0 + 2 * DAY, None) is False  # two days before it: its matches are checked by row
        assert _only_dated(T0 + HOUR, T0 + 6 * HOUR) is None  # two hours within it: no bounds
