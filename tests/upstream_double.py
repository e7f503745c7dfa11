"""A stand-in for the upstream model server: a real HTTP server on a free port, in a thread.

Each test scripts what it answers (:class:`Scripted`, :class:`Failure`, :class:`Hang`);
a scripted completion is served as one JSON answer or as an SSE stream, whichever the
request asks for, so a test can compare what the store keeps from both. The double
records every request it receives, and how each stream ended.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED = 1_700_000_100
MODEL = "gpt-double"


@dataclass(frozen=True)
class ToolCall:
    """A function call whose arguments stream in ``arguments`` pieces."""

    id: str
    name: str
    arguments: tuple[str, ...]


@dataclass(frozen=True)
class Choice:
    """One choice: content (or refusal) pieces, tool calls, and its finish reason."""

    content: tuple[str, ...] = ()
    refusal: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    logprobs: bool = False


@dataclass(frozen=True)
class Scripted:
    """A successful answer. Streamed, after that many chunks: ``reset_after`` aborts the
    connection (a TCP reset), ``error_after`` sends an OpenAI error event and ends the
    stream, ``stall_after`` falls silent for ``stall`` seconds. ``delay``: seconds before
    every event."""

    choices: tuple[Choice, ...] = (Choice(content=("Hello", ", world", "!")),)
    delay: float = 0.0
    reset_after: int | None = None
    error_after: int | None = None
    stall_after: int | None = None
    stall: float = 0.0
    error_event: Any = field(default_factory=lambda: {"error": {"message": "The model overloaded.", "type": "server_error", "param": None, "code": None}})


@dataclass(frozen=True)
class Failure:
    """An error answer: ``status`` with ``body`` (an object is sent as JSON, bytes as they are)."""

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Hang:
    """Say nothing for ``seconds``, then answer ``then``."""

    seconds: float
    then: Scripted = Scripted()


@dataclass
class Received:
    """A request the double received, and how its answer ended."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    outcome: str = "pending"  # "answered", "streamed", "reset", "client-gone"
    ended_at: float | None = None
    sent: list[bytes] = field(default_factory=list)


def _logprob(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.25, "bytes": list(token.encode()), "top_logprobs": []}


def _usage(script: Scripted) -> dict[str, Any]:
    completion_tokens = sum(len(c.content) + len(c.refusal) + sum(len(t.arguments) for t in c.tool_calls) for c in script.choices)
    return {
        "prompt_tokens": 11,
        "completion_tokens": completion_tokens,
        "total_tokens": 11 + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def completion_json(script: Scripted, completion_id: str) -> dict[str, Any]:
    """Return the non-streaming answer of ``script``, shaped as OpenAI's."""
    choices = []
    for index, choice in enumerate(script.choices):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(choice.content) or None,
            "refusal": "".join(choice.refusal) or None,
            "annotations": [],
        }
        if choice.tool_calls:
            message["tool_calls"] = [
                {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": "".join(t.arguments)}}
                for t in choice.tool_calls
            ]
        logprobs = (
            {"content": [_logprob(p) for p in choice.content] or None, "refusal": [_logprob(p) for p in choice.refusal] or None}
            if choice.logprobs
            else None
        )
        choices.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": choice.finish_reason})
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": choices,
        "usage": _usage(script),
        "service_tier": "default",
        "system_fingerprint": "fp_double",
    }


def _choice_deltas(choice: Choice) -> Iterator[tuple[dict[str, Any], Any, str | None]]:
    """Yield (delta, logprobs, finish_reason) of one choice, as OpenAI streams them."""
    first: dict[str, Any] = {"role": "assistant", "content": None if (choice.tool_calls or choice.refusal) else "", "refusal": None}
    if choice.refusal:
        first["refusal"] = ""
    yield first, None, None
    for piece in choice.content:
        lp = {"content": [_logprob(piece)], "refusal": None} if choice.logprobs else None
        yield {"content": piece}, lp, None
    for piece in choice.refusal:
        lp = {"content": None, "refusal": [_logprob(piece)]} if choice.logprobs else None
        yield {"refusal": piece}, lp, None
    for index, call in enumerate(choice.tool_calls):
        head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield {"tool_calls": [head]}, None, None
        for piece in call.arguments:
            yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None, None
    yield {}, None, choice.finish_reason


