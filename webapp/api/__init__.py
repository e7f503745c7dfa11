"""The JSON API at ``/v1``: OpenAI's stored-completions operations."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/v1")

from . import auth, create, views  # noqa: E402,F401  (routes register themselves on bp)
