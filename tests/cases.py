"""The one table of bad inputs. The validation functions, the API and the admin form
must each reject every case with the same param, code and message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from webapp import validation


@dataclass(frozen=True)
class BadMetadata:
    id: str
    metadata: Any
    param: str
    code: str
    # Which half of a pair is at fault (a form shows the message beside it); None: the whole map.
    part: str | None = None


@dataclass(frozen=True)
class BadQuery:
    id: str
    query: list[tuple[str, str]]
    param: str
    code: str


LONG_KEY = "k" * 65
BAD_METADATA = [
    BadMetadata("too-many-pairs", {f"k{i}": "v" for i in range(17)}, "metadata", "object_above_max_properties"),
    BadMetadata("key-too-long", {LONG_KEY: "v"}, f"metadata.{LONG_KEY}", "property_name_above_max_length", "key"),
    BadMetadata("value-too-long", {"topic": "x" * 513}, "metadata.topic", "string_above_max_length", "value"),
    # 513 characters but fewer bytes would pass a byte count; 300 two-byte characters pass a character count.
    BadMetadata("value-too-long-unicode", {"topic": "é" * 513}, "metadata.topic", "string_above_max_length", "value"),
    BadMetadata("value-number", {"score": 5}, "metadata.score", "invalid_type", "value"),
    BadMetadata("value-null", {"score": None}, "metadata.score", "invalid_type", "value"),
    BadMetadata("value-object", {"score": {"a": "b"}}, "metadata.score", "invalid_type", "value"),
    BadMetadata("not-an-object", ["a", "b"], "metadata", "invalid_type"),
    BadMetadata("empty-key", {"": "v"}, "metadata", "invalid_value", "key"),
    BadMetadata("nul-in-key", {"a\x00b": "v"}, "metadata", "invalid_value", "key"),
    BadMetadata("nul-in-value", {"topic": "a\x00b"}, "metadata.topic", "invalid_value", "value"),
]
# Values at the limits that must pass.
GOOD_METADATA = [
    {},
    None,
    {f"k{i}": "v" for i in range(16)},
    {"k" * 64: "v" * 512},
    {"topic": "é" * 512},
]

BAD_LIST_QUERIES = [
    BadQuery("limit-zero", [("limit", "0")], "limit", "integer_below_min_value"),
    BadQuery("limit-negative", [("limit", "-3")], "limit", "integer_below_min_value"),
    BadQuery("limit-101", [("limit", "101")], "limit", "integer_above_max_value"),
    BadQuery("limit-not-a-number", [("limit", "ten")], "limit", "invalid_type"),
    # Python's int() takes these; a limit is ASCII digits only.
    BadQuery("limit-underscore", [("limit", "1_0")], "limit", "invalid_type"),
    BadQuery("limit-arabic-indic-digits", [("limit", "١٠")], "limit", "invalid_type"),
    BadQuery("limit-fullwidth-digits", [("limit", "１０")], "limit", "invalid_type"),
    BadQuery("limit-spaces", [("limit", " 10 ")], "limit", "invalid_type"),
    BadQuery("limit-plus", [("limit", "+10")], "limit", "invalid_type"),
    BadQuery("order-sideways", [("order", "sideways")], "order", "invalid_value"),
    BadQuery("too-many-filters", [(f"metadata[k{i}]", "v") for i in range(17)], "metadata", "object_above_max_properties"),
    BadQuery("filter-key-too-long", [(f"metadata[{LONG_KEY}]", "v")], f"metadata.{LONG_KEY}", "property_name_above_max_length"),
    BadQuery("nul-in-model", [("model", "a\x00b")], "model", "invalid_value"),
    BadQuery("nul-in-after", [("after", "a\x00b")], "after", "invalid_value"),
    BadQuery("nul-in-filter", [("metadata[k]", "a\x00b")], "metadata.k", "invalid_value"),
    BadQuery("filter-key-twice", [("metadata[team]", "red"), ("metadata[team]", "blue")], "metadata.team", "invalid_value"),
    BadQuery("filter-value-too-long", [("metadata[topic]", "x" * 513)], "metadata.topic", "string_above_max_length"),
    BadQuery("created-after-yesterday", [("created_after", "yesterday")], "created_after", "invalid_type"),
    BadQuery("created-before-fraction", [("created_before", "1700000000.5")], "created_before", "invalid_type"),
    BadQuery("created-after-a-date", [("created_after", "2025-10-09")], "created_after", "invalid_type"),
    BadQuery("created-after-huge", [("created_after", "9" * 30)], "created_after", "invalid_type"),
    BadQuery("unknown-parameter", [("serch", "refund")], "serch", "unknown_parameter"),
    BadQuery("unknown-metadata-shape", [("metadata.team", "red")], "metadata.team", "unknown_parameter"),
    BadQuery("search-too-long", [("search", "x" * (validation.MAX_SEARCH_LENGTH + 1))], "search", "string_above_max_length"),
    BadQuery("nul-in-search", [("search", "a\x00b")], "search", "invalid_value"),
]


# Ids a completion may not be stored under (DESIGN.md "Ids"), and ones at the limits that it may.
BAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 256, id="256-characters"),
    pytest.param("imp/messages", id="slash"),
    pytest.param("has space", id="space"),
    pytest.param("tab\there", id="tab"),
    pytest.param("new\nline", id="newline"),
    pytest.param("no\u00a0break", id="no-break-space"),
    pytest.param("nul\x00", id="nul"),
    pytest.param("bell\x07", id="control"),
    pytest.param("c1\x85", id="c1-control"),
]
GOOD_IDS = ["x", "x" * 255, "chatcmpl-AbC123_x.y:z", "ünïcødé-✓-完成", "100%25-percent", "it's-\"quoted\";--"]


@dataclass(frozen=True)
class FilterCase:
    """A filter over the ``seeded`` completions and the ids it matches, oldest first.

    The API and the admin list must both find exactly these (the list newest first).
    """

    id: str
    model: str | None
    metadata: list[tuple[str, str]]
    expected: list[str]

    def api_query(self) -> str:
        """Return the filter as the API's query string."""
        pairs = [("model", self.model)] if self.model else []
        return urlencode(pairs + [(f"metadata[{key}]", value) for key, value in self.metadata])

    def admin_query(self) -> str:
        """Return the filter as the admin list's query string (``metadata=KEY=VALUE``)."""
        pairs = [("model", self.model)] if self.model else []
        return urlencode(pairs + [("metadata", f"{key}={value}") for key, value in self.metadata])


