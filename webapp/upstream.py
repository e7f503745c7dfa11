"""The client for the upstream model server: forwarding creates, passing streams through,
and assembling a stream's chunks into the completion a non-streaming call returns.

One pool of keep-alive connections per app and process (``webapp.httppool``, on the
standard library's ``http.client``), made on first use and shared by every thread, so a
create costs no TCP or TLS set-up once the pool is warm. No cookie jar, redirects or auth
layers: a proxy for many clients must not carry one client's upstream cookies into
another's request. Every upstream failure becomes an :class:`~webapp.errors.APIError`
in the OpenAI envelope: the upstream's own status and error for an error answer (a 401 or
403, which refuses the store's own ``UPSTREAM_API_KEY``, becomes a 502 that says so), 502
when it cannot be reached or answers nonsense, 504 when it does not answer in time. No
error a client sees carries ``UPSTREAM_API_KEY``: an upstream that echoes it gets it
redacted (:class:`Redactor`), and the server's log says what the upstream answered.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Flask

from . import metrics
from .httppool import ENCODINGS, Headers, Pool, Response, UpstreamTimeout, UpstreamUnreachable
from .errors import REQUEST_ID_HEADER, APIError
from .validation import ValidationError, clean_completion

log = logging.getLogger(__name__)

EXTENSION_KEY = "completion_store.upstream"
# Answer headers worth passing on to the client: the OpenAI SDK reads them to pace its retries.
PASSED_HEADERS = frozenset({"retry-after", "retry-after-ms", "x-should-retry"})
PASSED_HEADER_PREFIX = "x-ratelimit-"
# An SSE event ends with a blank line. OpenAI and the servers that copy it end lines with
# "\n"; "\r\n" and "\r" are allowed by the SSE specification too.
EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# Merging deltas concatenates strings, except for these, which name rather than grow.
REPLACED_KEYS = frozenset({"id", "type", "role", "index", "object"})
# Stream-only fields that have no place in the completion (``obfuscation`` pads chunk sizes).
STREAM_ONLY_KEYS = frozenset({"object", "choices", "usage", "obfuscation"})

# The upstream answers these when it refuses the store's own UPSTREAM_API_KEY.
KEY_REFUSED = frozenset({401, 403})

_create_lock = threading.Lock()


@dataclass(frozen=True)
class Answer:
    """A successful non-streaming answer: the completion (parsed and as sent), the
    upstream's request id and the headers to pass on."""

    completion: dict[str, Any]
    raw: bytes
    request_id: str | None
    headers: dict[str, str]


DataKind = Literal["chunk", "error", "invalid"]