def stream_chunks(script: Scripted, completion_id: str, *, include_usage: bool) -> list[dict[str, Any]]:
    """Return the ``chat.completion.chunk`` objects of ``script``; several choices interleave."""
    per_choice = [list(_choice_deltas(choice)) for choice in script.choices]
    chunks = []
    for step in range(max(len(d) for d in per_choice)):
        for index, deltas in enumerate(per_choice):
            if step >= len(deltas):
                continue
            delta, logprobs, finish_reason = deltas[step]
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "service_tier": "default",
                "system_fingerprint": "fp_double",
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
                "obfuscation": "x" * (step % 4),
            }
            if include_usage:
                chunk["usage"] = None
            chunks.append(chunk)
    if include_usage:
        chunks.append({
            "id": completion_id, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
            "service_tier": "default", "system_fingerprint": "fp_double", "choices": [], "usage": _usage(script),
            "obfuscation": "",
        })
    return chunks


def sse(data: Any) -> bytes:
    """Return one SSE event carrying ``data`` (JSON unless it is a string)."""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        double = self.server.double
        received = Received(path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, body=body)
        number = double.record(received)
        reply = double.reply
        try:
            if isinstance(reply, Hang):
                time.sleep(reply.seconds)
                reply = reply.then
            if isinstance(reply, Failure):
                self._failure(reply, received)
            elif body.get("stream"):
                self._stream(reply, received, number)
            else:
                self._json(200, completion_json(reply, f"chatcmpl-double-{number}"), received, number)
        except (BrokenPipeError, ConnectionResetError):
            received.outcome = "client-gone"
            self.close_connection = True
        received.ended_at = time.monotonic()

    def _headers(self, status: int, headers: dict[str, str], number: int | None) -> None:
        self.send_response(status)
        if number is not None:
            self.send_header("x-request-id", f"req_double_{number}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _json(self, status: int, body: Any, received: Received, number: int | None, extra: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        kind = "application/json" if not isinstance(body, bytes) else "text/plain"
        self._headers(status, {"Content-Type": kind, "Content-Length": str(len(data)), **(extra or {})}, number)
        self.wfile.write(data)
        received.outcome = "answered"

    def _failure(self, failure: Failure, received: Received) -> None:
        self._json(failure.status, failure.body, received, None, dict(failure.headers))

    def _stream(self, script: Scripted, received: Received, number: int) -> None:
        include_usage = bool((received.body.get("stream_options") or {}).get("include_usage"))
        chunks = stream_chunks(script, f"chatcmpl-double-{number}", include_usage=include_usage)
        self._headers(200, {"Content-Type": "text/event-stream; charset=utf-8", "Transfer-Encoding": "chunked"}, number)
        for count, chunk in enumerate(chunks):
            if count == script.error_after:
                self._send(sse(script.error_event), received, script)
                self._end_chunked()
                received.outcome = "streamed"
                return
            if count == script.reset_after:
                self._reset()
                received.outcome = "reset"
                return
            if count == script.stall_after:
                time.sleep(script.stall)
            self._send(sse(chunk), received, script)
        self._send(sse("[DONE]"), received, script)
        self._end_chunked()
        received.outcome = "streamed"

    def _send(self, event: bytes, received: Received, script: Scripted) -> None:
        if script.delay:
            time.sleep(script.delay)
        # Each event goes out in two pieces, so the store must put events together again.
        middle = len(event) // 2
        for piece in (event[:middle], event[middle:]):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        received.sent.append(event)

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send a TCP reset."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    double: UpstreamDouble

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away is part of what the tests script


class UpstreamDouble:
    """The upstream double. ``url`` is its base URL; set ``reply`` to script its answers."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.double = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, name="upstream-double", daemon=True)
        self.reply: Scripted | Failure | Hang = Scripted()
        self.received: list[Received] = []
        self._lock = threading.Lock()

    def start(self) -> UpstreamDouble:
        """Start serving in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()

    def reset(self, reply: Scripted | Failure | Hang | None = None) -> None:
        """Forget what was received and answer ``reply`` (by default a short text) from now on."""
        with self._lock:
            self.received = []
            self.reply = reply or Scripted()

    def record(self, received: Received) -> int:
        """Keep a received request; return its number (1 for the first since the last reset)."""
        with self._lock:
            self.received.append(received)
            return len(self.received)

    def wait_until_ended(self, timeout: float = 5.0) -> Received:
        """Return the last request once its answer has ended; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.received and self.received[-1].ended_at is not None:
                return self.received[-1]
            time.sleep(0.01)
        raise AssertionError("the upstream double's last answer did not end in time")
