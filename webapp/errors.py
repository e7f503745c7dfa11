"""The one OpenAI error envelope and the app-level error handlers.

Handlers live on the app, not on a blueprint, because blueprint handlers never see
routing 404/405 or a 413 raised while the body is read. Under ``/v1`` every failure
answers in the envelope; elsewhere (the admin UI) an HTML page in the site's layout.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import DBAPIError, OperationalError, TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestURITooLarge

from .store import CompletionNotFound, PreconditionFailed
from .validation import MAX_REQUEST_LINE, ValidationError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


class APIError(Exception):
    """An error the API answers with ``status`` and the OpenAI envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def envelope(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Return the OpenAI error body: ``{"error": {message, type, param, code}}``, all four keys."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: APIError) -> Response:
    """Return the JSON response of ``error``."""
    response = jsonify(envelope(error.message, type=error.type, param=error.param, code=error.code))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def wants_json() -> bool:
    """Return whether this request is answered in JSON (the API and the health check) rather than HTML."""
    return request.path == "/v1" or request.path.startswith("/v1/") or request.path == "/healthz"


def _html_error(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("errors/error.html", status=status, title=title, message=message), status


HTTP_MESSAGES = {
    404: "Unknown request URL: {method} {path}. Please check the URL for typos.",
    405: "Method {method} is not allowed for {path}.",
    413: "Request body too large: the limit is {limit} bytes.",
    414: "Request line too long: it is longer than any valid request needs ({line_limit} bytes).",
}


def request_line_length(environ: dict[str, Any]) -> int:
    """Return the length in bytes of the request line (``METHOD target HTTP/x.y``) as it arrived.

    gunicorn keeps the raw target in ``RAW_URI``; without it (the test client, other
    servers) the target is rebuilt from the path and the raw query string.
    """
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if target is None:
        query = environ.get("QUERY_STRING", "")
        target = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/;=,", encoding="latin-1") + ("?" + query if query else "")
    return len(environ.get("REQUEST_METHOD", "")) + 1 + len(target) + 1 + len(environ.get("SERVER_PROTOCOL", "HTTP/1.1"))


def _http_error(exc: HTTPException) -> Any:
    status = exc.code or 500
    if not wants_json():
        if status >= 500:
            return _html_error(status, "Something went wrong", "The server could not finish this request. Try again in a moment.")
        return _html_error(status, exc.name, exc.description or exc.name)
    template = HTTP_MESSAGES.get(status)
    if template:
        from flask import current_app

        message = template.format(
            method=request.method,
            path=request.path,
            limit=current_app.config.get("MAX_CONTENT_LENGTH"),
            line_limit=MAX_REQUEST_LINE,
        )
    else:
        message = exc.description or exc.name
    error = APIError(status, message, type="server_error" if status >= 500 else "invalid_request_error")
    response = error_response(error)
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def _database_unavailable(exc: Exception) -> Any:
    log.warning("database unavailable: %s", type(exc).__name__)
    message = "The database is unavailable right now. Retry in a few seconds."
    if not wants_json():
        return _html_error(503, "Database unavailable", message)
    return error_response(APIError(503, message, type="server_error"))


def is_connection_error(exc: BaseException) -> bool:
    """Return whether ``exc`` means the database could not be reached (rather than a bug)."""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, OperationalError):
            text = str(exc.orig).lower()
            # SQLite's "database is locked" past the busy timeout is also "try again".
            return any(
                word in text
                for word in ("connect", "connection", "server closed", "terminating", "locked", "timeout", "timed out", "unable to open")
            )
    return False


def register_error_handlers(app: Flask) -> None:
    """Install the app-level handlers and the ``x-request-id`` header on every response."""

    @app.before_request
    def _assign_request_id() -> None:
        g.request_id = "req_" + uuid.uuid4().hex

    @app.before_request
    def _limit_request_line() -> None:
        # gunicorn's limit_request_line is off (its maximum, 8,190 bytes, refuses valid lists
        # with an HTML page); this one is sized to the longest valid request and answers in the envelope.
        if request_line_length(request.environ) > MAX_REQUEST_LINE:
            raise RequestURITooLarge()

    @app.after_request
    def _add_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id") or "req_" + uuid.uuid4().hex
        return response

    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Response:
        return error_response(exc)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Any:
        if not wants_json():
            return _html_error(400, "Invalid request", exc.message)
        return error_response(APIError(400, exc.message, param=exc.param, code=exc.code))

    @app.errorhandler(CompletionNotFound)
    def _not_found(exc: CompletionNotFound) -> Any:
        if not wants_json():
            return _html_error(404, "Not found", str(exc))
        return error_response(APIError(404, str(exc)))

    @app.errorhandler(PreconditionFailed)
    def _precondition_failed(exc: PreconditionFailed) -> Any:
        if not wants_json():
            return _html_error(412, "Changed meanwhile", "Someone changed this completion since you loaded the page. Reload it and try again.")
        return error_response(APIError(412, str(exc), code="precondition_failed"))

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError) -> Any:
        # Only HTML forms carry CSRF tokens (the API is exempt). Refused like Django does: 403.
        return _html_error(
            403,
            "Form refused",
            f"{exc.description} The form's security token was missing, wrong or from another session: "
            "go back, reload the page and submit it again.",
        )

    @app.errorhandler(HTTPException)
    def _http_exception(exc: HTTPException) -> Any:
        return _http_error(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        if is_connection_error(exc):
            return _database_unavailable(exc)
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path, g.get("request_id"))
        message = "The server had an error while processing your request. Sorry about that!"
        if not wants_json():
            return _html_error(500, "Something went wrong", "The server could not finish this request. Try again in a moment.")
        return error_response(APIError(500, message, type="server_error"))
