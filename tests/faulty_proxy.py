"""A proxy in front of a live server that answers 429 or 500 now and then, slows answers down,
and counts what it was asked: the flaky source ``sync`` must get through."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from .helpers import free_port


class FaultyProxy:
    """Forward every request to ``target``; every ``fail_every``-th one instead gets 429 or 500
    (alternately, with a short ``retry-after-ms``), and each answer waits ``delay`` seconds."""

    def __init__(self, target: str, *, fail_every: int = 0, delay: float = 0.0) -> None:
        self.target = target.rstrip("/")
        self.fail_every = fail_every
        self.delay = delay
        self.paths: list[str] = []
        self.faults: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60)
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def count(self, fragment: str) -> int:
        """Return how many requests were forwarded whose path holds ``fragment``."""
        with self._lock:
            return sum(fragment in path for path in self.paths)

    def reset(self, *, fail_every: int = 0, delay: float = 0.0) -> None:
        with self._lock:
            self.paths.clear()
            self.faults.clear()
            self.fail_every, self.delay = fail_every, delay

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        seen = Counter[str]()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

            def do_DELETE(self) -> None:
                self._relay()

            def _relay(self) -> None:
                with proxy._lock:
                    seen["all"] += 1
                    fault = None
                    if proxy.fail_every and seen["all"] % proxy.fail_every == 0:
                        fault = 429 if proxy.faults[429] <= proxy.faults[500] else 500
                        proxy.faults[fault] += 1
                    else:
                        proxy.paths.append(self.path)
                time.sleep(proxy.delay)
                if fault is not None:
                    body = b'{"error": {"message": "try again", "type": "server_error", "param": null, "code": null}}'
                    self.send_response(fault)
                    self.send_header("content-type", "application/json")
                    self.send_header("retry-after-ms", "20")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("content-length") or 0)
                upstream = proxy._http.request(
                    self.command,
                    proxy.target + self.path,
                    headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")},
                    content=self.rfile.read(length) if length else None,
                )
                self.send_response(upstream.status_code)
                for name, value in upstream.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

        return Handler
