"""The OpenAI shapes of what the store holds: completion objects, message items, ETags.

Free functions over rows, so that any door (and any export) can serialise without a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models import Completion

# The request fields OpenAI echoes on a stored completion, by their name in the create request.
ECHOED_REQUEST_FIELDS = {
    "seed": "seed",
    "temperature": "temperature",
    "top_p": "top_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "response_format": "response_format",
    "user": "input_user",
    "service_tier": "service_tier",
}


def completion_object(row: Completion) -> dict[str, Any]:
    """Return the OpenAI completion object of a live row, ``metadata`` always an object."""
    obj = dict(row.body or {})
    obj["object"] = "chat.completion"
    obj["metadata"] = dict(row.metadata_map or {})
    return obj


def message_objects(row: Completion) -> list[dict[str, Any]]:
    """Return the input messages of a row as OpenAI message-list items (ids ``{id}-{index}``)."""
    items = []
    for index, message in enumerate(row.messages or []):
        content = message.get("content")
        item = {key: value for key, value in message.items() if key != "content"}
        item["id"] = f"{row.id}-{index}"
        if isinstance(content, list):
            item["content"] = "".join(
                part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
            )
            item["content_parts"] = content
        else:
            item["content"] = content
            item["content_parts"] = None
        item.setdefault("name", None)
        item.setdefault("refusal", None)
        items.append(item)
    return items


def input_message(item: Mapping[str, Any]) -> dict[str, Any]:
    """Return the input message a message-list item (as :func:`message_objects` makes them) was made from.

    ``content_parts``, when present, is the original content; ``id`` goes, and so do the
    ``name`` and ``refusal`` the list adds as nulls, so the message lists the same again.
    """
    message = {key: value for key, value in item.items() if key not in ("id", "content", "content_parts")}
    parts = item.get("content_parts")
    message["content"] = parts if parts is not None else item.get("content")
    for key in ("name", "refusal"):
        if message.get(key, 0) is None:
            del message[key]
    return message


def build_completion_body(request: Mapping[str, Any], response: Mapping[str, Any], request_id: str | None) -> dict[str, Any]:
    """Return the body to store for a create: the upstream answer plus the request fields OpenAI echoes."""
    body = {key: value for key, value in response.items() if key != "metadata"}
    body["request_id"] = request_id
    for source, target in ECHOED_REQUEST_FIELDS.items():
        if target == "service_tier" and "service_tier" in response:
            continue
        body[target] = request.get(source)
    # Not echoed by OpenAI, but a fine-tuning example needs it (formats.chat_record): kept only when the request set it.
    if isinstance(request.get("parallel_tool_calls"), bool):
        body["parallel_tool_calls"] = request["parallel_tool_calls"]
    return body


def version_etag(version: int | str) -> str:
    """Return the strong ETag of a completion's ``version`` (as a form or ``If-Match`` carries it)."""
    return f'"{version}"'


def etag(row: Completion) -> str:
    """Return the strong ETag of a row's current version."""
    return version_etag(row.version)
