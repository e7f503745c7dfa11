"""Concurrent writers on one completion through a live server (2 processes x 4 threads)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Completion, MetadataChange

from .helpers import LiveServer, completion_body, make_key, seed

THREADS = 8
ROUNDS = 6


def history() -> list[MetadataChange]:
    db.session.expire_all()
    return list(db.session.scalars(select(MetadataChange).where(MetadataChange.completion_id == "hot", MetadataChange.actor == "key:writer").order_by(MetadataChange.id)))


def assert_history_is_a_chain(changes: list[MetadataChange], start: dict[str, str]) -> None:
    """Each change starts from what the one before it left: no write was lost in between."""
    state = start
    for change in changes:
        assert change.before == state
        state = change.after


def test_if_match_updates_each_win_or_get_412(live_server: LiveServer) -> None:
    seed(completion_body("hot", metadata={"writer": "none"}))
    headers = {"Authorization": f"Bearer {make_key(name='writer')}"}
    url = f"{live_server.v1}/chat/completions/hot"

    def writer(n: int) -> Counter[int]:
        outcomes: Counter[int] = Counter()
        with httpx.Client(headers=headers, timeout=30) as http:
            for round_ in range(ROUNDS):
                tag = http.get(url).headers["ETag"]
                response = http.post(url, json={"metadata": {"writer": f"{n}-{round_}"}}, headers={"If-Match": tag})
                outcomes[response.status_code] += 1
                if response.status_code == 412:
                    assert response.json()["error"]["code"] == "precondition_failed"
        return outcomes

    with ThreadPoolExecutor(THREADS) as pool:
        totals = sum(pool.map(writer, range(THREADS)), Counter())
    assert set(totals) <= {200, 412} and sum(totals.values()) == THREADS * ROUNDS
    wins = totals[200]
    print(f"\nfigures: {THREADS * ROUNDS} If-Match updates from {THREADS} threads: {wins} won, {totals[412]} got 412, 0 lost")
    assert wins >= 1
    changes = history()
    assert len(changes) == wins
    assert_history_is_a_chain(changes, {"writer": "none"})
    row = db.session.scalars(select(Completion).where(Completion.id == "hot")).one()
    assert row.version == 1 + wins
    assert row.metadata_map == changes[-1].after


def test_updates_without_if_match_all_land_in_order(live_server: LiveServer) -> None:
    seed(completion_body("hot"))
    headers = {"Authorization": f"Bearer {make_key(name='writer')}"}
    url = f"{live_server.v1}/chat/completions/hot"

    def writer(n: int) -> list[int]:
        with httpx.Client(headers=headers, timeout=30) as http:
            return [http.post(url, json={"metadata": {"writer": f"{n}-{r}"}}).status_code for r in range(ROUNDS)]

    with ThreadPoolExecutor(THREADS) as pool:
        statuses = [s for batch in pool.map(writer, range(THREADS)) for s in batch]
    assert statuses == [200] * THREADS * ROUNDS
    changes = history()
    assert len(changes) == THREADS * ROUNDS
    assert_history_is_a_chain(changes, {})
    assert {c.after["writer"] for c in changes} == {f"{n}-{r}" for n in range(THREADS) for r in range(ROUNDS)}


def test_mixed_readers_writers_and_deleters_never_see_a_5xx(live_server: LiveServer) -> None:
    """Paging lists, If-Match updates and deletes at once across two worker processes."""
    ids = [f"mix-{i:03d}" for i in range(60)]
    seed(*(completion_body(cid, created=1_700_000_000 + i // 4, metadata={"group": str(i % 3)}) for i, cid in enumerate(ids)))
    headers = {"Authorization": f"Bearer {make_key(name='writer')}"}
    statuses: Counter[int] = Counter()

    def pager(_n: int) -> list[list[str]]:
        passes: list[list[str]] = []
        with httpx.Client(base_url=live_server.v1, headers=headers, timeout=30) as http:
            for _round in range(3):
                seen: list[str] = []
                passes.append(seen)
                after = None
                while True:
                    params = {"limit": "7", "metadata[group]": "1", **({"after": after} if after else {})}
                    response = http.get("/chat/completions", params=params)
                    statuses[response.status_code] += 1
                    body = response.json()
                    seen += [c["id"] for c in body["data"]]
                    if not body["has_more"]:
                        break
                    after = body["last_id"]
        return passes

    def updater(n: int) -> None:
        with httpx.Client(base_url=live_server.v1, headers=headers, timeout=30) as http:
            for cid in ids[n::4]:
                got = http.get(f"/chat/completions/{cid}")
                statuses[got.status_code] += 1
                if got.status_code != 200:
                    continue
                response = http.post(f"/chat/completions/{cid}", json={"metadata": {"group": "1", "by": str(n)}}, headers={"If-Match": got.headers["ETag"]})
                statuses[response.status_code] += 1

    def deleter(n: int) -> None:
        with httpx.Client(base_url=live_server.v1, headers=headers, timeout=30) as http:
            for cid in ids[n::10]:
                statuses[http.delete(f"/chat/completions/{cid}").status_code] += 1

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(pager, n) for n in range(3)]
        futures += [pool.submit(updater, n) for n in range(4)]
        futures += [pool.submit(deleter, n) for n in range(3)]
        pages = [f.result() for f in futures[:3]]
        for f in futures[3:]:
            f.result()
    print(f"\nfigures: mixed workload answered {sum(statuses.values())} requests: {dict(statuses)}")
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 404, 412}, statuses
    for passes in pages:
        for seen in passes:
            # Rows come and go meanwhile, but one pass never repeats a row or goes backwards.
            assert seen == sorted(set(seen), key=ids.index)
    db.session.expire_all()
    rows = {row.id: row for row in db.session.scalars(select(Completion).where(Completion.id.in_(ids)))}
    for cid, row in rows.items():
        changes = list(db.session.scalars(select(MetadataChange).where(MetadataChange.completion_id == cid).order_by(MetadataChange.id)))
        assert_history_is_a_chain(changes, {})
        if not row.deleted:
            assert row.metadata_map == changes[-1].after
