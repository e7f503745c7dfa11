"""Search latency at scale, run by hand.

    python bench/search.py --rows 10000 1000000 [--database-url URL_10K URL_1M]

Fills a scratch database per size (temporary SQLite files unless URLs are given; a URL
whose database already holds that many bench completions is reused) with multilingual
conversations (bench/seed.py), then times what the admin list and the API do for a
search, newest first: the first page of a rare term, a common term, a two-character
Chinese word, a term with a metadata filter, a term within a day (any 24 hours, and a whole
UTC day as the admin list's date inputs ask), a term matching nothing,
and the capped match count the admin list shows beside such a page (also for two combined
filters beyond the issue's shapes, which are slower). Prints median and p95
per shape and per size, and the ratio of the largest size to the first.
"""

from __future__ import annotations

from seed import CJK_WORD, COMMON_WORD, FIRST_SECOND, NOWHERE_WORD, RARE_WORD, Shape, arguments, capped_count, compare

from webapp import store, validation
from webapp.extensions import db
from webapp.validation import PageQuery


def first_page(**filters: object):
    selection = validation.clean_filters(**filters)  # type: ignore[arg-type]

    def run() -> None:
        page = store.list_completions(db.session, filter=selection, page=PageQuery(limit=20, order="desc"))
        [store.completion_object(row) for row in page.rows]

    return run


def count(**filters: object):
    return capped_count(validation.clean_filters(**filters))  # type: ignore[arg-type]


def shapes(repeat: int) -> list[Shape]:
    """The search shapes the issue names, and a few more."""
    day = str(FIRST_SECOND + 86_400)
    # The admin list's date inputs ask for whole UTC days: the one holding ``day``.
    utc_day = (FIRST_SECOND + 86_400) // 86_400 * 86_400
    whole_day = {"created_after": str(utc_day), "created_before": str(utc_day + 86_400)}
    return [
        (f"rare term ({RARE_WORD}, 1/10,007)", first_page(search=RARE_WORD), repeat),
        (f"common term ({COMMON_WORD})", first_page(search=COMMON_WORD), repeat),
        (f"two-character Chinese word ({CJK_WORD})", first_page(search=CJK_WORD), repeat),
        ("Arabic word (الفاتورة)", first_page(search="الفاتورة"), repeat),
        (f"term + metadata filter ({COMMON_WORD}, team=team-2)", first_page(search=COMMON_WORD, metadata=[("team", "team-2")]), repeat),
        ("rare term + metadata filter", first_page(search=RARE_WORD, metadata=[("team", "team-0")]), repeat),
        (f"term within one day ({COMMON_WORD})", first_page(search=COMMON_WORD, created_after=day, created_before=str(int(day) + 86_400)), repeat),
        ("two terms (order 发票)", first_page(search=f"{COMMON_WORD} 发票"), repeat),
        (f"term matching nothing ({NOWHERE_WORD})", first_page(search=NOWHERE_WORD), repeat),
        (f"capped count, common term ({COMMON_WORD})", count(search=COMMON_WORD), repeat),
        (f"capped count, Chinese word ({CJK_WORD})", count(search=CJK_WORD), repeat),
        (f"capped count, term + metadata filter ({COMMON_WORD}, team=team-2)", count(search=COMMON_WORD, metadata=[("team", "team-2")]), repeat),
        ("capped count, two terms (order 发票)", count(search=f"{COMMON_WORD} 发票"), repeat),
        ("capped count, no filter", count(), repeat),
        # Beyond the shapes: filters people combine, and the counts the admin list shows beside them.
        (f"Chinese word + metadata filter ({CJK_WORD}, team=team-2)", first_page(search=CJK_WORD, metadata=[("team", "team-2")]), repeat),
        (f"term + model + metadata filter ({COMMON_WORD}, model-2, team=team-2)", first_page(search=COMMON_WORD, model="model-2", metadata=[("team", "team-2")]), repeat),
        (f"capped count, Chinese word + metadata filter ({CJK_WORD}, team=team-2)", count(search=CJK_WORD, metadata=[("team", "team-2")]), repeat),
        (f"capped count, term + model + metadata filter ({COMMON_WORD}, model-2, team=team-2)", count(search=COMMON_WORD, model="model-2", metadata=[("team", "team-2")]), repeat),
        (f"capped count, term within one day ({COMMON_WORD})", count(search=COMMON_WORD, created_after=day, created_before=str(int(day) + 86_400)), repeat),
        (f"term within one UTC day ({COMMON_WORD}, the admin list's dates)", first_page(search=COMMON_WORD, **whole_day), repeat),
        (f"capped count, term within one UTC day ({COMMON_WORD})", count(search=COMMON_WORD, **whole_day), repeat),
        (f"capped count, term + metadata filter within one UTC day ({COMMON_WORD}, team=team-2)", count(search=COMMON_WORD, metadata=[("team", "team-2")], **whole_day), repeat),
    ]


def main() -> None:
    args = arguments(__doc__ or "")
    compare(lambda _rows: shapes(args.repeat), sizes=args.rows, urls=args.urls)


if __name__ == "__main__":
    main()
