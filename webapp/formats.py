"""The JSONL export formats, shared by the ``export`` command and the admin download.

- ``store``: one object per line, exactly what ``GET /v1/chat/completions/{id}`` returns plus
  ``"messages"``, the input messages of the create request; it round-trips through import.
- ``chat``: OpenAI's fine-tuning format, ``{"messages": [...input messages, the reply]}``.
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


def chat_record(row: Completion) -> dict[str, Any]:
    """Return the fine-tuning line of a row: its input messages and the assistant's reply."""
    messages = list(row.messages or [])
    choices = (row.body or {}).get("choices") or []
    if choices:
        reply = choices[0].get("message") or {}
        assistant: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
        if reply.get("tool_calls"):
            assistant["tool_calls"] = reply["tool_calls"]
        messages.append(assistant)
    return {"messages": messages}


RECORDS: dict[Format, Callable[[Completion], dict[str, Any]]] = {"store": store_record, "chat": chat_record}


def export_lines(session: Session, *, filter: Filter, fmt: Format) -> Iterator[str]:
    """Yield the JSONL lines of an export, one completion at a time (bounded memory, whatever the size)."""
    to_record = RECORDS[fmt]
    for row in store.iter_completions(session, filter=filter):
        yield json.dumps(to_record(row), ensure_ascii=False, separators=(",", ":")) + "\n"
