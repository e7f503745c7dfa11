"""Sync speed, run by hand: ``python bench/sync.py [--completions 2000] [--runs 3] [--database-url URL]``.

Starts a local source (gunicorn, 2 workers, over a temporary SQLite file holding N completions
with two metadata pairs and two input messages each) and, each run into a freshly emptied
target (a temporary SQLite file unless --database-url names a PostgreSQL one, emptied first):

- ``reads``: the baseline, only the HTTP reads a mirror needs (list pages of 100, then each
  completion's messages, 8 at a time) with a bare httpx client, storing nothing;
- ``sync``: ``flask sync --from SOURCE`` into the empty target (start-up excluded);
- ``again``: the same sync once more (nothing new: one list call), in seconds.

Prints completions/s (median and p95 over runs, p95 being the slower end) and the ratio of
sync to the bare reads measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import httpx  # noqa: E402

from bench_helpers import empty_and_migrate, make_app  # noqa: E402

SECRET = "bench-secret"


def fill_source(app, count: int) -> str:  # type: ignore[no-untyped-def]
    """Store ``count`` completions in the source and return an API key for it."""
    from webapp import store
    from webapp.extensions import write_transaction

    with app.app_context():
        for start in range(0, count, 1000):
            with write_transaction() as session:
                store.upsert_completions(
                    session,
                    completions=[
                        store.IncomingCompletion(
                            body={
                                "id": f"chatcmpl-sync{i:07d}", "object": "chat.completion", "created": 1_700_000_000 + i // 3,
                                "model": f"gpt-4o-mini-{i % 3}",
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Reply {i} " + "lorem " * 30, "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50},
                            },
                            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question {i} " + "ipsum " * 20}],
                            metadata={"team": f"t{i % 5}", "run": f"r{i % 50}"},
                        )
                        for i in range(start, min(count, start + 1000))
                    ],
                    actor="bench",
                )
        with write_transaction() as session:
            _key, secret = store.create_api_key(session, name="bench")
    return secret


def bare_reads(v1: str, key: str) -> int:
    """Read everything a mirror reads, storing nothing; return how many completions."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=v1, headers=headers, timeout=60) as http, ThreadPoolExecutor(8) as pool:
        after, seen = None, 0
        while True:
            params = {"limit": 100, "order": "asc", **({"after": after} if after else {})}
            page = http.get("/chat/completions", params=params).json()
            ids = [obj["id"] for obj in page["data"]]
            list(pool.map(lambda cid: http.get(f"/chat/completions/{cid}/messages", params={"limit": 100}).json(), ids))
            seen += len(ids)
            if not page["has_more"]:
                return seen
            after = ids[-1]


def run_sync(url: str, v1: str, key: str) -> float:
    app = make_app(url)
    runner = app.test_cli_runner()
    with app.app_context():
        start = time.perf_counter()
        result = runner.invoke(args=["sync", "--from", v1, "--api-key", key])
        elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"{result.output[-2000:]}\n{result.exception!r}")
    print(result.output.strip().splitlines()[-1], file=sys.stderr)
    with app.app_context():
        from webapp.extensions import db

        db.engine.dispose()
    return elapsed


def summary(name: str, count: int, seconds: list[float]) -> float:
    rates = sorted(count / s for s in seconds)
    median = statistics.median(rates)
    print(f"{name:<6} median {median:>8,.0f} completions/s   p95 {rates[0]:>8,.0f} completions/s")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completions", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", help="the target: a scratch PostgreSQL database (emptied!); default: a temporary SQLite file")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tests.helpers import start_gunicorn, stop_server

    with tempfile.TemporaryDirectory() as tmp:
        source_url = f"sqlite:///{tmp}/source.db"
        target_url = args.database_url or f"sqlite:///{tmp}/target.db"
        empty_and_migrate(source_url)
        key = fill_source(make_app(source_url), args.completions)
        server = start_gunicorn({"DATABASE_URL": source_url}, workers=2, threads=8)
        try:
            print(f"{args.completions:,} completions from a local gunicorn source into {'PostgreSQL' if 'postgres' in target_url else 'SQLite'}, {args.runs} runs")
            times: dict[str, list[float]] = {"reads": [], "sync": [], "again": []}
            for _run in range(args.runs):
                start = time.perf_counter()
                assert bare_reads(server.v1, key) == args.completions
                times["reads"].append(time.perf_counter() - start)
                empty_and_migrate(target_url)
                times["sync"].append(run_sync(target_url, server.v1, key))
                times["again"].append(run_sync(target_url, server.v1, key))
            medians = {name: summary(name, args.completions, times[name]) for name in ("reads", "sync")}
            print(f"again  median {statistics.median(times['again']):.2f} s for a rerun with nothing new")
            print(f"sync / bare reads: {medians['sync'] / medians['reads']:.2f} of the speed of reading alone")
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
