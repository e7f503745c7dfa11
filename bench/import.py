"""Import speed, run by hand: ``python bench/import.py [--lines 200000] [--runs 3] [--database-url URL]``.

Writes a JSONL file of N completions in the export format (two metadata pairs each, two input
messages, a reply), then, each run on a freshly emptied database (a temporary SQLite file unless
--database-url names a PostgreSQL one, whose tables are emptied first):

- ``floor``: the raw driver (sqlite3 / psycopg) parsing the same lines and inserting the same
  rows (completions, metadata pairs, history) with executemany, 1,000 lines a transaction;
- ``import``: ``flask import FILE`` into the empty store;
- ``again``: the same import a second time (every line found unchanged).

Each is a child process timed from its first line to its last (start-up excluded), with its
peak RSS (the larger of the process and its reading process, which ``import`` forks).
Prints lines/s (median and p95 over runs, p95 being the slower end) and the ratio of
import to floor measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_helpers import empty_and_migrate, make_app  # noqa: E402

BATCH = 1000


def write_file(path: str, lines: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(lines):
            record = {
                "id": f"chatcmpl-bench{i:08d}", "object": "chat.completion", "created": 1_700_000_000 + i // 3,
                "model": f"gpt-4o-mini-{i % 5}",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Reply {i}: " + "lorem ipsum " * 12, "refusal": None, "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 31, "completion_tokens": 40, "total_tokens": 71},
                "service_tier": "default", "system_fingerprint": "fp_bench", "request_id": f"req_{i}",
                "seed": None, "temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "tools": None, "tool_choice": None, "response_format": None, "input_user": None,
                "metadata": {"team": f"team-{i % 7}", "run": f"r{i % 100}"},
                "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": f"Question number {i}: " + "dolor sit amet " * 10}],
            }
            out.write(json.dumps(record) + "\n")


def floor_rows(raw: bytes, seq: int, now: object) -> tuple[tuple, list[tuple], tuple | None]:
    record = json.loads(raw)
    metadata = record.pop("metadata")
    messages = record.pop("messages")
    completion = (seq, record["id"], record["created"], record["model"], False, json.dumps(record), json.dumps(messages), json.dumps(metadata), 1, now)
    pairs = [(seq, key, value) for key, value in metadata.items()]
    history = (record["id"], "import", "{}", json.dumps(metadata), now) if metadata else None
    return completion, pairs, history


def child_floor(url: str, path: str) -> float:
    """Insert the file's rows with the bare driver; return the seconds it took."""
    postgres = url.startswith("postgresql")
    if postgres:
        import psycopg

        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        now = datetime.now(timezone.utc)
        completions_sql = "COPY completions (seq, id, created, model, deleted, body, messages, metadata, version, updated_at) FROM STDIN"
        pairs_sql = "COPY completion_metadata (completion_seq, key, value) FROM STDIN"
        history_sql = "COPY metadata_changes (completion_id, actor, before, after, changed_at) FROM STDIN"
    else:
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        completions_sql = "INSERT INTO completions (seq, id, created, model, deleted, body, messages, metadata, version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        pairs_sql = "INSERT INTO completion_metadata (completion_seq, key, value) VALUES (?, ?, ?)"
        history_sql = "INSERT INTO metadata_changes (completion_id, actor, before, after, changed_at) VALUES (?, ?, ?, ?, ?)"
    start = time.perf_counter()
    with open(path, "rb") as lines:
        seq = 0
        while True:
            chunk = [line for _, line in zip(range(BATCH), lines)]
            if not chunk:
                break
            rows = [floor_rows(raw, seq + n + 1, now) for n, raw in enumerate(chunk)]
            seq += len(chunk)
            cur = conn.cursor()
            if not postgres:
                cur.execute("BEGIN IMMEDIATE")
            tables = [
                (completions_sql, [c for c, _p, _h in rows]),
                (pairs_sql, [p for _c, pairs, _h in rows for p in pairs]),
                (history_sql, [h for _c, _p, h in rows if h]),
            ]
            for sql, values in tables:
                if postgres:  # the fastest way in: COPY
                    with cur.copy(sql) as copy:
                        for value in values:
                            copy.write_row(value)
                else:
                    cur.executemany(sql, values)
            conn.commit() if postgres else cur.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def child_import(url: str, path: str) -> float:
    """Run ``flask import FILE`` in this process after start-up; return the seconds it took."""
    app = make_app(url)
    runner = app.test_cli_runner()
    with app.app_context():
        start = time.perf_counter()
        result = runner.invoke(args=["import", path])
        elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"{result.output[-2000:]}\n{result.exception!r}")
    print(result.output.strip().splitlines()[-1], file=sys.stderr)
    return elapsed


def run_child(kind: str, url: str, path: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--database-url", url, "--file", path], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stdout}\n{out.stderr}")
    seconds, rss = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, rss


def summary(name: str, lines: int, seconds: list[float], rss: list[float]) -> float:
    rates = sorted(lines / s for s in seconds)
    median = statistics.median(rates)
    p95 = rates[max(0, int(len(rates) * 0.05) - 0)]  # the slow end: with few runs, the slowest
    print(f"{name:<8} median {median:>9,.0f} lines/s   p95 {p95:>9,.0f} lines/s   peak RSS {max(rss):6.0f} MiB")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", help="a scratch PostgreSQL database (emptied!); default: a temporary SQLite file")
    parser.add_argument("--child", choices=["floor", "import"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        from webapp.config import normalize_database_url

        url = normalize_database_url(args.database_url)
        seconds = child_floor(url, args.file) if args.child == "floor" else child_import(url, args.file)
        # The reading process import forks is waited for, so it counts among the children.
        peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        print(json.dumps([seconds, peak / 1024]))
        return

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        path = os.path.join(tmp, "in.jsonl")
        write_file(path, args.lines)
        print(f"{args.lines:,} lines, {os.path.getsize(path) / 2**20:.0f} MiB, {'PostgreSQL' if 'postgres' in url else 'SQLite'}, {args.runs} runs")
        results: dict[str, tuple[list[float], list[float]]] = {"floor": ([], []), "import": ([], []), "again": ([], [])}
        for _run in range(args.runs):
            for kind in ("floor", "import", "again"):
                if kind != "again":
                    empty_and_migrate(url)
                seconds, rss = run_child("floor" if kind == "floor" else "import", url, path)
                results[kind][0].append(seconds)
                results[kind][1].append(rss)
        medians = {kind: summary(kind, args.lines, *values) for kind, values in results.items()}
        print(f"import / floor: {medians['import'] / medians['floor']:.2f} of the raw driver's speed")


if __name__ == "__main__":
    main()
