"""The JSONL export formats, shared by the ``export`` command and the admin download.

- ``store``: one object per line, exactly what ``GET /v1/chat/completions/{id}`` returns plus
  ``"messages"``, the input messages of the create request; it round-trips through import.
- ``chat``: OpenAI's chat fine-tuning format: ``{"messages": [...input messages, the reply],
  "tools": [...], "parallel_tool_calls": ...}``, ``tools`` when the conversation was given
  tools and ``parallel_tool_calls`` when the request set it; the reply keeps its tool calls
  and its refusal (https://platform.openai.com/docs/guides/supervised-fine-tuning).

``skip_truncated`` leaves out completions whose reply was cut off by the token limit
(``finish_reason: "length"``): a fine-tuning file should not teach a model to stop mid-sentence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

from sqlalchemy.orm import Session

from . import store
from .models import Completion
from .validation import Filter

Format = Literal["store", "chat"]
FORMATS: tuple[Format, ...] = ("store", "chat")


def store_record(row: Completion) -> dict[str, Any]:
    """Return the ``store`` export line of a row: the API object plus its input messages."""
    return {**store.completion_object(row), "messages": list(row.messages or [])}


# The fields of a reply that a fine-tuning example's assistant message carries.
ASSISTANT_FIELDS = ("content", "refusal", "tool_calls", "function_call", "audio")


def _first_choice(row: Completion) -> dict[str, Any]:
    choices = (row.body or {}).get("choices") or []
    return choices[0] if choices and isinstance(choices[0], dict) else {}


def is_truncated(row: Completion) -> bool:
    """Return whether the row's reply was cut off by the token limit (``finish_reason: "length"``)."""
    return _first_choice(row).get("finish_reason") == "length"


def chat_record(row: Completion) -> dict[str, Any]:
    """Return the fine-tuning line of a row: its input messages and the assistant's reply (content,
    refusal, tool calls), with the ``tools`` it was given and ``parallel_tool_calls`` when set."""
    messages = list(row.messages or [])
    choice = _first_choice(row)
    if choice:
        reply = choice.get("message") or {}
        assistant: dict[str, Any] = {"role": "assistant"}
        for name in ASSISTANT_FIELDS:
            # A reply that only calls tools or only refuses has no content: leave the key out, as OpenAI's examples do.
            if reply.get(name) is not None:
                assistant[name] = reply[name]
        if "content" not in assistant and len(assistant) == 1:
            assistant["content"] = ""
        messages.append(assistant)
    record: dict[str, Any] = {"messages": messages}
    body = row.body or {}
    if body.get("tools"):
        record["tools"] = body["tools"]
    if isinstance(body.get("parallel_tool_calls"), bool):
        record["parallel_tool_calls"] = body["parallel_tool_calls"]
    return record


RECORDS: dict[Format, Callable[[Completion], dict[str, Any]]] = {"store": store_record, "chat": chat_record}


def export_lines(session: Session, *, filter: Filter, fmt: Format, skip_truncated: bool = False) -> Iterator[str]:
    """Yield the JSONL lines of an export, one completion at a time (bounded memory, whatever the size).

    ``skip_truncated`` leaves out completions whose reply stopped at the token limit.
    """
    to_record = RECORDS[fmt]
    for row in store.iter_completions(session, filter=filter):
        if skip_truncated and is_truncated(row):
            continue
        yield json.dumps(to_record(row), ensure_ascii=False, separators=(",", ":")) + "\n"
