"""Bench-only bulk seeding shared by ``bench/list.py`` and ``bench/search.py``: never used by the app.

Fills a scratch database with N completions of realistic multilingual conversations
(English, Spanish, German, Chinese, Japanese, Arabic: a pool of generated conversations,
reused) and the metadata shapes ``bench/list.py`` filters on. The rows carry exactly the
columns ``store.completion_values`` computes (search text included); the search indexes are
dropped while loading and built afterwards by the statements of their migration, which
is how a bulk load goes fastest on both backends.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import inspect
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import ModuleType
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import insert, text  # noqa: E402

from webapp import create_app, store  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.models import Completion, CompletionMetadata  # noqa: E402

BATCH = 5000
POOL = 20_000
FIRST_SECOND = 1_700_000_000
# Words planted at known rates, so each benchmark shape has a known answer size.
RARE_WORD = "quetzal"  # 1 in 10,007 completions
CJK_WORD = "退款"  # in about 1 Chinese conversation in 8
COMMON_WORD = "order"  # in about 1 conversation in 4
NOWHERE_WORD = "zzyzxq"

_EN = (
    "I placed an order last week and it has not arrived yet", "Can you help me reset my password",
    "The invoice shows the wrong amount", "Please summarise this article about solar panels",
    "What is the weather going to be like tomorrow", "My package arrived damaged, what can I do",
    "Translate this paragraph into French", "Write a short poem about the sea",
    "How do I cancel my subscription", "Explain the difference between TCP and UDP",
    "Is there a discount for students", "The app crashes when I open the settings page",
)
_EN_REPLY = (
    "I am sorry to hear that. Let me check the status of your order", "Sure, here is a step by step guide",
    "I have updated the invoice and sent you a copy", "Here is a concise summary of the main points",
    "Tomorrow will be sunny with a light breeze in the afternoon", "You can request a replacement from your account page",
    "Voici la traduction demandée", "The waves roll in, silver under the moon",
    "Your subscription has been cancelled and you will not be charged again", "TCP is connection oriented while UDP is not",
    "Students get fifteen percent off with a valid email address", "Thanks for the report, our engineers are looking into it",
)
_ES = ("Quiero cambiar la dirección de envío de mi pedido", "¿Cuánto tarda la entrega a Madrid?", "La factura tiene un error")
_ES_REPLY = ("Claro, he actualizado la dirección de su pedido", "La entrega tarda de dos a tres días laborables")
_DE = ("Wie lange dauert die Lieferung nach Berlin", "Meine Bestellung ist beschädigt angekommen", "Bitte erklären Sie die Rechnung")
_DE_REPLY = ("Die Lieferung dauert zwei bis drei Werktage", "Das tut mir leid, wir senden Ihnen Ersatz")
_ZH = ("我想查询一下我的订单状态", "请帮我开一张发票", "这个产品什么时候能到货", "我想申请退款，商品有质量问题", "你们的客服电话是多少")
_ZH_REPLY = ("您的订单已经发货，预计三天内送达", "好的，发票会在二十四小时内发送到您的邮箱", "非常抱歉给您带来不便，我们会尽快处理")
_JA = ("注文した商品がまだ届きません", "返品の手続きを教えてください", "領収書を発行してもらえますか", "パスワードを忘れてしまいました")
_JA_REPLY = ("ご不便をおかけして申し訳ありません。配送状況を確認します", "かしこまりました。手続きの方法をご案内します")
_AR = ("أريد تتبع طلبي من فضلك", "متى سيصل الطرد", "الفاتورة تحتوي على خطأ")
_AR_REPLY = ("بالتأكيد، سأتحقق من حالة طلبك الآن", "سيصل الطرد خلال ثلاثة أيام عمل")
LANGUAGES = (
    (_EN, _EN_REPLY, 50), (_ES, _ES_REPLY, 10), (_DE, _DE_REPLY, 8), (_ZH, _ZH_REPLY, 15), (_JA, _JA_REPLY, 10), (_AR, _AR_REPLY, 7),
)


def _conversation(rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    asks, replies, _weight = rng.choices(LANGUAGES, weights=[w for *_, w in LANGUAGES])[0]
    question = ". ".join(rng.sample(asks, k=min(len(asks), rng.randint(1, 3)))) + "?"
    answer = ". ".join(rng.choice(replies) for _ in range(rng.randint(2, 4))) + "."
    if asks is _EN and rng.random() < 0.5:
        question += f" Order number {rng.randint(10000, 99999)}."
    messages = [{"role": "system", "content": "You are a helpful support assistant."}, {"role": "user", "content": question}]
    reply: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}
    if rng.random() < 0.1:
        reply = {
            "role": "assistant", "content": None, "refusal": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": f'{{"order_id": "A-{rng.randint(1000, 9999)}"}}'}}],
        }
    return messages, reply


def _metadata(i: int) -> dict[str, str]:
    return {"team": f"team-{i % 4}", "shard": f"shard-{(i // 4) % 4}", "parity": f"p{i % 2}", **({"rare": "yes"} if i % 1000 == 0 else {})}


def _row(i: int, pool: list[tuple[list[dict[str, Any]], dict[str, Any]]]) -> dict[str, Any]:
    messages, reply = pool[(i * 7919) % len(pool)]
    if i % 10_007 == 0:
        messages = [messages[0], {"role": "user", "content": messages[1]["content"] + f" My parrot is called {RARE_WORD.title()}."}]
    created = FIRST_SECOND + i // 3
    body = {
        "id": f"chatcmpl-{i:08d}", "object": "chat.completion", "created": created, "model": f"model-{i % 5}",
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70},
    }
    return {"seq": i + 1, **store.completion_values(body=body, messages=messages, metadata=_metadata(i)), "version": 1}


def _migration(name: str) -> ModuleType:
    """Load the migration module ``migrations/versions/*_<name>.py``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (path,) = glob.glob(os.path.join(root, "migrations", "versions", f"[0-9][0-9][0-9][0-9]_{name}.py"))
    spec = importlib.util.spec_from_file_location(f"migration_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _migrations() -> list[ModuleType]:
    """The migrations whose derived data (search indexes, metadata pair counts) a bulk load drops and rebuilds."""
    return [_migration(name) for name in ("search_index", "metadata_pair_counts", "search_terms_in_one_index", "short_search_text_beside_seq", "search_index_filter_words", "cheaper_create_writes")]


def derived_data(dialect: str, *, up: bool) -> list[str]:
    """Return the statements that build (or drop) every index and count the migrations keep by triggers."""
    modules = _migrations() if up else _migrations()[::-1]
    # 0009 split 0005's PostgreSQL trigger in two on its function: the second goes first.
    statements: list[str] = [] if up or dialect == "sqlite" else ["DROP TRIGGER IF EXISTS metadata_pair_recount ON completion_metadata"]
    for module in modules:
        # A later migration may remake what an earlier one made (0010 rewrites 0004's SQLite triggers).
        remakes = "earlier" in inspect.signature(module.index_statements).parameters
        statements += module.index_statements(dialect, up=up, **({"earlier": statements} if remakes else {}))
    return statements


def defer_again(dialect: str) -> None:
    """Give the triggers just rebuilt the condition of migration 0009 back (they stand aside while
    a batch import keeps its derived data itself), as an upgraded database has them."""
    deferral = _migration("deferred_derived_data")
    if dialect == "postgresql":
        _execute([statement for statement in deferral.POSTGRES_UP if "completion_metadata" in statement])
        return
    for name in deferral.SQLITE_TRIGGERS:
        sql = db.session.scalar(text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"), {"name": name})
        if deferral.SQLITE_DEFERRED not in sql:  # the rollup's trigger was never dropped
            db.session.execute(text(f"DROP TRIGGER {name}"))
            db.session.execute(text(deferral._with_condition(sql, deferrable=True)))
    db.session.commit()


COLUMNS = ("seq", "id", "created", "model", "deleted", "body", "messages", "metadata", "version", "updated_at", "search_text", "search_grams")


def _copy(values: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> None:
    """Load rows with PostgreSQL's COPY: several times faster than INSERT for a bulk load."""
    cursor = db.session.connection().connection.driver_connection.cursor()
    now = datetime.now(timezone.utc)
    with cursor.copy(f"COPY completions ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        for v in values:
            copy.write_row(
                (v["seq"], v["id"], v["created"], v["model"], False, json.dumps(v["body"]), json.dumps(v["messages"]),
                 json.dumps(v["metadata_map"]), 1, now, v["search_text"], v["search_grams"])
            )
    with cursor.copy("COPY completion_metadata (completion_seq, key, value) FROM STDIN") as copy:
        for pair in pairs:
            copy.write_row((pair["completion_seq"], pair["key"], pair["value"]))


def _execute(statements: list[str]) -> None:
    if db.engine.dialect.name == "postgresql":
        statements = ["SET LOCAL statement_timeout = 0", *statements]
    for statement in statements:
        db.session.execute(text(statement))
    db.session.commit()


def fill(rows: int) -> None:
    """Insert ``rows`` completions and their metadata in bulk, then build the search indexes."""
    rng = random.Random(7)
    pool = [_conversation(rng) for _ in range(POOL)]
    dialect = db.engine.dialect.name
    _execute(derived_data(dialect, up=False))
    start = time.monotonic()
    for first in range(0, rows, BATCH):
        chunk = range(first, min(rows, first + BATCH))
        values = [_row(i, pool) for i in chunk]
        pairs = [{"completion_seq": v["seq"], "key": key, "value": value} for v in values for key, value in v["metadata_map"].items()]
        if dialect == "postgresql":
            _copy(values, pairs)
        else:
            db.session.execute(insert(Completion), values)
            db.session.execute(insert(CompletionMetadata), pairs)
        db.session.commit()
        done = min(rows, first + BATCH)
        print(f"\rfilling: {done}/{rows} ({done / (time.monotonic() - start):.0f} rows/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    started = time.monotonic()
    _execute(derived_data(dialect, up=True))
    defer_again(dialect)
    if dialect == "postgresql":
        db.session.execute(text("SELECT setval(pg_get_serial_sequence('completions', 'seq'), :n)"), {"n": max(rows, 1)})
    print(f"search indexes built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    settle(analyze=True)


def settle(*, analyze: bool) -> None:
    """Leave the database as a running one has it: on PostgreSQL vacuumed (and analyzed), as
    autovacuum leaves a table after inserts (PostgreSQL 13 and later), so that the visibility map
    lets an index-only scan skip the table (migration 0011's count); on SQLite analyzed."""
    if db.engine.dialect.name != "postgresql":
        if analyze:
            db.session.execute(text("ANALYZE"))
            db.session.commit()
        return
    db.session.commit()
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("VACUUM (ANALYZE)" if analyze else "VACUUM"))
        connection.execute(text("RESET statement_timeout"))


def prepare(database_url: str | None, rows: int) -> Any:
    """Return an app over a database holding the ``rows`` bench completions.

    A database named by URL that holds exactly that many completions already (from an
    earlier run) is used as it is; otherwise it is emptied, migrated and filled.
    """
    url = database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    with app.app_context():
        try:
            present = db.session.scalar(text("SELECT count(*) FROM completions WHERE search_text IS NOT NULL"))
        except Exception:  # no schema yet
            present = None
        db.session.rollback()  # drop_all below uses another connection: hold no lock here
        from flask_migrate import upgrade

        if present == rows:
            print(f"reusing {rows} completions at {db.engine.url.render_as_string()}", file=sys.stderr)
            upgrade()  # a database seeded before a later migration catches up (it builds what it adds)
            settle(analyze=False)  # one seeded before bench runs vacuumed (quick when nothing changed)
            return app
        db.drop_all()
        _execute(derived_data(db.engine.dialect.name, up=False))
        db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade()
        fill(rows)
    return app


Timing = tuple[float, float]


def timed(run: Callable[[], Any], repeat: int) -> Timing:
    """Return the median and p95 of ``repeat`` runs of ``run``, in milliseconds (each in a fresh read transaction)."""
    timings = []
    run()  # warm the caches the way a running server has them warm
    db.session.rollback()
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        timings.append((time.perf_counter() - start) * 1000)
        db.session.rollback()
    timings.sort()
    return statistics.median(timings), timings[max(0, math.ceil(len(timings) * 0.95) - 1)]


Shape = tuple[str, Callable[[], Any], int]


def capped_count(selection: Any) -> Callable[[], int]:
    """Return the capped match count the admin list shows beside a page of ``selection`` (a Filter)."""
    from webapp.store.completions import COUNT_CAP

    return lambda: store.count_completions(db.session, filter=selection, cap=COUNT_CAP)


def compare(shapes: Callable[[int], list[Shape]], *, sizes: list[int], urls: list[str | None]) -> None:
    """Measure every shape (``shapes(rows)`` names them for a size) at every size, the first size
    being the baseline, and print one table: median and p95 per size, and the ratio of medians."""
    results: dict[str, list[Timing]] = {}
    dialect = ""
    for rows, url in zip(sizes, urls):
        app = prepare(url, rows)
        with app.app_context():
            dialect = db.engine.dialect.name
            for name, run, repeat in shapes(rows):
                results.setdefault(name, []).append(timed(run, repeat))
    head = " | ".join(f"{rows:,}: median / p95 ms" for rows in sizes)
    print(f"\n{dialect}, {platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"| shape | {head} | ratio {sizes[-1]:,}/{sizes[0]:,} |")
    print("| --- |" + " --- |" * (len(sizes) + 1))
    for name, timings in results.items():
        cells = " | ".join(f"{median:.2f} / {p95:.2f}" for median, p95 in timings)
        ratio = timings[-1][0] / timings[0][0] if timings[0][0] else float("nan")
        print(f"| {name} | {cells} | {ratio:.1f} |")


def arguments(description: str) -> argparse.Namespace:
    """Return the command line every bench script takes: the sizes and, per size, an optional database URL."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 200_000], help="sizes; the first is the baseline")
    parser.add_argument("--database-url", nargs="+", default=[], help="one URL per size (default: temporary SQLite files)")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    if args.database_url and len(args.database_url) != len(args.rows):
        parser.error("give one --database-url per --rows size")
    args.urls = args.database_url or [None] * len(args.rows)
    return args