FILTER_CASES = [
    FilterCase("model", "gpt-a", [], ["c1", "c3", "c5"]),
    FilterCase("one-pair", None, [("team", "red")], ["c0", "c1", "c2"]),
    FilterCase("two-pairs", None, [("team", "red"), ("n", "2")], ["c2"]),
    FilterCase("two-pairs-never-together", None, [("team", "red"), ("n", "4")], []),
    FilterCase("three-pairs", "gpt-b", [("team", "blue"), ("n", "4"), ("n2", "x")], []),
    FilterCase("model-and-pair", "gpt-b", [("team", "blue")], ["c4"]),
    FilterCase("no-such-value", None, [("team", "green")], []),
    FilterCase("no-such-model", "gpt-z", [], []),
]


def message_of(rule: Callable[[Any], Any], value: Any) -> str:
    """Return the message a rule of ``webapp.validation`` words for ``value``: every surface must show exactly it."""
    try:
        rule(value)
    except validation.ValidationError as exc:
        return exc.message
    raise AssertionError(f"{value!r} passes {rule.__name__}")


# --- Search -----------------------------------------------------------------------------------

SEARCH_SECOND = 1_700_100_000


def _reply(content: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "refusal": None, **fields}


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": arguments}}


# (id, model, metadata, input messages, reply message): created one second apart, in this order.
SEARCH_CORPUS: list[tuple[str, str, dict[str, str], list[dict[str, Any]], dict[str, Any]]] = [
    ("s-refund", "gpt-a", {"team": "red"}, [{"role": "user", "content": "I want a REFUND for my order"}], _reply("Sure, refunds take 3 days.")),
    ("s-ticket", "gpt-b", {"team": "blue"}, [{"role": "user", "content": "Is this ticket nonrefundable?"}], _reply("Yes, it is.")),
    (
        "s-turns", "gpt-a", {"team": "red"},
        [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "Where is my parcel?"},
        ],
        _reply("It ships tomorrow."),
    ),
    ("s-joke", "gpt-b", {}, [{"role": "user", "content": "Tell me a joke"}], _reply("Knock knock. Xylophone who?")),
    ("s-tool", "gpt-a", {}, [{"role": "user", "content": "Status please"}], _reply(None, tool_calls=[_call("lookup_order", '{"order_id": "ZX-4471"}')])),
    ("s-zh", "gpt-b", {"team": "blue"}, [{"role": "user", "content": "你好，我想申请退款，谢谢"}], _reply("好的，我们会开发票给您。")),
    ("s-ja", "gpt-a", {}, [{"role": "user", "content": "この商品を返品したいです"}], _reply("かしこまりました。返金いたします。")),
    ("s-ar", "gpt-b", {}, [{"role": "user", "content": "أريد استرداد أموالي من فضلك"}], _reply("بالتأكيد، سنعيد المبلغ.")),
    ("s-de", "gpt-a", {}, [{"role": "user", "content": "Wie lang ist die Straße?"}], _reply("ΣΟΦΙΑ weiß es.")),
    ("s-refusal", "gpt-b", {}, [{"role": "user", "content": "Teach me"}], {"role": "assistant", "content": None, "refusal": "I cannot help with lockpicking."}),
    (
        "s-parts", "gpt-a", {},
        [{"role": "user", "content": [{"type": "text", "text": "Describe this invoice photo"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}],
        _reply("A receipt."),
    ),
    (
        "s-input-tool", "gpt-b", {},
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", '{"city": "Reykjavík"}')]},
            {"role": "tool", "tool_call_id": "call_get_weather", "content": "Cold"},
        ],
        _reply("It is cold."),
    ),
    ("s-gone", "gpt-a", {"team": "red"}, [{"role": "user", "content": "refund the deleted one 退款"}], _reply("ok")),
]
DELETED_SEARCH_IDS = ["s-gone"]


