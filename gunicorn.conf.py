"""Production settings for gunicorn (``gunicorn -c gunicorn.conf.py wsgi:app``).

Threads keep a long streaming response from blocking other requests: each worker
process serves ``threads`` requests at once. Override any of these on the command line.
"""

import os

bind = os.environ.get("BIND", "0.0.0.0:8000")
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
# Access logs carry no Authorization header: gunicorn's default format does not log it.
accesslog = "-"
