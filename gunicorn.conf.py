"""Production settings for gunicorn (``gunicorn -c gunicorn.conf.py wsgi:app``).

Threads keep a long streaming response from blocking other requests: each worker
process serves ``threads`` requests at once. Override any of these on the command line.
"""

import os

# Only this machine by default: gunicorn is not built to face the internet (slow clients tie up
# its threads), so a proxy such as nginx fronts it (README, "Behind nginx"). BIND changes it.
bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Streams of a slow model can run for minutes; UPSTREAM_TIMEOUT bounds them instead.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "660"))
graceful_timeout = 30
keepalive = 5
# No request-line limit here: gunicorn's largest (8,190 bytes) refuses valid lists of many long
# metadata[...] filters with an HTML page. The app has its own limit, sized to the longest valid
# request (webapp.validation.MAX_REQUEST_LINE, about 130 KB), and answers past it with 414 in the
# API's error envelope.
limit_request_line = 0
# gunicorn's control socket (for gunicornc) sits at one path per user by default, so two
# instances on one host would fight over it: off, unless GUNICORN_CONTROL_SOCKET names a path
# of this instance's own.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET") or "gunicorn.ctl"
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET")
# The app is served at / and takes no SCRIPT_NAME or PATH_INFO from a proxy: such request
# headers are dropped (by default gunicorn believes them from 127.0.0.1, and a client on this
# machine could make it answer 500 with an HTML page of its own).
forwarder_headers = ""
# No access log unless GUNICORN_ACCESS_LOG names one ("-" for stdout, or a file): the proxy in
# front logs each request and GET /metrics counts them by route and status, and writing a line
# per request costs the hot path of a create about a tenth of a millisecond (bench/proxy.py).
# `make run` turns it on for development. It never carries the Authorization header: gunicorn's
# default format does not log it.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None

# --- Prometheus metrics across worker processes ------------------------------------------
# Each worker writes its counts to files in PROMETHEUS_MULTIPROC_DIR and GET /metrics adds
# them up (prometheus_client's multiprocess mode). Set before any worker imports the app.
# Unless you set it, a folder of this server's own under the temporary directory; it is
# emptied at start, since counts left by an earlier run would be added to this one's.
import shutil  # noqa: E402
import tempfile  # noqa: E402

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(tempfile.gettempdir(), f"completion-store-metrics-{os.getpid()}")
_metrics_dir_is_ours = os.path.basename(os.environ["PROMETHEUS_MULTIPROC_DIR"]).startswith("completion-store-metrics-")


def on_starting(server):  # type: ignore[no-untyped-def]
    """Start with an empty metrics folder."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.remove(os.path.join(folder, name))


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker that exited no longer counts towards the live gauges (open streams)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the metrics folder this server made."""
    if _metrics_dir_is_ours:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
