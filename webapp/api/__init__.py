"""The JSON API at ``/v1``: OpenAI's stored-completions operations."""

from flask import Blueprint

# Where the API lives; the app's session interface gives requests under it no session.
URL_PREFIX = "/v1"
bp = Blueprint("api", __name__, url_prefix=URL_PREFIX)

from . import auth, create, views  # noqa: E402,F401  (routes register themselves on bp)
