"""List-page latency at scale, run by hand: ``python bench/list.py [--rows 1000000] [--database-url URL]``.

Fills a scratch database (a temporary SQLite file unless --database-url names another
one, which is emptied first) with N completions in bulk, then times the list queries the
API and the admin UI make: first page, a deep cursor, the model filter, a common and a rare
metadata filter, newest first. Prints median and p95 per query, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import insert, text  # noqa: E402

from webapp import create_app, store  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.models import Completion, CompletionMetadata  # noqa: E402
from webapp.validation import Filter, ListQuery, PageQuery  # noqa: E402

BATCH = 5000


def fill(rows: int) -> None:
    body = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 200, "refusal": None}, "logprobs": None, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    messages = [{"role": "user", "content": "y" * 300}]
    start = time.monotonic()
    for first in range(0, rows, BATCH):
        chunk = range(first, min(rows, first + BATCH))
        db.session.execute(
            insert(Completion),
            [
                {
                    "seq": i + 1, "id": f"chatcmpl-{i:08d}", "created": 1_700_000_000 + i // 3,
                    "model": f"model-{i % 5}", "deleted": False,
                    "body": {**body, "id": f"chatcmpl-{i:08d}", "created": 1_700_000_000 + i // 3, "model": f"model-{i % 5}"},
                    "messages": messages, "metadata_map": {"team": f"team-{i % 4}", "shard": f"shard-{(i // 4) % 4}", "parity": f"p{i % 2}", **({"rare": "yes"} if i % 1000 == 0 else {})},
                    "version": 1,
                }
                for i in chunk
            ],
        )
        db.session.execute(
            insert(CompletionMetadata),
            [{"completion_seq": i + 1, "key": "team", "value": f"team-{i % 4}"} for i in chunk]
            + [{"completion_seq": i + 1, "key": "shard", "value": f"shard-{(i // 4) % 4}"} for i in chunk]
            + [{"completion_seq": i + 1, "key": "parity", "value": f"p{i % 2}"} for i in chunk]
            + [{"completion_seq": i + 1, "key": "rare", "value": "yes"} for i in chunk if i % 1000 == 0],
        )
        db.session.commit()
        done = min(rows, first + BATCH)
        print(f"\rfilling: {done}/{rows} ({done / (time.monotonic() - start):.0f} rows/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ANALYZE"))
    else:
        db.session.execute(text("ANALYZE"))
    db.session.commit()


def Q(*, model: str | None = None, metadata: dict[str, str] | None = None, **page: object) -> ListQuery:
    """Return a list query from the API's parameter names."""
    return ListQuery(filter=Filter(model=model, metadata=metadata or {}), page=PageQuery(**page))  # type: ignore[arg-type]


def measure(name: str, query: ListQuery, repeat: int) -> None:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        page = store.list_completions(db.session, filter=query.filter, page=query.page)
        [store.completion_object(row) for row in page.rows]
        timings.append((time.perf_counter() - start) * 1000)
        db.session.rollback()
    timings.sort()
    p95 = timings[int(len(timings) * 0.95) - 1]
    print(f"{name:<34} median {statistics.median(timings):8.2f} ms   p95 {p95:8.2f} ms   rows {len(page.rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    with app.app_context():
        from flask_migrate import upgrade

        db.drop_all()
        db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade()
        fill(args.rows)
        middle = f"chatcmpl-{args.rows // 2:08d}"
        print(f"{args.rows} completions on {db.engine.dialect.name}")
        measure("first page (20)", Q(), args.repeat)
        measure("newest first (20)", Q(order="desc"), args.repeat)
        measure("deep cursor (100)", Q(after=middle, limit=100), args.repeat)
        measure("model filter", Q(model="model-3", order="desc"), args.repeat)
        measure("common metadata filter (1/4)", Q(metadata={"team": "team-2"}, order="desc"), args.repeat)
        measure("rare metadata filter (1/1000)", Q(metadata={"rare": "yes"}, order="desc"), args.repeat)
        measure("two common filters (1/4 x 1/4)", Q(metadata={"team": "team-2", "shard": "shard-1"}, order="desc"), args.repeat)
        measure("two common filters, never together", Q(metadata={"team": "team-0", "parity": "p1"}, order="desc"), 5)
        measure("common + rare filter", Q(metadata={"team": "team-0", "rare": "yes"}, order="desc"), args.repeat)
        measure("rare filter + deep cursor", Q(metadata={"rare": "yes"}, after=middle), args.repeat)
        measure("absent metadata value", Q(metadata={"team": "nobody"}), 3)


if __name__ == "__main__":
    main()
