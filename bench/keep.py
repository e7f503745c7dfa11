"""What keeping a completion costs on SQLite, in process, run by hand:
``python bench/keep.py [--creates 4000]``.

Times the transaction a ``store: true`` create runs (``api.create._save``: the completion with
its metadata and its history row, one ``BEGIN IMMEDIATE`` transaction; the completion marked
pending for its search index entries, rollup counts and metadata filter rows, migration 0015)
on a temporary SQLite file, alternating two cases:

- ``after its own write``: the connection wrote the last transaction itself, so its page cache
  is still valid;
- ``after another connection's write``: another connection wrote in between (as the other
  gunicorn workers, or the other connections of the pool, do in a running store), so SQLite
  drops the connection's page cache and reads the pages again.

Prints the median and p95 of each, and their ratio. Every ``PENDING_BATCH``-th create also
writes what is pending after its answer, as the API does
(``extensions.keep_pending_derived_data``): that transaction is timed apart, and its median
shared out over the creates of a batch.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_helpers import empty_and_migrate, make_app  # noqa: E402

REQUEST = {
    "model": "gpt-bench",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "store": True,
    "metadata": {"bench": "yes"},
}
WARMUP = 400


def completion(i: int) -> dict[str, object]:
    return {
        "id": f"chatcmpl-keep{i:08d}", "object": "chat.completion", "created": 1_700_000_000 + i, "model": "gpt-bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend of mine!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
    }


def summary(name: str, seconds: list[float]) -> float:
    ordered = sorted(seconds)
    median = statistics.median(ordered) * 1e6
    p95 = ordered[max(0, math.ceil(len(ordered) * 0.95) - 1)] * 1e6
    print(f"{name:<34} median {median:7.1f} us   p95 {p95:7.1f} us   ({len(ordered)} creates)")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=4000)
    args = parser.parse_args()

    from webapp import validation
    from webapp.api.create import PENDING_BATCH, _save
    from webapp.extensions import keep_pending_derived_data

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "keep.db")
        url = f"sqlite:///{path}"
        empty_and_migrate(url)
        app = make_app(url)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("CREATE TABLE bench_poke (n INTEGER)")
        own: list[float] = []
        others: list[float] = []
        batches: list[float] = []
        with app.app_context():
            create = validation.clean_create_request(REQUEST)
            for i in range(args.creates + WARMUP):
                poked = i % 2 == 1
                if poked:
                    other.execute("INSERT INTO bench_poke VALUES (1)")
                start = time.perf_counter()
                _save(create, completion(i), "req-bench", "key:bench")
                elapsed = time.perf_counter() - start
                if i >= WARMUP:
                    (others if poked else own).append(elapsed)
                if i % PENDING_BATCH == PENDING_BATCH - 1:
                    start = time.perf_counter()
                    keep_pending_derived_data()
                    if i >= WARMUP:
                        batches.append(time.perf_counter() - start)
        other.close()
    print(f"keeping a completion (SQLite, in process, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')})")
    warm = summary("after its own write", own)
    cold = summary("after another connection's write", others)
    print(f"another connection's write makes it {cold / warm:.2f}x as long")
    ordered = sorted(batches)
    batch = statistics.median(ordered) * 1e6
    print(f"{'writing what ' + str(PENDING_BATCH) + ' creates left pending':<34} median {batch:7.1f} us   "
          f"({len(ordered)} batches: {batch / PENDING_BATCH:.1f} us a create)")
    print(f"a create after its own write, with its share of the batch: {warm + batch / PENDING_BATCH:.1f} us")


if __name__ == "__main__":
    main()
