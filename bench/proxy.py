"""How much latency the store adds in front of an upstream. Run by hand, never by the tests:

    .venv/bin/python bench/proxy.py [--requests 2000] [--streams 500] [--workers 2] [--gap-ms 0]

It starts a tiny local upstream (an asyncio HTTP server in its own process) answering a
fixed completion, or a short stream, and the store (gunicorn with gunicorn.conf.py, a
temporary SQLite database and one API key) in front of it. Then, alternating between the
two so that drift hits both alike, it measures a non-streaming create straight to the
upstream and through the store (``store: false``, and ``store: true`` with metadata, which
commits the completion with its metadata, and its history row, before answering), and the
time to the first streamed event both ways, and prints medians, p95s, what the store adds,
and the ratios. Targets: at most 1.2 ms added at the median for a non-streaming create, with
``store: false`` and with ``store: true``, and a first chunk at most 1.2 ms after the direct one.
Last, the CPU time the store's workers spend on a create of each kind (Linux's ``/proc``):
what the store costs the machine, beside what it costs the client.

The stream's first event goes out at once, the rest right after it (``--gap-ms`` puts a
pause between them). Requests then follow each other back to back, as the non-streaming
ones do: after an idle pause of a few milliseconds this machine runs the next request
slower (cold caches, a sleeping core), the store's longer path the most, so a gap measures
the CPU waking up as much as the store.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 1.2
REQUEST = {"model": "gpt-bench", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-bench",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, how are you?", "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21},
    "service_tier": "default",
    "system_fingerprint": "fp_bench",
}


# --- The upstream: a tiny asyncio HTTP/1.1 server ------------------------------------------


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: object) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def _stream_events() -> tuple[bytes, bytes]:
    """Return the first event and the rest of a short stream (three words, finish, [DONE])."""
    base = {k: COMPLETION[k] for k in ("id", "created", "model", "system_fingerprint")} | {"object": "chat.completion.chunk"}
    deltas = [{"role": "assistant", "content": ""}, {"content": "Hello"}, {"content": " there"}, {"content": "!"}]
    events = [_event({**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}) for d in deltas]
    events.append(_event({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}))
    events.append(_event(b"[DONE]"))
    return events[0], b"".join(events[1:])


class _UpstreamProtocol(asyncio.Protocol):
    # Every answer gets an id of its own, as OpenAI's do: with one id for all, every stored
    # create after the first would take the path of a taken id (a minted one).
    JSON_ANSWER = json.dumps(COMPLETION).encode().replace(b'"chatcmpl-bench"', b'"chatcmpl-bench-%d"')
    FIRST, REST = _stream_events()
    answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(bool(json.loads(body).get("stream")))

    gap = 0.0

    def _answer(self, stream: bool) -> None:
        head = b"HTTP/1.1 200 OK\r\nx-request-id: req_bench\r\n"
        if not stream:
            _UpstreamProtocol.answered += 1
            answer = self.JSON_ANSWER % _UpstreamProtocol.answered
            self.transport.write(head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            return
        self.transport.write(head + b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunk(self.FIRST))
        asyncio.get_running_loop().call_later(self.gap, self.transport.write, _chunk(self.REST) + b"0\r\n\r\n")


def serve_upstream(port: int, gap: float) -> None:
    """Serve the bench upstream on ``port`` until killed; ``gap`` seconds between a stream's
    first event and the rest."""
    _UpstreamProtocol.gap = gap

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_UpstreamProtocol, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


# --- Set-up ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


def start_store(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    """Migrate, create a key, and start gunicorn; return the process (the key is in env['KEY'])."""
    flask = [sys.executable, "-m", "flask", "--app", "webapp"]
    subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    out = subprocess.run([*flask, "keys", "create", "bench"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    env["KEY"] = out.stdout.strip().splitlines()[-1]
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process


# --- Measuring ------------------------------------------------------------------------------


class Target:
    """A keep-alive connection to the upstream (direct) or to the store (through)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.headers = {"Content-Type": "application/json", **headers}

    def create(self, body: bytes) -> float:
        """Return the seconds a non-streaming create takes, the whole answer read."""
        start = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body, self.headers)
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        assert response.status == 200, response.status
        return elapsed

    def first_chunk(self, body: bytes) -> float:
        """Return the seconds until the first streamed event has arrived (then read the rest)."""
        start = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body, self.headers)
        response = self.conn.getresponse()
        received = b""
        while b"\n\n" not in received:
            piece = response.read1()
            if not piece:
                break
            received += piece
        elapsed = time.perf_counter() - start
        assert response.status == 200 and received.startswith(b"data: "), (response.status, received[:80])
        response.read()
        return elapsed


