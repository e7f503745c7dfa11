"""Completion Store: a self-hosted home for OpenAI chat completions."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Request, jsonify, request
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from sqlalchemy import text
from werkzeug.middleware.proxy_fix import ProxyFix

from . import config as settings
from .extensions import configure_engine, csrf, db, migrate

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, marked ``Secure`` whenever the page came over HTTPS; none
    under ``sessionless`` (the ``/v1`` API).

    The API authenticates every request by its bearer key and keeps nothing between requests:
    it gets Flask's null session (writing to it raises), which skips reading a cookie and
    building a signing serializer (a JSON round trip) on every request.
    """

    def __init__(self, *, sessionless: str) -> None:
        self._sessionless = sessionless
        self._under = sessionless + "/"

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        if request.path.startswith(self._under) or request.path == self._sessionless:
            return self.make_null_session(app)
        return super().open_session(app, request)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then ``instance/config.py`` and the environment (or
    ``test_config``), then the extensions, then the blueprints."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder=os.path.join(PROJECT_ROOT, "templates"),
        static_folder=os.path.join(PROJECT_ROOT, "static"),
    )
    settings.private_folder(app.instance_path)
    app.config.from_mapping(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
    )
    app.config.from_mapping(settings.defaults(app.instance_path))
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_mapping(settings.from_environment())
    if test_config is not None:
        app.config.from_mapping(test_config)
    settings.finalize(app.config, app.instance_path)
    from .api import URL_PREFIX

    app.session_interface = SessionInterface(sessionless=URL_PREFIX)
    if app.config["TRUSTED_PROXIES"]:
        # Behind a TLS-terminating proxy, trust its X-Forwarded-* so HTTPS is seen as HTTPS.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(PROJECT_ROOT, "migrations"))
    csrf.init_app(app)
    with app.app_context():
        configure_engine(db.engine, busy_timeout=app.config["DATABASE_TIMEOUT"])

    from . import models  # noqa: F401  (registers the tables with the metadata)
    from .admin import bp as admin_bp
    from .api import bp as api_bp
    from .cli import register_commands
    from .errors import register_error_handlers
    from .metrics import init_app as init_metrics

    register_error_handlers(app)
    init_metrics(app)
    app.register_blueprint(api_bp)
    csrf.exempt(api_bp)
    app.register_blueprint(admin_bp)
    register_commands(app)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        """Answer 200 when the database answers; the 503 comes from the error handlers."""
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
        return jsonify(status="ok")

    return app
