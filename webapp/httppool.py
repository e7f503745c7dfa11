"""Keep-alive HTTP/1.1 connections to one origin on the standard library's ``http.client``,
for the upstream's hot path.

Every create is one POST to the upstream, so the client in between is paid on every call.
Measured on the 2-core machine against a local upstream: httpx's pooled transport (httpcore
and h11, pure Python) took 0.20 ms a call, ``http.client`` (C-accelerated parsing) 0.08 ms.
What this module adds to ``http.client`` is what the upstream client needs of httpx: a
thread-safe pool of idle connections (one checked for being closed by the server before it is
used again), the same timeout for connecting and each read or write, TLS set up as httpx sets
it up, and bodies decoded from ``gzip``/``deflate`` in bounded pieces as they arrive.

Failures come out as :class:`UpstreamTimeout` (no answer in time) or :class:`UpstreamUnreachable`
(refused, reset, TLS, or an answer that is not HTTP); ``webapp.upstream`` maps them to 504 and 502.
"""

from __future__ import annotations

import http.client
import select
import threading
import zlib
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

# The most bytes one read hands on: a piece of a stream as soon as it arrives, and a bound on
# what one compressed piece may grow into before the caller counts it.
PIECE = 64 * 1024
# Idle connections kept per pool; more are closed when given back.
MAX_IDLE = 32
# The encodings this client asks for (Accept-Encoding) and decodes.
ENCODINGS = "gzip, deflate"


class UpstreamTimeout(Exception):
    """The origin did not connect, accept the request or answer within the timeout."""


class UpstreamUnreachable(Exception):
    """The origin could not be reached, or broke the connection or the protocol."""


class Headers(Mapping[str, str]):
    """An answer's headers: names in lower case, repeated headers joined with ", "."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._values: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            self._values[key] = f"{self._values[key]}, {value}" if key in self._values else value

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class Response:
    """An answer whose status and headers are in and whose body is still to read:
    iterate :meth:`iter_bytes`, then :meth:`close` (which gives the connection back for reuse
    when the body was read to its end)."""

    def __init__(self, pool: Pool, connection: http.client.HTTPConnection, answer: http.client.HTTPResponse) -> None:
        self._pool = pool
        self._connection: http.client.HTTPConnection | None = connection
        self._answer = answer
        self.url = pool.url
        self.status_code = answer.status
        self.reason_phrase = answer.reason
        self.headers = Headers(answer.getheaders())
        self.is_success = 200 <= answer.status < 300

    def iter_bytes(self) -> Iterator[bytes]:
        """Yield the decoded body in pieces of at most ``PIECE`` bytes, each as soon as it has arrived.

        Raises UpstreamTimeout or UpstreamUnreachable when the connection fails midway."""
        decoder = _decoder(self.headers.get("content-encoding", ""))
        with _socket_errors:
            while True:
                piece = self._answer.read1(PIECE)
                if not piece:
                    break
                if decoder is None:
                    yield piece
                    continue
                yield from _decoded(decoder, piece)
            # Marks the answer read to its end (a body with a length is not, until read once more).
            self._answer.read()
            if decoder is not None:
                rest = decoder.flush()
                if rest:
                    yield rest

    def close(self) -> None:
        """End the answer: the connection goes back to the pool if the body was read to its
        end and the origin keeps it open, else it is closed (ending the request if it runs)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._answer.isclosed() and not self._answer.will_close:
            self._pool.give_back(connection)
        else:
            self._answer.close()
            connection.close()


class Pool:
    """Keep-alive connections to the origin of ``url``, shared by every thread of a process."""

    def __init__(self, url: str, *, timeout: float, max_idle: int = MAX_IDLE) -> None:
        parts = urlsplit(url)
        # A URL no request can go to (a mistyped UPSTREAM_BASE_URL) fails each request as unreachable, saying why.
        self._unusable = None if parts.scheme in ("http", "https") and parts.hostname else f"not an http(s) URL: {url!r}"
        self.url = url
        self.path = parts.path or "/"
        if parts.query:
            self.path += f"?{parts.query}"
        self._host = parts.hostname or ""
        # Given, not left to http.client, which reads an IPv6 address's last group as a port.
        try:
            self._port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port that is no number
            self._port, self._unusable = 0, f"not an http(s) URL: {url!r}"
        # TLS as httpx sets it up (certifi's certificates, or SSL_CERT_FILE / SSL_CERT_DIR), as before this pool.
        self._tls = httpx.create_ssl_context() if parts.scheme == "https" else None
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, body: bytes, headers: Mapping[str, str]) -> Response:
        """Send ``body`` to the URL's path and return the answer once its status and headers are in.

        Raises UpstreamTimeout or UpstreamUnreachable. (``http.client`` writes the headers and the
        body apart: joining them into one write made no difference that ``bench/proxy.py`` could
        see, so it is left as it is.)
        """
        connection = self._checkout()
        try:
            with _socket_errors:
                connection.request("POST", self.path, body, dict(headers))
                answer = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        return Response(self, connection, answer)

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        """Keep an idle connection for the next request (or close it when enough are kept)."""
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _checkout(self) -> http.client.HTTPConnection:
        """Return an idle connection the origin has not closed meanwhile, or a new one (which
        connects on first use). Raises UpstreamUnreachable when the URL is not an http(s) one."""
        if self._unusable is not None:
            raise UpstreamUnreachable(self._unusable)
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                break
            if not _closed_by_peer(connection):
                return connection
            connection.close()
        if self._tls is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._tls)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle keep-alive connection is unusable: readable while idle means the origin
    closed it (or sent something unasked), so a request on it would fail or be misread."""
    sock = connection.sock
    if sock is None:
        return True
    poller = select.poll()  # not select(), which fails on a descriptor over 1023
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


class _SocketErrors:
    """Turns the standard library's network failures into UpstreamTimeout and UpstreamUnreachable."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> bool:
        if error is None:
            return False
        if isinstance(error, TimeoutError):
            raise UpstreamTimeout(str(error) or "timed out") from error
        if isinstance(error, (OSError, http.client.HTTPException, zlib.error)):
            raise UpstreamUnreachable(repr(error)) from error
        return False


_socket_errors = _SocketErrors()


def _decoder(encoding: str) -> Any:
    """Return the decoder for a ``Content-Encoding`` this client asked for, or None for the body as sent."""
    name = encoding.strip().lower()
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return _Deflate()
    return None


def _decoded(decoder: Any, piece: bytes) -> Iterator[bytes]:
    """Yield what ``piece`` decodes to, ``PIECE`` bytes at most at a time, so that a small
    compressed piece cannot grow unbounded in memory before the caller counts it."""
    data = decoder.decompress(piece, PIECE)
    while data:
        yield data
        tail = decoder.unconsumed_tail
        if not tail:
            return
        data = decoder.decompress(tail, PIECE)


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped as the standard says, or raw (as some do)."""

    def __init__(self) -> None:
        self._inner = zlib.decompressobj(zlib.MAX_WBITS)
        self._first = True

    @property
    def unconsumed_tail(self) -> bytes:
        return self._inner.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._first:
            self._first = False
            try:
                return self._inner.decompress(data, max_length)
            except zlib.error:
                self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._inner.decompress(data, max_length)

    def flush(self) -> bytes:
        return self._inner.flush()
