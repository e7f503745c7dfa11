"""Do API writers wait behind a bulk change of the admin UI? Run by hand, never by the tests:

    .venv/bin/python bench/bulk.py [--rows 20000] [--writers 4] [--seconds 6] [--postgres URL]

It makes a database (a temporary SQLite file, or with ``--postgres`` a fresh database on that
server), seeds ``--rows`` completions, starts the store (gunicorn, 2 workers x 4 threads,
``DATABASE_TIMEOUT`` 5 s) and runs ``--writers`` API writers against it: each loops
retrieve -> ``POST /v1/chat/completions/{id}`` with ``If-Match``, setting its own metadata key to
a counter (a 412 is retried with the fresh ETag, as a careful client does).

Three phases, one after the other, in the same run:
1. ``baseline``: the writers alone for ``--seconds``;
2. ``batched``: the writers while a bulk change labels every completion, as the admin UI runs
   it (``store.run_bulk_change``: short transactions of ``store.BATCH_SIZE``);
3. ``one transaction``: the same bulk change in a single transaction (what the UI did
   before), for comparison.

For each it prints the writers' update latency (median, p95, max, and p95 against the
baseline's), how many answered 503, how many 412s were retried, the bulk change's time, and
how many updates were lost: at the end every writer's last acknowledged value, and the
bulk label, must be on every completion they touched.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import start_gunicorn, stop_server  # noqa: E402  (the live-server helper the tests use)
from webapp import create_app, store  # noqa: E402
from webapp.extensions import db, write_transaction  # noqa: E402
from webapp.models import Completion, CompletionMetadata  # noqa: E402
from webapp.validation import Filter  # noqa: E402

SECRET_KEY = "bench-" + secrets.token_hex(8)


@dataclass
class Writer:
    """One API writer's tally: latencies of acknowledged updates, statuses, and its last value per id."""

    name: str
    latencies: list[float] = field(default_factory=list)
    status_503: int = 0
    retried_412: int = 0
    # Requests that timed out (30 s) or answered anything else.
    other: int = 0
    last: dict[str, str] = field(default_factory=dict)


