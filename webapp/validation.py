"""Every input rule, shared by the JSON API, the admin forms and the command line.

This module imports no Flask and no WTForms. Each ``clean_*`` function takes plain
values (parsed JSON, query pairs, form input turned into the same plain shape) and
returns exactly what the store needs, or raises :class:`ValidationError` naming the
API's field (``param``) and an OpenAI error ``code``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_LENGTH = 64
MAX_METADATA_VALUE_LENGTH = 512
MAX_API_KEY_NAME_LENGTH = 100
MAX_ID_LENGTH = 255
DEFAULT_LIMIT = 20
MIN_LIMIT = 1
MAX_LIMIT = 100
ORDERS = ("asc", "desc")
ASCII_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
# ``search`` text of a list (issue 9) is refused past this many characters.
MAX_SEARCH_LENGTH = 1000
# The size of the model column: a longer ``model`` filter cannot match anything.
MAX_MODEL_LENGTH = 255


def _encoded(characters: int) -> int:
    """Return the bytes ``characters`` characters take in a URL at worst: four UTF-8 bytes each, each as ``%XX``."""
    return 12 * characters


# The longest request line a valid request needs: a list (the API's, or the admin list's with
# the same names) with every parameter at its longest, percent-encoded at worst, both cursors
# (the admin list's ``before`` too) and a ``created_*`` range of 20-digit numbers. About 134 KB;
# the app answers anything longer with 414 (gunicorn's own limit stops at 8,190 bytes, too few).
MAX_REQUEST_LINE = (
    len("GET /v1/chat/completions? HTTP/1.1")
    + MAX_METADATA_PAIRS * (len("&metadata%5B%5D=") + _encoded(MAX_METADATA_KEY_LENGTH + MAX_METADATA_VALUE_LENGTH))
    + len("&search=") + _encoded(MAX_SEARCH_LENGTH)
    + len("&model=") + _encoded(MAX_MODEL_LENGTH)
    + len("&after=&before=") + 2 * _encoded(MAX_ID_LENGTH)
    + len("&created_after=&created_before=") + 2 * 20
    + len("&limit=100&order=desc")
)

Order = Literal["asc", "desc"]


Part = Literal["key", "value"]
JSON_BODY_MESSAGE = "We could not parse the JSON body of your request. The body must be a JSON object."


@dataclass(eq=False)  # exceptions compare and hash by identity
class ValidationError(Exception):
    """A rejected input: ``message`` for people, ``param`` and ``code`` for programs.

    For a metadata pair at fault, ``key`` names the pair and ``part`` says which half is
    wrong (``"key"`` or ``"value"``), so a form can show the message beside that input.
    """

    message: str
    param: str | None = None
    code: str | None = None
    key: str | None = field(default=None, kw_only=True)
    part: Part | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__init__(self.message)


@dataclass(frozen=True)
class Filter:
    """Which completions a list, a download, an export or a bulk change is about.

    Built only by :func:`clean_filters`, whatever door the filter came through.
    """

    model: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PageQuery:
    """A cleaned ``after``/``limit``/``order`` query, as for ``GET .../messages``."""

    after: str | None = None
    limit: int = DEFAULT_LIMIT
    order: Order = "asc"


@dataclass(frozen=True)
class ListQuery:
    """A cleaned ``GET /chat/completions`` query: the filter and the page."""

    filter: Filter = field(default_factory=Filter)
    page: PageQuery = field(default_factory=PageQuery)


@dataclass(frozen=True)
class CreateRequest:
    """A cleaned ``POST /chat/completions`` body: what to forward and what to keep."""

    forward: dict[str, Any]
    store: bool
    stream: bool
    metadata: dict[str, str]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


_NUL_MESSAGE = "Invalid '{param}': strings must not contain NUL (\\u0000) characters."


def reject_nul(value: str, param: str, *, key: str | None = None, part: Part | None = None) -> str:
    """Return ``value`` unless it holds a NUL character, which no database text column can keep."""
    if "\x00" in value:
        raise ValidationError(_NUL_MESSAGE.format(param=param), param, "invalid_value", key=key, part=part)
    return value


def clean_metadata_key(key: Any, *, param: str = "metadata") -> str:
    """Return ``key`` if it is a usable metadata key; raise ValidationError otherwise."""
    if not isinstance(key, str) or not key:
        raise ValidationError(
            f"Invalid '{param}': keys must be non-empty strings.", param, "invalid_value", key="", part="key"
        )
    reject_nul(key, param, key=key, part="key")
    if len(key) > MAX_METADATA_KEY_LENGTH:
        raise ValidationError(
            f"Invalid '{param}.{key}': property name too long. Expected a property name with maximum "
            f"length {MAX_METADATA_KEY_LENGTH}, but got a property name with length {len(key)} instead.",
            f"{param}.{key}",
            "property_name_above_max_length",
            key=key,
            part="key",
        )
    return key


def clean_metadata_value(key: str, value: Any, *, param: str = "metadata") -> str:
    """Return ``value`` if it is a usable value for ``key``; raise ValidationError otherwise."""
    where = f"{param}.{key}"
    if not isinstance(value, str):
        raise ValidationError(
            f"Invalid type for '{where}': expected a string, but got {_type_name(value)} instead.",
            where,
            "invalid_type",
            key=key,
            part="value",
        )
    if len(value) > MAX_METADATA_VALUE_LENGTH:
        raise ValidationError(
            f"Invalid '{where}': string too long. Expected a string with maximum length "
            f"{MAX_METADATA_VALUE_LENGTH}, but got a string with length {len(value)} instead.",
            where,
            "string_above_max_length",
            key=key,
            part="value",
        )
    return reject_nul(value, where, key=key, part="value")


def _check_pair_count(count: int, param: str) -> None:
    if count > MAX_METADATA_PAIRS:
        raise ValidationError(
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{MAX_METADATA_PAIRS} properties, but got an object with {count} properties instead.",
            param,
            "object_above_max_properties",
        )


def clean_metadata(value: Any, *, param: str = "metadata") -> dict[str, str]:
    """Return the metadata map ``value`` (``None`` means empty) if it keeps every rule.

    Rules: an object of at most 16 pairs, keys non-empty and at most 64 characters,
    values strings of at most 512 characters. Raises ValidationError for the first
    rule broken, naming ``metadata`` or ``metadata.KEY``.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"Invalid type for '{param}': expected an object, but got {_type_name(value)} instead.",
            param,
            "invalid_type",
        )
    _check_pair_count(len(value), param)
    return {clean_metadata_key(k, param=param): clean_metadata_value(k, v, param=param) for k, v in value.items()}