def measure(calls: list[Callable[[], float]], n: int, warmup: int) -> list[list[float]]:
    """Return ``n`` timings of each of ``calls``, taken in turns after ``warmup`` untimed rounds.

    Each round runs every call once, starting one further along each time, so none always
    follows another and a change in the machine's load hits them all alike.
    """
    for _ in range(warmup):
        for call in calls:
            call()
    timings: list[list[float]] = [[] for _ in calls]
    for i in range(n):
        for k in range(len(calls)):
            j = (i + k) % len(calls)
            timings[j].append(calls[j]())
    return timings


def workers_cpu_seconds(master: int) -> float | None:
    """Return the CPU time (user and system) gunicorn's workers, the children of ``master``,
    have used so far, or None where Linux's /proc cannot tell."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        ticks = 0
        for pid in children:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_per_create(master: int, create: Callable[[], float], n: int) -> float | None:
    """Return the workers' CPU seconds per call of ``create``, over ``n`` calls in a row."""
    before = workers_cpu_seconds(master)
    for _ in range(n):
        create()
    after = workers_cpu_seconds(master)
    return None if before is None or after is None else (after - before) / n


def p95(values: list[float]) -> float:
    """Return the 95th percentile of ``values``."""
    return statistics.quantiles(values, n=20)[-1]


def report(title: str, direct: list[float], through: list[float], *, target: bool = True) -> tuple[float, float]:
    """Print medians, p95s, what going through adds and the ratios; return (added median ms, median ratio)."""
    ms = 1000
    d_med, t_med = statistics.median(direct) * ms, statistics.median(through) * ms
    d_p95, t_p95 = p95(direct) * ms, p95(through) * ms
    added = t_med - d_med
    print(f"\n{title} ({len(direct)} each)")
    print(f"  direct    median {d_med:7.3f} ms   p95 {d_p95:7.3f} ms")
    print(f"  through   median {t_med:7.3f} ms   p95 {t_p95:7.3f} ms")
    verdict = f"   ({'meets' if added <= TARGET_MS else 'misses'} the {TARGET_MS} ms target)" if target else ""
    print(f"  added     median {added:+7.3f} ms   p95 {t_p95 - d_p95:+7.3f} ms{verdict}")
    print(f"  ratio     median {t_med / d_med:7.2f}x     p95 {t_p95 / d_p95:7.2f}x")
    return added, t_med / d_med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="non-streaming creates each way")
    parser.add_argument("--streams", type=int, default=500, help="streams each way")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (threads from gunicorn.conf.py)")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause between a stream's first event and the rest")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.gap_ms / 1000)
        return

    upstream_port, store_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "SECRET_KEY": "bench",
            "UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
            "UPSTREAM_API_KEY": "sk-bench",
        }
        try:
            processes.append(subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(upstream_port), "--gap-ms", str(args.gap_ms)]))
            wait_for_port(upstream_port)
            store = start_store(env, store_port, args.workers)
            processes.append(store)
            direct = Target(upstream_port, {"Authorization": "Bearer sk-bench"})
            through = Target(store_port, {"Authorization": f"Bearer {env['KEY']}"})
            plain = json.dumps(REQUEST).encode()
            stored = json.dumps({**REQUEST, "store": True, "metadata": {"bench": "yes"}}).encode()
            stream = json.dumps({**REQUEST, "stream": True}).encode()
            print(f"Completion Store proxy bench: {os.cpu_count()} cores, gunicorn gthread x{args.workers} workers, SQLite")
            # Both kinds of create in one loop with the direct call, so their difference is
            # what keeping the completion costs, whatever else the machine is doing meanwhile.
            plain_direct, plain_through, stored_through = measure(
                [lambda: direct.create(plain), lambda: through.create(plain), lambda: through.create(stored)],
                args.requests,
                200,
            )
            added, _ = report("non-streaming create, store: false", plain_direct, plain_through)
            added_stored, _ = report(
                "non-streaming create, store: true with metadata (the completion committed before the answer)",
                plain_direct,
                stored_through,
            )
            ttfc, _ = report(
                f"time to first chunk, streaming create, store: false, gap {args.gap_ms:g} ms",
                *measure([lambda: direct.first_chunk(stream), lambda: through.first_chunk(stream)], args.streams, 50),
            )
            print(f"\nkeeping the completion adds {added_stored - added:+.3f} ms at the median; "
                  f"store: true adds {added_stored / added:.2f}x what store: false adds")
            cpu = [cpu_per_create(store.pid, lambda b=b: through.create(b), args.requests) for b in (plain, stored)]
            if None not in cpu:
                print(f"CPU time of the store's workers per create ({args.requests} of each in a row): "
                      f"store: false {cpu[0] * 1000:.3f} ms, store: true {cpu[1] * 1000:.3f} ms")
            ok = max(added, added_stored, ttfc) <= TARGET_MS
            print(f"{'PASS' if ok else 'MISS'}: added {added:.3f} ms (create, store: false), {added_stored:.3f} ms "
                  f"(create, store: true), {ttfc:.3f} ms (first chunk); target {TARGET_MS} ms each")
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=10)


if __name__ == "__main__":
    main()
