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
