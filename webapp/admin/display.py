"""How stored values read on a page: times, message text, JSON. Pure functions, used as template filters.

Everything here returns plain text; Jinja's autoescaping makes it safe to show, so a
message or metadata value holding HTML is shown as the characters it is.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint

from ..store import search
from .markdown import render_markdown

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
INLINE_IMAGE_TYPES = ("data:image/png;", "data:image/jpeg;", "data:image/gif;", "data:image/webp;")


def _utc(value: int | float | datetime) -> datetime:
    if isinstance(value, datetime):
        # SQLite hands back naive datetimes that were stored as UTC.
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(value, tz=timezone.utc)


def when(value: int | float | datetime | None, now: datetime | None = None) -> str:
    """Return a time as people read it: "5 min ago" within a day, else "14 Nov 2023, 22:13 UTC"."""
    if value is None:
        return "never"
    moment = _utc(value)
    seconds = ((now or datetime.now(timezone.utc)) - moment).total_seconds()
    if 0 <= seconds < 60:
        return "just now"
    if 0 <= seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if 0 <= seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


def exact_time(value: int | float | datetime | None) -> str:
    """Return the exact UTC time, for a tooltip and the ``datetime`` attribute."""
    if value is None:
        return ""
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def content_text(content: Any) -> str:
    """Return the text of a message's content: a string, or the text parts of a parts array."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
            elif isinstance(part, dict) and part.get("type"):
                texts.append(f"[{part['type']}]")
        return " ".join(texts)
    return json.dumps(content, ensure_ascii=False)


def first_user_text(messages: list[Any] | None) -> str:
    """Return the text of the first user message (the question a completion answers)."""
    for message in messages or []:
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def reply_text(body: dict[str, Any] | None) -> str:
    """Return the first reply's text, its refusal, or the tools it calls."""
    choices = (body or {}).get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message") or {}
    if message.get("content"):
        return content_text(message["content"])
    if message.get("refusal"):
        return f"Refused: {message['refusal']}"
    calls = [call.get("function", {}).get("name", "?") for call in message.get("tool_calls") or [] if isinstance(call, dict)]
    return f"Calls {', '.join(calls)}" if calls else ""


def shorten(text: str, length: int = 120) -> str:
    """Return ``text`` on one line, cut at ``length`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


def pretty_json(value: Any) -> str:
    """Return ``value`` as indented JSON; a string holding JSON is parsed first, any other string returned as is."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
        if isinstance(value, str):
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def role_class(role: Any) -> str:
    """Return the CSS class for a message role (only known roles: the class name never comes from data)."""
    return f"role-{role}" if role in ROLES else "role-other"


def actor_label(actor: str) -> str:
    """Return who made a recorded change, readably: "user ann", "API key ci", "import"."""
    kind, _, name = actor.partition(":")
    return {"user": f"user {name}", "key": f"API key {name}"}.get(kind, actor) if name else actor


def is_inline_image(url: Any) -> bool:
    """Return whether an image URL is embedded data the page may show as an image (no request leaves)."""
    return isinstance(url, str) and url.startswith(INLINE_IMAGE_TYPES)


def is_web_url(url: Any) -> bool:
    """Return whether ``url`` may be a link: http(s) only, never ``javascript:`` or ``data:``."""
    return isinstance(url, str) and url.lower().startswith(("https://", "http://"))


def metadata_diff(before: dict[str, str] | None, after: dict[str, str] | None) -> list[tuple[str, str, str | None, str | None]]:
    """Return what a change did, key by key: ("added" | "removed" | "changed", key, old value, new value)."""
    before, after = before or {}, after or {}
    diff: list[tuple[str, str, str | None, str | None]] = []
    for key, value in after.items():
        if key not in before:
            diff.append(("added", key, None, value))
        elif before[key] != value:
            diff.append(("changed", key, before[key], value))
    diff.extend(("removed", key, value, None) for key, value in before.items() if key not in after)
    return diff


def search_excerpt(row: Any, terms: tuple[str, ...]) -> search.Excerpt | None:
    """Return the excerpt of a completion row around the first match of ``terms`` (None if none occurs)."""
    return search.excerpt(search.text_pieces(body=row.body, messages=row.messages), terms)


def describe_filter(selection: Any) -> str:
    """Return a cleaned filter in words ("model gpt-4o, team=red"), whatever fields it has; "no filter" when empty."""
    parts: list[str] = []
    for item in fields(selection):
        value = getattr(selection, item.name)
        if value is None or value == "" or value == () or value == [] or value == {}:
            continue
        if isinstance(value, dict):
            parts.extend(f"{key}={text}" for key, text in value.items())
        elif item.name.startswith("created_") and isinstance(value, int):
            parts.append(f"{item.name.replace('_', ' ')} {exact_time(value)}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{item.name} '{' '.join(map(str, value))}'")
        else:
            parts.append(f"{item.name} {value}")
    return ", ".join(parts) if parts else "no filter (every stored completion)"


# Past this many lines or characters a transcript message folds (about a screenful).
FOLD_LINES = 30
FOLD_CHARACTERS = 2500


def is_long_text(text: Any) -> bool:
    """Return whether message text runs past a screenful (and so folds in a transcript)."""
    return isinstance(text, str) and (len(text) > FOLD_CHARACTERS or text.count("\n") >= FOLD_LINES)


def line_count(text: str) -> int:
    """Return how many lines a text has."""
    return text.count("\n") + 1


def tool_names(messages: Any) -> dict[str, str]:
    """Return, for each tool call the messages make, its id and the function it calls (so a result can name it)."""
    names: dict[str, str] = {}
    for message in messages if isinstance(messages, list) else []:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(call.get("id"), str) and isinstance(function, dict) and isinstance(function.get("name"), str):
                names[call["id"]] = function["name"]
    return names


def register(bp: Blueprint) -> None:
    """Make every function above a template filter or test of the app."""
    for name, function in {
        "when": when,
        "exact_time": exact_time,
        "content_text": content_text,
        "first_user_text": first_user_text,
        "reply_text": reply_text,
        "shorten": shorten,
        "pretty_json": pretty_json,
        "role_class": role_class,
        "actor_label": actor_label,
        "metadata_diff": metadata_diff,
        "search_excerpt": search_excerpt,


        "describe_filter": describe_filter,
        "line_count": line_count,
        "tool_names": tool_names,
        "markdown": render_markdown,
    }.items():
        bp.add_app_template_filter(function, name)
    bp.add_app_template_test(is_inline_image, "inline_image")
    bp.add_app_template_test(is_web_url, "web_url")
    bp.add_app_template_test(is_long_text, "long_text")