def seed(app, rows: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Insert ``rows`` completions in one go (bench-only bulk SQL) and return their ids."""
    ids = [f"chatcmpl-bench-{i:07d}" for i in range(rows)]
    with app.app_context(), write_transaction() as tx:
        values = []
        for i, cid in enumerate(ids):
            body = {
                "id": cid, "object": "chat.completion", "created": 1_700_000_000 + i, "model": "gpt-bench",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Reply {i}"}, "finish_reason": "stop"}],
            }
            values.append(store.completion_values(body=body, messages=[{"role": "user", "content": f"Q {i}"}], metadata={"team": "red"}))
        for start in range(0, len(values), 5000):
            tx.execute(sa.insert(Completion), [{**v, "version": 1} for v in values[start : start + 5000]])
        seqs = tx.execute(sa.select(Completion.seq)).scalars().all()
        tx.execute(sa.insert(CompletionMetadata), [{"completion_seq": s, "key": "team", "value": "red"} for s in seqs])
    return ids


def run_writer(url: str, secret: str, ids: list[str], writer: Writer, stop: threading.Event) -> None:
    """Update random completions until ``stop``: retrieve, then update with If-Match, own key only."""
    headers = {"Authorization": f"Bearer {secret}"}
    counter = 0
    rng = random.Random(writer.name)
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while not stop.is_set():
            cid = rng.choice(ids)
            counter += 1
            for _attempt in range(10):
                try:
                    got = client.get(f"/v1/chat/completions/{cid}")
                except httpx.TimeoutException:
                    writer.other += 1
                    break
                if got.status_code == 503:
                    writer.status_503 += 1
                    break
                metadata = {**got.json()["metadata"], writer.name: str(counter)}
                started = time.perf_counter()
                try:
                    sent = client.post(f"/v1/chat/completions/{cid}", json={"metadata": metadata}, headers={"If-Match": got.headers["ETag"]})
                except httpx.TimeoutException:  # waited 30 s behind the bulk change
                    writer.other += 1
                    break
                if sent.status_code == 200:
                    writer.latencies.append((time.perf_counter() - started) * 1000)
                    writer.last[cid] = str(counter)
                    break
                if sent.status_code == 412:
                    writer.retried_412 += 1
                    continue
                if sent.status_code == 503:
                    writer.status_503 += 1
                else:
                    writer.other += 1
                break


def phase(name: str, url: str, secret: str, ids: list[str], writers: int, seconds: float, bulk=None) -> dict:  # type: ignore[no-untyped-def]
    """Run the writers for ``seconds`` (or while ``bulk`` runs, if longer); return their tallies and the bulk's time."""
    stop = threading.Event()
    tallies = [Writer(f"w{phase.counter}_{i}") for i in range(writers)]
    phase.counter += 1  # type: ignore[attr-defined]
    threads = [threading.Thread(target=run_writer, args=(url, secret, ids, w, stop)) for w in tallies]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # writers warmed up before the bulk change starts
    bulk_seconds = None
    started = time.perf_counter()
    if bulk is not None:
        bulk()
        bulk_seconds = time.perf_counter() - started
    remaining = seconds - (time.perf_counter() - started)
    if remaining > 0:
        time.sleep(remaining)
    stop.set()
    for thread in threads:
        thread.join()
    return {"name": name, "writers": tallies, "bulk_seconds": bulk_seconds}


phase.counter = 0  # type: ignore[attr-defined]


def lost_updates(app, results: list[dict]) -> int:  # type: ignore[no-untyped-def]
    """Count acknowledged writer values and bulk labels missing from the database now."""
    with app.app_context():
        final = {row.id: row.metadata_map or {} for row in db.session.scalars(sa.select(Completion))}
    lost = 0
    for result in results:
        for writer in result["writers"]:
            for cid, value in writer.last.items():
                # A later phase's writers use other keys; a writer's own key keeps its last value.
                if final[cid].get(writer.name) != value:
                    lost += 1
    # The last bulk change labelled every completion "single": none may have lost it to a writer.
    lost += sum(1 for metadata in final.values() if metadata.get("label") != "single")
    return lost


def bulk_label(app, value: str, batch_size: int, max_seconds: float):  # type: ignore[no-untyped-def]
    def run() -> None:
        with app.app_context():
            store.bulk.BATCH_SIZE = batch_size
            store.bulk.MAX_BATCH_SECONDS = max_seconds
            upto = store.latest_seq(db.session)
            selection = store.Selection(filter=Filter(), upto=upto)
            count = store.count_selection(db.session, selection=selection)
            batch = store.run_bulk_change(
                write_transaction, selection=selection, action="set", key="label", value=value,
                actor="bench", scope="every completion", requested=count,
            )
            assert batch.changed == count, (batch.changed, count, batch.refused[:3])
    return run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--postgres", help="a PostgreSQL server URL: a fresh database is made on it and dropped after")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-bulk-")
    maintenance = None
    if args.postgres:
        from webapp.config import normalize_database_url

        maintenance = sa.create_engine(normalize_database_url(args.postgres), isolation_level="AUTOCOMMIT")
        name = f"bench_bulk_{secrets.token_hex(3)}"
        with maintenance.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = sa.engine.make_url(normalize_database_url(args.postgres)).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
    config = {"DATABASE_URL": url, "SECRET_KEY": SECRET_KEY, "DATABASE_TIMEOUT": 5.0}
    app = create_app(config)
    with app.app_context():
        from flask_migrate import upgrade

        upgrade(directory=str(ROOT / "migrations"))
        with write_transaction() as tx:
            _key, secret = store.create_api_key(tx, name="bench")
    t0 = time.perf_counter()
    ids = seed(app, args.rows)
    print(f"seeded {len(ids)} completions in {time.perf_counter() - t0:.1f} s ({'PostgreSQL' if args.postgres else 'SQLite'})", flush=True)

    server = start_gunicorn({"DATABASE_URL": url, "SECRET_KEY": SECRET_KEY, "DATABASE_TIMEOUT": "5"})
    try:
        results = [
            phase("baseline", server.url, secret, ids, args.writers, args.seconds),
            phase("batched", server.url, secret, ids, args.writers, args.seconds, bulk_label(app, "batched", store.BATCH_SIZE, store.bulk.MAX_BATCH_SECONDS)),
            phase("one transaction", server.url, secret, ids, args.writers, args.seconds, bulk_label(app, "single", args.rows + 1, float("inf"))),
        ]
    finally:
        stop_server(server)
    lost = lost_updates(app, results)
    base_p95 = percentile([x for w in results[0]["writers"] for x in w.latencies], 0.95)
    print(f"\n{args.writers} API writers (retrieve + update with If-Match), {args.rows} completions, bulk change: set 'label' on all")
    print(f"{'phase':<16} {'updates':>8} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'p95/base':>9} {'503s':>5} {'412 retried':>12} {'timeouts':>8} {'bulk s':>7}")
    for result in results:
        lat = [x for w in result["writers"] for x in w.latencies]
        p95 = percentile(lat, 0.95)
        print(
            f"{result['name']:<16} {len(lat):>8} {statistics.median(lat) if lat else float('nan'):>10.1f} {p95:>8.1f} "
            f"{max(lat) if lat else float('nan'):>8.0f} {p95 / base_p95:>9.1f} {sum(w.status_503 for w in result['writers']):>5} "
            f"{sum(w.retried_412 for w in result['writers']):>12} {sum(w.other for w in result['writers']):>8} "
            f"{result['bulk_seconds'] if result['bulk_seconds'] is not None else float('nan'):>7.1f}"
        )
    print(f"lost updates (acknowledged writer values or bulk labels missing at the end): {lost}")
    if maintenance is not None:
        with app.app_context():
            db.engine.dispose()
        with maintenance.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