def clean_update_body(body: Any) -> dict[str, str]:
    """Return the new metadata map of a ``POST /chat/completions/{id}`` body.

    ``metadata`` is required and replaces the whole map; ``null`` and ``{}`` clear it.
    Any other field is refused.
    """
    body = require_object(body)
    for name in body:
        if name != "metadata":
            raise ValidationError(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    if "metadata" not in body:
        raise ValidationError("Missing required parameter: 'metadata'.", "metadata", "missing_required_parameter")
    return clean_metadata(body["metadata"])


def parse_json(data: bytes | str) -> Any:
    """Return the JSON value of a request body; raise ValidationError if it is not JSON."""
    try:
        return json.loads(data or b"")
    except (ValueError, RecursionError):
        raise ValidationError(JSON_BODY_MESSAGE) from None


def require_object(body: Any) -> dict[str, Any]:
    """Return ``body`` if it is a JSON object; raise ValidationError otherwise."""
    if not isinstance(body, dict):
        raise ValidationError(JSON_BODY_MESSAGE)
    return body


def _clean_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    # int() would also take "1_0", " 7 " and other scripts' digits ("١٠"): a limit is ASCII digits.
    if not ASCII_INTEGER.fullmatch(raw):
        raise ValidationError(
            f"Invalid 'limit': expected an integer, but got '{raw}' instead.", "limit", "invalid_type"
        )
    limit = int(raw)
    if limit < MIN_LIMIT:
        raise ValidationError(
            f"Invalid 'limit': integer below minimum value. Expected a value greater than or equal to "
            f"{MIN_LIMIT}, but got {limit} instead.",
            "limit",
            "integer_below_min_value",
        )
    if limit > MAX_LIMIT:
        raise ValidationError(
            f"Invalid 'limit': integer above maximum value. Expected a value less than or equal to "
            f"{MAX_LIMIT}, but got {limit} instead.",
            "limit",
            "integer_above_max_value",
        )
    return limit


def _clean_order(raw: str | None) -> Order:
    if raw is None:
        return "asc"
    if raw not in ORDERS:
        raise ValidationError(
            f"Invalid value for 'order': expected one of 'asc' or 'desc', but got '{raw}' instead.",
            "order",
            "invalid_value",
        )
    return raw  # type: ignore[return-value]


def clean_cursor(raw: str | None, *, param: str = "after") -> str | None:
    """Return a page cursor (the id of the row to page on from), or None; raise ValidationError if unusable."""
    if raw is None:
        return None
    if not raw:
        raise ValidationError(f"Invalid '{param}': expected a non-empty id.", param, "invalid_value")
    return reject_nul(raw, param)


def clean_page_query(pairs: Iterable[tuple[str, str]]) -> PageQuery:
    """Return the ``after``/``limit``/``order`` of a query given as (name, value) pairs."""
    args: dict[str, str] = {}
    for name, value in pairs:
        if name in ("after", "limit", "order"):
            args.setdefault(name, value)
    return PageQuery(
        after=clean_cursor(args.get("after")),
        limit=_clean_limit(args.get("limit")),
        order=_clean_order(args.get("order")),
    )


def clean_filters(*, model: str | None = None, metadata: Iterable[tuple[str, str]] = ()) -> Filter:
    """Return the one filter value every door hands the store.

    ``model`` is exact (blank means any); ``metadata`` is (KEY, VALUE) pairs that must
    all match, by the metadata rules (at most 16; one key asked for two different values
    is refused, not silently narrowed). Raises ValidationError naming the API's field.
    """
    filters: dict[str, str] = {}
    for key, value in metadata:
        if filters.get(key, value) != value:
            raise ValidationError(
                f"Invalid 'metadata.{key}': filtered on two different values; a completion has one value per key.",
                f"metadata.{key}",
                "invalid_value",
                key=key,
                part="value",
            )
        filters[key] = value
    return Filter(model=reject_nul(model, "model") if model else None, metadata=clean_metadata(filters))


def clean_list_query(pairs: Iterable[tuple[str, str]]) -> ListQuery:
    """Return the cleaned ``GET /chat/completions`` query given as (name, value) pairs.

    ``metadata[KEY]=VALUE`` pairs and ``model`` make the filter (:func:`clean_filters`);
    paging as :func:`clean_page_query`. Unknown names are ignored, as OpenAI ignores them.
    """
    pairs = list(pairs)
    model = next((value for name, value in pairs if name == "model"), None)
    metadata = [
        (name[len("metadata[") : -1], value) for name, value in pairs if name.startswith("metadata[") and name.endswith("]")
    ]
    return ListQuery(filter=clean_filters(model=model, metadata=metadata), page=clean_page_query(pairs))


def parse_metadata_filter(text: str) -> tuple[str, str]:
    """Return the (key, value) of a ``KEY=VALUE`` filter, as typed on the command line or in the UI."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValidationError(
            f"Invalid metadata filter '{text}': write it as KEY=VALUE.", "metadata", "invalid_value"
        )
    key = clean_metadata_key(key.strip())
    return key, clean_metadata_value(key, value)


def clean_create_request(body: Any) -> CreateRequest:
    """Return what to forward upstream and what to keep of a ``POST /chat/completions`` body.

    ``model`` (a string) and ``messages`` (a non-empty array of objects) are required;
    ``metadata`` follows the metadata rules; ``store`` and ``stream`` must be booleans.
    Every other field is forwarded unchanged, so new OpenAI parameters keep working.
    """
    body = require_object(body)
    for name in ("model", "messages"):
        if name not in body:
            raise ValidationError(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if not isinstance(body["model"], str):
        raise ValidationError(
            f"Invalid type for 'model': expected a string, but got {_type_name(body['model'])} instead.",
            "model",
            "invalid_type",
        )
    if not body["model"]:
        raise ValidationError("Invalid 'model': expected a model name, but got an empty string.", "model", "invalid_value")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise ValidationError(
            f"Invalid type for 'messages': expected an array, but got {_type_name(messages)} instead.",
            "messages",
            "invalid_type",
        )
    if not messages:
        raise ValidationError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValidationError(
                f"Invalid 'messages[{index}]': expected an object with a string 'role'.",
                f"messages[{index}]",
                "invalid_type",
            )
    flags = {}
    for name in ("store", "stream"):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise ValidationError(
                f"Invalid type for '{name}': expected a boolean, but got {_type_name(value)} instead.",
                name,
                "invalid_type",
            )
        flags[name] = bool(value)
    metadata = clean_metadata(body.get("metadata"))
    forward = {k: v for k, v in body.items() if k not in ("store", "metadata")}
    return CreateRequest(forward=forward, store=flags["store"], stream=flags["stream"], metadata=metadata)


# The fields without which a completion cannot be stored (or listed, or exported).
COMPLETION_FIELDS: tuple[tuple[str, type], ...] = (("id", str), ("created", int), ("model", str))
IMPORT_FIELDS = COMPLETION_FIELDS + (("choices", list), ("messages", list))


def completion_id_fault(value: Any) -> str | None:
    """Return why ``value`` cannot be a stored completion's id, or None when it can.

    An id is 1 to 255 characters with no ``/`` (it would read as another path of the
    API, such as ``{id}/messages``), no whitespace and no control characters (every id
    any known model server makes fits).
    """
    if not isinstance(value, str):
        return f"expected a string, but got {_type_name(value)} instead"
    if not value or len(value) > MAX_ID_LENGTH:
        return f"expected 1 to {MAX_ID_LENGTH} characters, but got {len(value)}"
    for char in value:
        if char == "/":
            return "an id must not contain '/'"
        if char.isspace():
            return "an id must not contain whitespace"
        if unicodedata.category(char) == "Cc":
            return f"an id must not contain control characters (U+{ord(char):04X})"
    return None


def clean_completion_id(value: Any, *, param: str = "id") -> str:
    """Return ``value`` if it can be a stored completion's id (:func:`completion_id_fault`);
    raise ValidationError naming ``param`` otherwise."""
    fault = completion_id_fault(value)
    if fault is not None:
        raise ValidationError(f"Invalid '{param}': {fault}.", param, "invalid_value")
    return value


def clean_completion(record: Any, *, required: tuple[tuple[str, type], ...] = COMPLETION_FIELDS) -> dict[str, Any]:
    """Return ``record`` if it is a chat completion the store can keep.

    It must be an object with the ``required`` fields of their types (by default a string
    ``id``, an integer ``created`` and a string ``model`` without NUL). Whether the id
    may be stored as it is is the caller's question: import refuses an unfit id
    (:func:`clean_import_record`), a create mints a fresh one.
    Raises ValidationError naming the first field at fault.
    """
    record = require_object(record)
    for name, kind in required:
        if name not in record:
            raise ValidationError(f"Missing required field: '{name}'.", name, "missing_required_parameter")
        value = record[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValidationError(
                f"Invalid type for '{name}': expected {_type_name(kind())}, but got {_type_name(value)} instead.",
                name,
                "invalid_type",
            )
    reject_nul(record["model"], "model")
    return record


def clean_import_record(record: Any) -> dict[str, Any]:
    """Return a completion object of the export format (``store``), ready for the store.

    Requires what :func:`clean_completion` does plus ``choices`` (array) and ``messages``
    (array of objects), an id by :func:`clean_completion_id`, and ``metadata`` by the
    metadata rules.
    """
    record = clean_completion(record, required=IMPORT_FIELDS)
    clean_completion_id(record["id"])
    if not all(isinstance(m, dict) for m in record["messages"]):
        raise ValidationError("Invalid 'messages': every message must be an object.", "messages", "invalid_type")
    cleaned = dict(record)
    cleaned["metadata"] = clean_metadata(record.get("metadata"))
    return cleaned


def clean_api_key_name(name: Any) -> str:
    """Return an API key's name: 1 to 100 characters, without surrounding spaces."""
    if not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > MAX_API_KEY_NAME_LENGTH:
        raise ValidationError(
            f"Invalid 'name': expected 1 to {MAX_API_KEY_NAME_LENGTH} characters, not starting or ending with a space.",
            "name",
            "invalid_value",
        )
    return reject_nul(name, "name")