class Upstream:
    """The upstream model server at ``base_url``, reached through one pooled client."""

    def __init__(self, *, base_url: str, api_key: str | None, timeout: float, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.base_url = base_url.rstrip("/")
        self.redactor = Redactor(api_key)
        # An answer is held in memory to be stored: a runaway upstream must not take the worker down.
        self.max_bytes = max_bytes
        # The same timeout for connecting, each read and each write: a stream is cut only
        # when the upstream stays silent that long, as with the OpenAI SDK's own timeout.
        self.pool = Pool(f"{self.base_url}/chat/completions", timeout=timeout)
        headers = {"Content-Type": "application/json", "User-Agent": "completion-store", "Accept-Encoding": ENCODINGS}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.headers = {
            "application/json": {**headers, "Accept": "application/json"},
            "text/event-stream": {**headers, "Accept": "text/event-stream"},
        }

    def create(self, body: Mapping[str, Any]) -> Answer:
        """Forward a non-streaming create; return the upstream's completion.

        Raises APIError: the upstream's status and error for an error answer, 502 when it
        cannot be reached or its answer is not a chat completion, 504 on a timeout.
        """
        with _transport_errors(self.base_url):
            response = self._send(body, accept="application/json")
            try:
                content = read_capped(response, self.max_bytes)
            finally:
                response.close()
        if not response.is_success:
            raise error_from_answer(response, content, redactor=self.redactor)
        return Answer(
            completion=require_completion(_json_or_none(content)),
            raw=content,
            request_id=response.headers.get(REQUEST_ID_HEADER),
            headers=passed_headers(response.headers),
        )

    def stream(self, body: Mapping[str, Any]) -> EventStream:
        """Forward a streaming create and return the open event stream once the upstream's
        status is known to be a success, so a failure before the first byte is a plain
        error answer. Raises APIError as :meth:`create` does.
        """
        with _transport_errors(self.base_url):
            response = self._send(body, accept="text/event-stream")
        if not response.is_success:
            try:
                with _transport_errors(self.base_url):
                    content = read_capped(response, self.max_bytes)
            finally:
                response.close()
            raise error_from_answer(response, content, redactor=self.redactor)
        return EventStream(response, base_url=self.base_url, max_bytes=self.max_bytes, redactor=self.redactor)

    def close(self) -> None:
        """Close the pooled connections."""
        self.pool.close()

    def _send(self, body: Mapping[str, Any], *, accept: str) -> Response:
        """POST ``body`` as JSON, asking for ``accept``; return the response with its body still
        to read (close it). Timed and counted for ``/metrics``. Raises the pool's errors."""
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        started = time.perf_counter()
        response = self.pool.post(content, self.headers[accept])
        metrics.upstream_answered(time.perf_counter() - started, stream=accept == "text/event-stream", status=response.status_code)
        return response


class EventStream:
    """An open streaming answer from the upstream: iterate it for its events as they
    arrive; :meth:`close` ends the upstream request (also when it is not finished)."""

    def __init__(self, response: Response, *, base_url: str, max_bytes: int, redactor: Redactor) -> None:
        self.response = response
        self.base_url = base_url
        self.max_bytes = max_bytes
        self.redactor = redactor
        self.request_id: str | None = response.headers.get(REQUEST_ID_HEADER)
        self.headers = passed_headers(response.headers)

    def __iter__(self) -> Iterator[bytes]:
        """Yield each raw event (see :func:`split_events`) as soon as its blank line has arrived,
        byte for byte unless it echoes ``UPSTREAM_API_KEY`` (then masked: :meth:`Redactor.event`).

        Raises APIError (502, 504) when the connection fails or times out mid-stream.
        """
        redact = self.redactor.event
        with _transport_errors(self.base_url):
            for event in split_events(_capped(self.response.iter_bytes(), self.max_bytes)):
                yield redact(event)

    def close(self) -> None:
        """Close the upstream response, and with it the upstream request if still running."""
        self.response.close()


def upstream_for(app: Flask) -> Upstream:
    """Return the app's upstream client, creating it on first use (once per process)."""
    upstream = app.extensions.get(EXTENSION_KEY)
    if upstream is None:
        with _create_lock:
            upstream = app.extensions.get(EXTENSION_KEY)
            if upstream is None:
                upstream = Upstream(
                    base_url=app.config["UPSTREAM_BASE_URL"],
                    api_key=app.config.get("UPSTREAM_API_KEY"),
                    timeout=float(app.config["UPSTREAM_TIMEOUT"]),
                    max_bytes=int(app.config["UPSTREAM_MAX_BYTES"]),
                )
                app.extensions[EXTENSION_KEY] = upstream
    return upstream


@contextmanager
def _transport_errors(base_url: str) -> Iterator[None]:
    """Turn the connection pool's failures into the API's 504 (timeout) and 502 (unreachable)."""
    try:
        yield
    except UpstreamTimeout as exc:
        metrics.upstream_failed("timeout")
        log.warning("upstream %s timed out: %s", base_url, exc)
        raise APIError(
            504, "The upstream model server did not answer in time. Try again later.", type="server_error"
        ) from exc
    except UpstreamUnreachable as exc:
        metrics.upstream_failed("unreachable")
        log.warning("upstream %s unreachable: %r", base_url, exc)
        raise APIError(
            502, "The upstream model server could not be reached. Try again later.", type="server_error"
        ) from exc


# --- Answers ----------------------------------------------------------------------------


def _capped(pieces: Iterable[bytes], max_bytes: int) -> Iterator[bytes]:
    """Yield ``pieces`` until they add up to more than ``max_bytes``; then raise APIError 502."""
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > max_bytes:
            raise APIError(
                502,
                f"The upstream model server's answer is larger than UPSTREAM_MAX_BYTES ({max_bytes} bytes). "
                "Nothing was stored; raise the limit if such answers are expected.",
                type="server_error",
            )
        yield piece


def read_capped(response: Response, max_bytes: int) -> bytes:
    """Return the body of an open streamed ``response``, refusing (APIError 502) one over ``max_bytes``."""
    return b"".join(_capped(response.iter_bytes(), max_bytes))


def passed_headers(headers: Headers) -> dict[str, str]:
    """Return the upstream answer headers to pass on to the client (retry and rate-limit hints)."""
    return {
        name: value
        for name, value in headers.items()
        if name in PASSED_HEADERS or name.startswith(PASSED_HEADER_PREFIX)
    }


def error_from_answer(response: Response, content: bytes, *, redactor: Redactor) -> APIError:
    """Return the APIError that relays an upstream error answer: the upstream's status (502
    for a non-error status that is no success either) and its error in the envelope, or its
    body wrapped in one when it did not answer in OpenAI's shape.

    A 401 or 403 refuses the store's own ``UPSTREAM_API_KEY``, not the client's key: that
    is a 502 saying so (the client can do nothing about it, so the SDK is told not to
    retry), and the upstream's answer goes to the server's log for the operator. Whatever
    the status, ``UPSTREAM_API_KEY`` never reaches the client: an echo of it is redacted.
    """
    text = content.decode("utf-8", "replace").strip()
    redacted_text = redactor.text(text)
    if response.status_code not in KEY_REFUSED and redacted_text != text:
        log.warning(
            "the upstream's %s answer held UPSTREAM_API_KEY; the client got it redacted. The answer (key masked): %s",
            response.status_code,
            redacted_text,
        )
    if response.status_code in KEY_REFUSED:
        log.error(
            "the upstream %s refused UPSTREAM_API_KEY with %s %s: set a key it accepts. Its answer (key masked): %s",
            response.url,
            response.status_code,
            response.reason_phrase,
            redacted_text,
        )
        return APIError(
            502,
            f"The upstream model server refused this server's own key (UPSTREAM_API_KEY) with "
            f"{response.status_code} {response.reason_phrase}. Your API key for this store is fine: "
            "the store's operator must set an upstream key that the model server accepts.",
            type="server_error",
            headers={"x-should-retry": "false"},
        )
    status = response.status_code if response.status_code >= 400 else 502
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    headers = {name: redactor.text(value) for name, value in passed_headers(response.headers).items()}
    body = redactor.value(_json_or_none(content))
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and error:
        error = {"message": error}
    if isinstance(error, dict) and error.get("message"):
        return APIError(
            status,
            str(error["message"]),
            type=str(error.get("type") or default_type),
            param=_optional_str(error.get("param")),
            code=_optional_str(error.get("code")),
            headers=headers,
        )
    message = f"The upstream model server answered {response.status_code} {response.reason_phrase}".rstrip()
    message += f": {redacted_text[:1000]}" if redacted_text else "."
    return APIError(status, message, type=default_type, headers=headers)


class Redactor:
    """Takes the store's ``UPSTREAM_API_KEY`` out of whatever an upstream sends back, so
    that an upstream echoing its request headers cannot hand the key to a client."""

    MASK = "[redacted: UPSTREAM_API_KEY]"

    def __init__(self, secret: str | None) -> None:
        self.secret = secret or None
        # The key as it may appear in JSON text: as is, with "/" escaped, or all non-ASCII escaped.
        forms = {secret, secret.replace("/", "\\/"), json.dumps(secret)[1:-1]} if secret else set()
        self.forms = sorted(forms, key=len, reverse=True)
        self.byte_forms = [(form.encode("utf-8"), self.MASK.encode()) for form in self.forms]

    def text(self, text: str) -> str:
        """Return ``text`` with every occurrence of the key masked."""
        for form in self.forms:
            text = text.replace(form, self.MASK)
        return text

    def event(self, raw: bytes) -> bytes:
        """Return an SSE event with the key masked: its bytes unchanged when it holds no key,
        its data re-encoded when the key hides behind JSON escapes (``\\u0073k-...``)."""
        for form, mask in self.byte_forms:
            raw = raw.replace(form, mask)
        if self.secret is None or b"\\u" not in raw:
            return raw
        data = event_data(raw)
        parsed = _json_or_none(data) if data is not None else None
        redacted = self.value(parsed)
        if redacted == parsed:
            return raw
        return b"data: " + json.dumps(redacted, ensure_ascii=False).encode("utf-8") + b"\n\n"

    def value(self, value: Any) -> Any:
        """Return a parsed JSON ``value`` with the key masked in every string (keys included)."""
        if self.secret is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.text(key): self.value(item) for key, item in value.items()}
        return value