@dataclass(frozen=True)
class SearchCase:
    """A search (and other filters) over ``SEARCH_CORPUS`` and the ids it finds, oldest first."""

    id: str
    search: str
    expected: list[str]
    extra: tuple[tuple[str, str], ...] = ()

    def api_query(self) -> list[tuple[str, str]]:
        return [("search", self.search), *self.extra]


def _at(name: str) -> str:
    return str(SEARCH_SECOND + [row[0] for row in SEARCH_CORPUS].index(name))


SEARCH_CASES = [
    SearchCase("word", "refund", ["s-refund", "s-ticket"]),
    SearchCase("any-case", "ReFuNd", ["s-refund", "s-ticket"]),
    SearchCase("plural-in-reply", "REFUNDS", ["s-refund"]),
    SearchCase("inside-a-longer-word", "efundab", ["s-ticket"]),
    SearchCase("later-turn", "parcel", ["s-turns"]),
    SearchCase("earlier-assistant-turn", "how can i", ["s-turns"]),
    SearchCase("reply-only", "xylophone", ["s-joke"]),
    SearchCase("tool-call-arguments", "zx-4471", ["s-tool"]),
    SearchCase("tool-call-name", "lookup_order", ["s-tool"]),
    SearchCase("input-tool-call", "reykjavík get_weather", ["s-input-tool"]),
    SearchCase("refusal", "lockpicking", ["s-refusal"]),
    SearchCase("text-part", "invoice", ["s-parts"]),
    SearchCase("chinese-two-characters", "退款", ["s-zh"]),
    SearchCase("chinese-in-reply", "发票", ["s-zh"]),
    SearchCase("chinese-one-character", "款", ["s-zh"]),
    SearchCase("chinese-longer", "申请退款", ["s-zh"]),
    SearchCase("japanese", "返品", ["s-ja"]),
    SearchCase("japanese-kana", "かしこまりました", ["s-ja"]),
    SearchCase("arabic", "استرداد", ["s-ar"]),
    SearchCase("german-sharp-s", "STRASSE", ["s-de"]),
    SearchCase("greek-case", "σοφια", ["s-de"]),
    SearchCase("short-latin-term", "zx", ["s-tool"]),
    SearchCase("several-terms", "refund order", ["s-refund"]),
    SearchCase("several-terms-any-order", "ticket REFUND", ["s-ticket"]),
    SearchCase("terms-never-together", "refund parcel", []),
    # A long term beside a one- or two-character CJK word: one MATCH of SQLite's trigram table, one GIN scan.
    SearchCase("long-term-and-chinese-word", "申请退款 发票", ["s-zh"]),
    SearchCase("long-term-and-one-character", "かしこまりました 返", ["s-ja"]),
    SearchCase("latin-term-and-chinese-word-apart", "refund 发票", []),
    SearchCase("latin-term-and-chinese-word-deleted", "refund 退款", []),
    SearchCase("with-model", "refund", ["s-ticket"], (("model", "gpt-b"),)),
    SearchCase("with-metadata", "refund", ["s-refund"], (("metadata[team]", "red"),)),
    SearchCase("with-created-after", "refund", ["s-ticket"], (("created_after", _at("s-ticket")),)),
    SearchCase("with-created-before", "refund", ["s-refund"], (("created_before", _at("s-ticket")),)),
    SearchCase("created-range-only", "", ["s-ticket", "s-turns"], (("created_after", _at("s-ticket")), ("created_before", _at("s-joke")))),
    SearchCase("no-match", "quetzalcoatl", []),
    SearchCase("blank", "   ", [row[0] for row in SEARCH_CORPUS if row[0] not in DELETED_SEARCH_IDS]),
]


def search_records() -> list[dict[str, Any]]:
    """Return ``SEARCH_CORPUS`` as export-format records."""
    records = []
    for offset, (cid, model, metadata, messages, reply) in enumerate(SEARCH_CORPUS):
        records.append(
            {
                "id": cid,
                "object": "chat.completion",
                "created": SEARCH_SECOND + offset,
                "model": model,
                "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
                "metadata": metadata,
                "messages": messages,
            }
        )
    return records
