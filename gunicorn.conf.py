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
# Long list URLs with many metadata[...] filters exceed the 4094-byte default request line.
limit_request_line = 8190
# Access logs carry no Authorization header: gunicorn's default format does not log it.
accesslog = "-"
