"""The admin UI at ``/``: server-rendered pages to browse, read, label and export stored completions."""

from flask import Blueprint

bp = Blueprint("admin", __name__)

from . import auth, display, overview, views  # noqa: E402,F401  (routes, guards and filters register themselves on bp)

display.register(bp)
