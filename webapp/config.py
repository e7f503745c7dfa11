"""Settings from the environment, with defaults.

Every name here may also be set in ``instance/config.py``. The order, each overriding the one
before: the defaults, ``instance/config.py``, the environment, and ``test_config`` passed to
``create_app``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from collections.abc import Callable
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


# Every setting: how to read it from an environment variable, and its default (None: none,
# or derived in ``defaults``/``finalize``).
SETTINGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "DATABASE_URL": (str, None),
    "SECRET_KEY": (str, None),
    "UPSTREAM_BASE_URL": (str, DEFAULT_UPSTREAM_BASE_URL),
    "UPSTREAM_API_KEY": (str, None),
    "UPSTREAM_TIMEOUT": (float, 600.0),
    "UPSTREAM_MAX_BYTES": (int, 64 * 1024 * 1024),
    "MAX_CONTENT_LENGTH": (int, 16 * 1024 * 1024),
    "DATABASE_TIMEOUT": (float, 5.0),
    "TRUSTED_PROXIES": (int, 0),
    "API_KEY_CACHE_SECONDS": (float, 2.0),
    # Days a completion is kept: the default of `flask purge --older-than` (None: purge needs the option).
    "RETENTION_DAYS": (int, None),
    # When set, GET /metrics answers only "Authorization: Bearer <METRICS_TOKEN>".
    "METRICS_TOKEN": (str, None),
}


def defaults(instance_path: str) -> dict[str, Any]:
    """Return every setting's default; ``instance/config.py`` and the environment override them."""
    values = {name: default for name, (_parse, default) in SETTINGS.items() if name != "SECRET_KEY"}
    values["DATABASE_URL"] = f"sqlite:///{Path(instance_path) / 'completions.db'}"
    return values


def from_environment() -> dict[str, Any]:
    """Return the settings set (non-empty) in the environment, parsed.

    Raises ValueError naming the variable when one cannot be read, so start-up fails with a
    message that says what to fix.
    """
    values: dict[str, Any] = {}
    for name, (parse, _default) in SETTINGS.items():
        raw = os.environ.get(name)
        if not raw:
            continue
        try:
            values[name] = parse(raw)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(parse, "a string")  # type: ignore[call-overload]
            raise ValueError(f"The environment variable {name}={raw!r} is not {kind}: fix or unset it.") from None
    return values


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
