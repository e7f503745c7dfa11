"""Overview latency at scale, run by hand:
``python bench/overview.py [--rows 1000000] [--baseline 10000] [--postgres URL]``.

For each size (the baseline, then --rows) it makes a scratch database (a temporary SQLite
file, or with --postgres a database of its own on that server, dropped at the end), migrates
it (so the rollup's triggers are in place) and fills it with Core batch inserts: completions
spread over 90 days, five models, four teams, varied usage. Then it times ``GET /overview``
through the Flask test client, signed in (query, rollup and page rendering together) for
each filter shape, and prints median and p95 in milliseconds and the ratio to the baseline.
On a shared machine the wall time swells with the load; the CPU time this process spent
(on SQLite that is all the work; PostgreSQL's own is not in it) is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sqlalchemy as sa  # noqa: E402
from flask_migrate import upgrade  # noqa: E402

from webapp import create_app, store  # noqa: E402
from webapp.config import normalize_database_url  # noqa: E402
from webapp.extensions import db, write_transaction  # noqa: E402
from webapp.models import Completion, CompletionMetadata  # noqa: E402

BATCH = 5000
START = 1_790_812_800  # 1 October 2026 00:00 UTC
DAYS = 90
DAY = 86_400
CASES = [
    ("unfiltered", ""),
    ("model", "?model=model-1"),
    ("30 days (dates)", "?created_after=2026-10-31&created_before=2026-11-30"),
    ("2 days (per hour)", "?created_after=2026-11-09&created_before=2026-11-11"),
    ("30 days (seconds)", f"?created_after={START + 30 * DAY + 1234}&created_before={START + 60 * DAY + 4321}"),
    ("model + 30 days", "?model=model-1&created_after=2026-10-31&created_before=2026-11-30"),
    ("rare metadata (rows)", "?metadata=rare%3Dyes"),
    ("common metadata (rows)", "?metadata=team%3Dteam-1"),
]


@contextmanager
def scratch_database(postgres: str | None) -> Iterator[str]:
    """Yield the URL of an empty scratch database, removed afterwards."""
    if postgres is None:
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    admin = sa.create_engine(normalize_database_url(postgres), isolation_level="AUTOCOMMIT")
    name = f"bench_overview_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(normalize_database_url(postgres)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fill(rows: int) -> float:
    """Insert ``rows`` completions in batches (the triggers keep the rollup); return rows per second."""
    started = time.monotonic()
    step = DAYS * DAY / rows
    for first in range(0, rows, BATCH):
        chunk = range(first, min(rows, first + BATCH))
        completions = []
        for i in chunk:
            created = START + int(i * step)
            model = f"model-{i % 5}"
            usage = {"prompt_tokens": 20 + i % 700, "completion_tokens": 5 + i % 300, "total_tokens": 25 + i % 700 + i % 300}
            body = {
                "id": f"chatcmpl-{i:08d}", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 200, "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage,
            }
            metadata = {"team": f"team-{i % 4}", **({"rare": "yes"} if i % 1000 == 0 else {})}
            completions.append({
                "seq": i + 1, "id": body["id"], "created": created, "model": model, "deleted": False, "body": body,
                "messages": [{"role": "user", "content": "y" * 300}], "metadata_map": metadata, "version": 1,
            })
        db.session.execute(sa.insert(Completion), completions)
        db.session.execute(
            sa.insert(CompletionMetadata),
            [{"completion_seq": c["seq"], "key": key, "value": value} for c in completions for key, value in c["metadata_map"].items()],
        )
        db.session.commit()
        done = min(rows, first + BATCH)
        print(f"\r  filling: {done:,}/{rows:,} ({done / (time.monotonic() - started):,.0f} rows/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    db.session.execute(sa.text("ANALYZE"))
    db.session.commit()
    return rows / (time.monotonic() - started)


def measure(url: str, rows: int, repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Fill a fresh database of ``url`` and time every case; return the wall and CPU timings in ms."""
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench", "TESTING": True})
    with app.app_context():
        upgrade()
        rate = fill(rows)
        print(f"  {rows:,} completions inserted at {rate:,.0f} rows/s (triggers included)", file=sys.stderr)
        with write_transaction() as tx:
            user = store.create_user(tx, username="bench", password="bench-password")
            token = store.start_user_session(tx, user_id=user.id)
        client = app.test_client()
        with client.session_transaction() as session:
            session["sid"] = token
        timings: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for name, query in CASES:
            assert client.get("/overview" + query).status_code == 200  # warm
            runs, cpu_runs = [], []
            # The metadata shapes count rows (seconds at a million): fewer runs tell enough.
            for _ in range(repeat if "(rows)" not in name else max(3, repeat // 6)):
                started, started_cpu = time.perf_counter(), time.process_time()
                response = client.get("/overview" + query)
                runs.append((time.perf_counter() - started) * 1000)
                cpu_runs.append((time.process_time() - started_cpu) * 1000)
                assert response.status_code == 200, (query, response.status_code)
            timings[name], cpu[name] = sorted(runs), sorted(cpu_runs)
        db.session.remove()
        db.engine.dispose()
    return timings, cpu


def p95(values: list[float]) -> float:
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--postgres", help="a PostgreSQL server URL: bench there (in a scratch database) instead of SQLite")
    args = parser.parse_args()
    backend = "postgresql" if args.postgres else "sqlite"
    results = {}
    for rows in (args.baseline, args.rows):
        print(f"{backend}: {rows:,} completions", file=sys.stderr)
        with scratch_database(args.postgres) as url:
            results[rows] = measure(url, rows, args.repeat)
    (base, _), (big, big_cpu) = results[args.baseline], results[args.rows]
    load = os.getloadavg()[0]
    print(f"\nGET /overview on {backend} at {args.rows:,} completions, milliseconds (test client: query, rollup, rendering);")
    print(f"load average {load:.1f} on {os.cpu_count()} cores at the end")
    print(f"{'case':<24} {'median':>8} {'p95':>8} {'cpu med':>8}   {'median at ' + format(args.baseline, ','):>16}   ratio")
    for name, _query in CASES:
        ratio = statistics.median(big[name]) / statistics.median(base[name])
        print(
            f"{name:<24} {statistics.median(big[name]):8.1f} {p95(big[name]):8.1f} {statistics.median(big_cpu[name]):8.1f}"
            f"   {statistics.median(base[name]):16.1f}   {ratio:5.2f}x"
        )


if __name__ == "__main__":
    main()