def _json_or_none(content: bytes | str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def require_completion(completion: Any) -> dict[str, Any]:
    """Return ``completion`` if it is a chat completion the store can keep
    (``validation.clean_completion``); raise APIError 502 otherwise.
    """
    try:
        return clean_completion(completion)
    except ValidationError as exc:
        raise APIError(
            502,
            f"The upstream model server answered with something that is not a chat completion we can keep: {exc.message}",
            type="server_error",
        ) from None


# --- Server-sent events -----------------------------------------------------------------


def split_events(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Yield each SSE event of a byte stream, blank line included, byte for byte, as soon
    as it is complete, however the stream was cut into pieces. An unfinished event at the
    end is dropped, as the SSE specification says.
    """
    buffer = b""
    for piece in pieces:
        # Only the tail can hold a terminator that the new piece completes.
        scan_from = max(0, len(buffer) - 3)
        buffer += piece
        start = 0
        while True:
            end = EVENT_END.search(buffer, max(start, scan_from))
            if end is None:
                break
            yield buffer[start : end.end()]
            start = end.end()
        buffer = buffer[start:]


def event_data(raw: bytes) -> str | None:
    """Return the data of an SSE event (its ``data:`` lines joined), or None when it has none."""
    lines = [line[5:].removeprefix(b" ") for line in raw.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines).decode("utf-8", "replace") if lines else None


def is_done(data: str) -> bool:
    """Return whether an event's data is the ``[DONE]`` that ends a successful stream."""
    return data.startswith("[DONE]")


def parse_data(data: str) -> tuple[DataKind, dict[str, Any] | None]:
    """Return what an event's data carries: a ``chunk``, an ``error`` (both with the parsed
    object), or ``invalid`` data that is not a JSON object."""
    parsed = _json_or_none(data)
    if not isinstance(parsed, dict):
        return "invalid", None
    return ("error" if parsed.get("error") else "chunk"), parsed


def with_id(raw: bytes, obj: Mapping[str, Any], new_id: str) -> bytes | None:
    """Return ``raw`` (the JSON text of ``obj``, or an SSE event carrying it) with the top-level
    ``"id"`` of ``obj`` set to ``new_id`` and every other byte as it was; ``raw`` itself when
    the id is already ``new_id`` or ``obj`` has none; None when the id's text is not found
    exactly once (the caller then re-encodes ``obj``).
    """
    old = obj.get("id")
    if old == new_id or "id" not in obj:
        return raw
    if not isinstance(old, str):
        return None
    for pattern in _id_patterns(old):
        matches = list(pattern.finditer(raw))
        if len(matches) == 1:
            match = matches[0]
            replacement = json.dumps(new_id, ensure_ascii=False).encode("utf-8")
            return raw[: match.start()] + match.group(1) + replacement + raw[match.end() :]
    return None


@functools.lru_cache(maxsize=256)
def _id_patterns(old_id: str) -> tuple[re.Pattern[bytes], ...]:
    """The patterns of ``"id": "<old_id>"`` as an upstream may write it (one id per stream: cached)."""
    texts = dict.fromkeys((json.dumps(old_id, ensure_ascii=False), json.dumps(old_id)))
    return tuple(re.compile(rb'("id"\s*:\s*)' + re.escape(text.encode("utf-8"))) for text in texts)


def event_with_id(raw: bytes, chunk: Mapping[str, Any], new_id: str) -> bytes:
    """Return the SSE event ``raw`` carrying ``chunk`` with the chunk's id set to ``new_id``:
    byte for byte otherwise, or the chunk re-encoded if its id cannot be found in the bytes."""
    rewritten = with_id(raw, chunk, new_id)
    if rewritten is not None:
        return rewritten
    return b"data: " + json.dumps({**chunk, "id": new_id}, ensure_ascii=False).encode("utf-8") + b"\n\n"


# --- Stream assembly --------------------------------------------------------------------


@dataclass
class StreamAssembler:
    """Merge ``chat.completion.chunk`` objects into the ``chat.completion`` that the same
    answer would have been without streaming.

    Per choice (any number, by ``index``): content and refusal concatenated, tool-call
    deltas merged by their index (id and type set, function name and arguments
    concatenated), logprobs' content and refusal lists concatenated, the last
    finish_reason. Top level: id, created, model, service_tier, system_fingerprint (and
    any other field) from the chunks, and usage when a chunk carried it (the final one,
    with no choices, when ``stream_options.include_usage`` was asked).
    """

    top: dict[str, Any] = field(default_factory=dict)
    choices: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, Any] | None = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Merge one chunk."""
        for key, value in chunk.items():
            if key not in STREAM_ONLY_KEYS and (value is not None or key not in self.top):
                self.top[key] = value
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, delta_choice: Mapping[str, Any]) -> None:
        index = delta_choice.get("index", 0)
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = {
                "index": index,
                "message": {"role": "assistant", "content": None, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": None,
            }
        for key, value in delta_choice.items():
            if key == "delta":
                merge_delta(choice["message"], value or {})
            elif key == "logprobs":
                if value is not None:
                    choice["logprobs"] = merge_delta(choice["logprobs"] or {"content": None, "refusal": None}, value)
            elif key != "index" and value is not None:
                choice[key] = value

    def completion(self) -> dict[str, Any]:
        """Return the assembled completion. Raises APIError 502 when the chunks did not
        name a completion (no id, created or model)."""
        completion: dict[str, Any] = {
            "id": self.top.get("id"),
            "object": "chat.completion",
            "created": self.top.get("created"),
            "model": self.top.get("model"),
            "choices": [_finished_choice(joined(self.choices[index])) for index in sorted(self.choices)],
        }
        if self.usage is not None:
            completion["usage"] = self.usage
        for key, value in self.top.items():
            completion.setdefault(key, value)
        return require_completion(completion)


class _Text(list[str]):
    """The pieces of a string as they stream in, joined once at the end: concatenating
    each piece as it comes would copy the whole text again for every token."""


def merge_delta(target: dict[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``delta`` into ``target`` and return ``target``: strings concatenate (names
    such as ``id``, ``type`` and ``role`` are replaced), objects merge, lists of objects
    with an ``index`` merge item by item, other lists extend, nulls change nothing.
    Concatenated strings are kept in pieces until :func:`joined` puts them together.
    """
    for key, value in delta.items():
        if value is None:
            target.setdefault(key, None)
            continue
        current = target.get(key)
        if isinstance(value, str) and key not in REPLACED_KEYS:
            if isinstance(current, _Text):
                current.append(value)
            else:
                target[key] = _Text([current, value] if isinstance(current, str) else [value])
        elif isinstance(value, Mapping):
            target[key] = merge_delta(current if isinstance(current, dict) else {}, value)
        elif isinstance(value, list):
            target[key] = _merge_list(current if type(current) is list else [], value)
        else:
            target[key] = value
    return target


def _merge_list(target: list[Any], items: list[Any]) -> list[Any]:
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get("index"), int):
            existing = next((t for t in target if isinstance(t, dict) and t.get("index") == item["index"]), None)
            if existing is not None:
                merge_delta(existing, item)
                continue
            target.append(merge_delta({}, item))
        else:
            target.append(item)
    return target


def joined(value: Any) -> Any:
    """Return ``value`` with every string kept in pieces by :func:`merge_delta` joined."""
    if isinstance(value, _Text):
        return "".join(value)
    if isinstance(value, dict):
        return {key: joined(item) for key, item in value.items()}
    if isinstance(value, list):
        return [joined(item) for item in value]
    return value


def _finished_choice(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice["message"]
    if message.get("tool_calls"):
        # The index only orders the deltas; a finished tool call has none.
        message["tool_calls"] = [
            {key: value for key, value in call.items() if key != "index"}
            for call in sorted(message["tool_calls"], key=lambda call: call.get("index", 0))
        ]
    return choice
