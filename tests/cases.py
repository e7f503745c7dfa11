"""The one table of bad inputs. The validation functions, the API and the admin form
must each reject every case with the same param, code and message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BadMetadata:
    id: str
    metadata: Any
    param: str
    code: str


@dataclass(frozen=True)
class BadQuery:
    id: str
    query: list[tuple[str, str]]
    param: str
    code: str


LONG_KEY = "k" * 65
BAD_METADATA = [
    BadMetadata("too-many-pairs", {f"k{i}": "v" for i in range(17)}, "metadata", "object_above_max_properties"),
    BadMetadata("key-too-long", {LONG_KEY: "v"}, f"metadata.{LONG_KEY}", "property_name_above_max_length"),
    BadMetadata("value-too-long", {"topic": "x" * 513}, "metadata.topic", "string_above_max_length"),
    # 513 characters but fewer bytes would pass a byte count; 300 two-byte characters pass a character count.
    BadMetadata("value-too-long-unicode", {"topic": "é" * 513}, "metadata.topic", "string_above_max_length"),
    BadMetadata("value-number", {"score": 5}, "metadata.score", "invalid_type"),
    BadMetadata("value-null", {"score": None}, "metadata.score", "invalid_type"),
    BadMetadata("value-object", {"score": {"a": "b"}}, "metadata.score", "invalid_type"),
    BadMetadata("not-an-object", ["a", "b"], "metadata", "invalid_type"),
    BadMetadata("empty-key", {"": "v"}, "metadata", "invalid_value"),
    BadMetadata("nul-in-key", {"a\x00b": "v"}, "metadata", "invalid_value"),
    BadMetadata("nul-in-value", {"topic": "a\x00b"}, "metadata.topic", "invalid_value"),
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
    BadQuery("order-sideways", [("order", "sideways")], "order", "invalid_value"),
    BadQuery("too-many-filters", [(f"metadata[k{i}]", "v") for i in range(17)], "metadata", "object_above_max_properties"),
    BadQuery("filter-key-too-long", [(f"metadata[{LONG_KEY}]", "v")], f"metadata.{LONG_KEY}", "property_name_above_max_length"),
    BadQuery("nul-in-model", [("model", "a\x00b")], "model", "invalid_value"),
    BadQuery("nul-in-after", [("after", "a\x00b")], "after", "invalid_value"),
    BadQuery("nul-in-filter", [("metadata[k]", "a\x00b")], "metadata.k", "invalid_value"),
    BadQuery("filter-key-twice", [("metadata[team]", "red"), ("metadata[team]", "blue")], "metadata.team", "invalid_value"),
    BadQuery("filter-value-too-long", [("metadata[topic]", "x" * 513)], "metadata.topic", "string_above_max_length"),
]
