"""Settings from the environment, with defaults.

Every name here may also be set in ``instance/config.py``; the environment wins over
the built-in default, and ``test_config`` passed to ``create_app`` wins over both.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

DEFAULT_UPSTREAM_BASE_URL = "https://api.openai.com/v1"


def normalize_database_url(url: str) -> str:
    """Return ``url`` with a bare ``postgresql://`` (or ``postgres://``) mapped to psycopg 3.

    SQLAlchemy would pick psycopg2 for a bare ``postgresql://``; we ship psycopg 3.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _secret_key(instance_path: str) -> str:
    """Return the instance's secret key, generating and keeping one on first use."""
    path = Path(instance_path) / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32)
    # Write aside, then link into place: a worker racing us sees no file or a whole one.
    tmp = path.with_name(f".secret_key.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    try:
        os.link(tmp, path)
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    return key


def from_environment(instance_path: str) -> dict[str, Any]:
    """Return the settings read from the environment, each with its default."""
    env = os.environ
    settings: dict[str, Any] = {
        "DATABASE_URL": env.get("DATABASE_URL") or f"sqlite:///{Path(instance_path) / 'completions.db'}",
        "UPSTREAM_BASE_URL": env.get("UPSTREAM_BASE_URL", DEFAULT_UPSTREAM_BASE_URL),
        "UPSTREAM_API_KEY": env.get("UPSTREAM_API_KEY"),
        "UPSTREAM_TIMEOUT": float(env.get("UPSTREAM_TIMEOUT", "600")),
        "UPSTREAM_MAX_BYTES": int(env.get("UPSTREAM_MAX_BYTES", str(64 * 1024 * 1024))),
        "MAX_CONTENT_LENGTH": int(env.get("MAX_CONTENT_LENGTH", str(16 * 1024 * 1024))),
        "DATABASE_TIMEOUT": float(env.get("DATABASE_TIMEOUT", "5")),
        "TRUSTED_PROXIES": int(env.get("TRUSTED_PROXIES", "0")),
        "API_KEY_CACHE_SECONDS": float(env.get("API_KEY_CACHE_SECONDS", "2")),
    }
    if env.get("SECRET_KEY"):
        settings["SECRET_KEY"] = env["SECRET_KEY"]
    return settings


def finalize(config: dict[str, Any], instance_path: str) -> None:
    """Fill in what is derived from other settings once every source has been read."""
    if not config.get("SECRET_KEY"):
        config["SECRET_KEY"] = _secret_key(instance_path)
    url = normalize_database_url(config["DATABASE_URL"])
    config["DATABASE_URL"] = url
    config["SQLALCHEMY_DATABASE_URI"] = url
    timeout = config["DATABASE_TIMEOUT"]
    # Keep bound values (hashes, metadata, messages) out of exception text and so out of logs.
    options: dict[str, Any] = {"hide_parameters": True}
    if not url.startswith("sqlite"):
        # The busy timeout of SQLite is set per connection in extensions.configure_engine.
        options.update(
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            pool_timeout=timeout,
            connect_args={
                "connect_timeout": max(1, int(timeout)),
                # A statement that cannot finish in time is cut off instead of holding a worker.
                "options": f"-c statement_timeout={int(timeout * 6000)}",
            },
        )
    config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", options)
