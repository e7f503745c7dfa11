"""The upstream's connection pool (``webapp.httppool``) against a real HTTP server: connections
kept and reused, one closed by the server replaced, bodies decoded from gzip and deflate
(streamed too, and bounded), timeouts and refusals as the pool's own errors."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from webapp.httppool import PIECE, Pool, UpstreamTimeout, UpstreamUnreachable

BODY = json.dumps({"words": ["hello"] * 2000}).encode()


def _raw_deflate(data: bytes) -> bytes:
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return squeeze.compress(data) + squeeze.flush()


ENCODED = {
    "gzip": gzip.compress(BODY),
    "deflate": zlib.compress(BODY),
    "raw-deflate": _raw_deflate(BODY),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.ports.append(self.client_address[1])
        mode = self.path.strip("/")
        if mode == "slow":
            time.sleep(1.0)
        if mode == "chunked-gzip":
            self._chunked(gzip.compress(BODY))
            return
        encoding = {"raw-deflate": "deflate"}.get(mode, mode)
        data = ENCODED.get(mode, BODY)
        self.send_response(200)
        if mode in ENCODED:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Twice", "a")
        self.send_header("x-twice", "b")
        if mode == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _chunked(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(data), 100):
            piece = data[start : start + 100]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ports: list[int]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the timeout test's client goes away before the answer


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.ports = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{path}"


def _read(pool: Pool) -> tuple[int, bytes, Any]:
    response = pool.post(b"{}", {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate"})
    try:
        return response.status_code, b"".join(response.iter_bytes()), response.headers
    finally:
        response.close()


@pytest.mark.parametrize("path", ["plain", "gzip", "deflate", "raw-deflate", "chunked-gzip"])
def test_every_body_arrives_decoded(server: _Server, path: str) -> None:
    pool = Pool(_url(server, path), timeout=5)
    try:
        status, body, _headers = _read(pool)
    finally:
        pool.close()
    assert status == 200 and body == BODY


def test_a_small_compressed_piece_is_handed_on_in_bounded_pieces(server: _Server) -> None:
    """A body that compresses 1,000 to 1 never sits in memory whole before the caller counts it."""
    global ENCODED
    big = b"x" * (PIECE * 20)
    saved = ENCODED
    ENCODED = {**saved, "gzip": gzip.compress(big)}
    pool = Pool(_url(server, "gzip"), timeout=5)
    try:
        response = pool.post(b"{}", {})
        pieces = list(response.iter_bytes())
        response.close()
    finally:
        pool.close()
        ENCODED = saved
    assert b"".join(pieces) == big and max(len(piece) for piece in pieces) <= PIECE


def test_a_connection_is_kept_and_reused(server: _Server) -> None:
    pool = Pool(_url(server, "plain"), timeout=5)
    try:
        for _ in range(3):
            assert _read(pool)[0] == 200
    finally:
        pool.close()
    assert len(set(server.ports)) == 1


def test_a_connection_the_server_closed_is_replaced(server: _Server) -> None:
    pool = Pool(_url(server, "close"), timeout=5)
    try:
        for _ in range(3):
            assert _read(pool)[1] == BODY
    finally:
        pool.close()
    assert len(set(server.ports)) == 3


def test_repeated_headers_are_joined_under_a_lower_case_name(server: _Server) -> None:
    pool = Pool(_url(server, "plain"), timeout=5)
    try:
        headers = _read(pool)[2]
    finally:
        pool.close()
    assert headers["x-twice"] == "a, b" and headers.get("X-TWICE") == "a, b"


def test_silence_past_the_timeout_is_a_timeout(server: _Server) -> None:
    pool = Pool(_url(server, "slow"), timeout=0.2)
    try:
        with pytest.raises(UpstreamTimeout):
            pool.post(b"{}", {})
    finally:
        pool.close()


def test_nobody_listening_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = Pool(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=2)
    with pytest.raises(UpstreamUnreachable):
        pool.post(b"{}", {})


def test_a_url_that_is_not_http_is_unreachable_and_says_why() -> None:
    """A mistyped UPSTREAM_BASE_URL gives each create a 502, as an unreachable upstream does, not a 500."""
    pool = Pool("localhost:11434/v1/chat/completions", timeout=1)
    with pytest.raises(UpstreamUnreachable, match="not an http"):
        pool.post(b"{}", {})
