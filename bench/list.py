"""List-page latency at scale, run by hand.

    python bench/list.py --rows 10000 1000000 [--database-url URL_10K URL_1M]

Uses the databases of bench/search.py (bench/seed.py: multilingual conversations, metadata
``team`` 1/4, ``shard`` 1/4, ``parity`` 1/2 and ``rare`` 1/1000; a URL already holding that
many bench completions is reused) and times the list queries the API and the admin UI
make: first page, a deep cursor, the model filter, common and rare metadata filters and
their combinations, newest first, and the capped match count the admin list shows beside
such a page. Prints median and p95 per shape and per size, and the ratio of the largest
size to the first.
"""

from __future__ import annotations

from seed import Shape, arguments, capped_count, compare

from webapp import store
from webapp.extensions import db
from webapp.validation import Filter, PageQuery


def page(*, model: str | None = None, metadata: dict[str, str] | None = None, **query: object):
    selection, cursor = Filter(model=model, metadata=metadata or {}), PageQuery(**query)  # type: ignore[arg-type]

    def run() -> None:
        rows = store.list_completions(db.session, filter=selection, page=cursor).rows
        [store.completion_object(row) for row in rows]

    return run


def count(*, model: str | None = None, metadata: dict[str, str] | None = None):
    return capped_count(Filter(model=model, metadata=metadata or {}))


def shapes(rows: int, repeat: int) -> list[Shape]:
    """The list shapes, the middle cursor placed for a database of ``rows`` completions."""
    middle = f"chatcmpl-{rows // 2:08d}"
    return [
        ("first page (20)", page(), repeat),
        ("newest first (20)", page(order="desc"), repeat),
        ("deep cursor (100)", page(after=middle, limit=100), repeat),
        ("model filter", page(model="model-3", order="desc"), repeat),
        ("common metadata filter (1/4)", page(metadata={"team": "team-2"}, order="desc"), repeat),
        ("rare metadata filter (1/1000)", page(metadata={"rare": "yes"}, order="desc"), repeat),
        ("two common filters (1/4 x 1/4)", page(metadata={"team": "team-2", "shard": "shard-1"}, order="desc"), repeat),
        ("two common filters, never together", page(metadata={"team": "team-0", "parity": "p1"}, order="desc"), repeat),
        ("common + rare filter", page(metadata={"team": "team-0", "rare": "yes"}, order="desc"), repeat),
        ("rare filter + deep cursor", page(metadata={"rare": "yes"}, after=middle), repeat),
        ("absent metadata value", page(metadata={"team": "nobody"}), repeat),
        ("capped count, model filter", count(model="model-3"), repeat),
        ("capped count, common metadata filter", count(metadata={"team": "team-2"}), repeat),
        ("capped count, rare metadata filter", count(metadata={"rare": "yes"}), repeat),
        ("capped count, two common filters", count(metadata={"team": "team-2", "shard": "shard-1"}), repeat),
        ("capped count, common + rare filter", count(metadata={"team": "team-0", "rare": "yes"}), repeat),
    ]


def main() -> None:
    args = arguments(__doc__ or "")
    compare(lambda rows: shapes(rows, args.repeat), sizes=args.rows, urls=args.urls)


if __name__ == "__main__":
    main()
