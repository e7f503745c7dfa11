"""Who is signed in: server-side sessions, the sign-in guard, and the headers of every HTML page.

The Flask session cookie carries only a random token; the ``user_sessions`` table holds
its hash. Signing out deletes that row, so a copy of the old cookie signs nobody in.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Response, current_app, g, redirect, request, session, url_for

from .. import store
from ..extensions import db, write_transaction
from ..models import User
from . import bp

log = logging.getLogger(__name__)

SESSION_KEY = "sid"
# Endpoints a signed-out visitor may reach.
PUBLIC_ENDPOINTS = frozenset({"admin.login"})

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # data: lets an image sent inline in a message show; nothing is fetched from elsewhere.
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def current_user() -> User | None:
    """Return the signed-in user of this request, or None."""
    return g.get("user")


def actor() -> str:
    """Return who is making this request, for the metadata history."""
    user = current_user()
    assert user is not None, "admin views run signed in"
    return f"user:{user.username}"


def safe_next(target: str | None) -> str | None:
    """Return ``target`` if it is a path on this site (so signing in never sends anyone elsewhere), else None."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or not target.isprintable():
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def client_address() -> str:
    """Return the address of the client: the peer's, or with ``TRUSTED_PROXIES`` the one the
    trusted proxy saw (ProxyFix has put it in ``remote_addr``; a client cannot forge it)."""
    return request.remote_addr or "unknown"


def count_sign_in_attempt(username: str) -> store.SignInAttempt:
    """Count a sign-in attempt for ``username`` from this client, in its own committed transaction,
    before any password is checked."""
    address = client_address()
    with write_transaction() as tx:
        attempt = store.count_sign_in_attempt(tx, username=username, address=address)
    if attempt.number == store.MAX_SIGN_IN_ATTEMPTS + 1:
        # Once a window, for the operator (`users unlock` ends it). Not the username: people
        # type their password into it.
        log.warning("sign-in throttled: more than %d attempts for one username from %s", store.MAX_SIGN_IN_ATTEMPTS, address)
    return attempt


def sign_in(user: User) -> None:
    """Start a new session for ``user``: a fresh token, the old cookie's contents dropped, this
    client's counted attempts for the name forgotten."""
    with write_transaction() as tx:
        store.forget_sign_in_attempts(tx, username=user.username, address=client_address())
        store.end_expired_user_sessions(
            tx, user_id=user.id, max_age=current_app.permanent_session_lifetime, idle_timeout=current_app.config["SESSION_IDLE_TIMEOUT"]
        )
        token = store.start_user_session(tx, user_id=user.id)
    forget_session()
    session.permanent = True
    session[SESSION_KEY] = token


def sign_out(*, everywhere: bool = False) -> None:
    """End this browser's session everywhere it may have been copied; with ``everywhere``,
    every session of the signed-in user (other browsers, other devices) too."""
    token = session.get(SESSION_KEY)
    user = current_user()
    if token:
        with write_transaction() as tx:
            if everywhere and user is not None:
                store.end_user_sessions(tx, user_id=user.id)
            else:
                store.end_user_session(tx, token=token)
    forget_session()


def forget_session() -> None:
    """Drop everything the cookie held, the CSRF token included (and its copy cached for this request)."""
    session.clear()
    g.pop("csrf_token", None)


@bp.before_request
def load_user() -> Response | None:
    """Find who is signed in; send a signed-out visitor to the sign-in page and back afterwards."""
    token = session.get(SESSION_KEY)
    user = None
    if isinstance(token, str):
        found = store.user_for_session(
            db.session, token=token, max_age=current_app.permanent_session_lifetime, idle_timeout=current_app.config["SESSION_IDLE_TIMEOUT"]
        )
        if found is not None and found.needs_touch():
            with write_transaction() as tx:
                store.touch_user_session(tx, token=token)
        user = found.user if found is not None else None
    g.user = user
    if user is None and request.endpoint not in PUBLIC_ENDPOINTS:
        back = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for("admin.login", next=back))
    return None


@bp.after_app_request
def security_headers(response: Response) -> Response:
    """Harden every HTML page (the admin's and the HTML error pages) against framing, sniffing and injected script."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if request.blueprint == "admin":
            # Pages of stored data, and a new key's secret: never kept in a shared or back-button cache.
            response.headers.setdefault("Cache-Control", "no-store")
    return response
