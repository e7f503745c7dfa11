"""Settings from the environment, with defaults.

Every name here may also be set in ``instance/config.py``. The order, each overriding the one
before: the defaults, ``instance/config.py``, the environment, and ``test_config`` passed to
``create_app``.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_UPSTREAM_BASE_URL = "https://api.openai.com/v1"


def normalize_database_url(url: str) -> str:
    """Return ``url`` with a bare ``postgresql://`` (or ``postgres://``) mapped to psycopg 3.

    SQLAlchemy would pick psycopg2 for a bare ``postgresql://``; we ship psycopg 3.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def private_folder(path: str | Path) -> None:
    """Create the folder ``path`` readable by its owner only (0700), or make an existing one so.

    The instance folder holds the secret key and the embedded database: under the usual
    umask (022) a plain ``mkdir`` would let every local user list and read it.
    """
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _drop_group_and_other(path)


def private_sqlite_files(url: str) -> None:
    """Make the SQLite database of ``url`` and its ``-wal``/``-shm`` files private to their owner (0600).

    The database file is created empty (a valid empty database) with mode 0600 before SQLite
    opens it: SQLite would create it 0644 under the usual umask, and it gives the ``-wal`` and
    ``-shm`` files it makes later the mode of the database file. Files left readable by an
    earlier version are tightened. Does nothing for other databases or an in-memory one.
    """
    if not url.startswith("sqlite"):
        return
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():  # SQLite will say it cannot open the database; nothing to protect
        return
    # O_EXCL: never open a database that exists. Closing any descriptor of a file drops every
    # POSIX lock this process holds on it, and SQLite's locks are POSIX locks.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if name.exists():
            _drop_group_and_other(name)


def _drop_group_and_other(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            path.chmod(mode & 0o700)
        except PermissionError:  # owned by someone else: their choice, and not ours to change
            log.warning("%s is readable by other users (mode %o) and not ours to change", path, mode)


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
    "PASSWORD_MIN_LENGTH": (int, 12),
    # Seconds without a request after which a signed-in session is over (beside
    # PERMANENT_SESSION_LIFETIME, the most a session lasts however busy).
    "SESSION_IDLE_TIMEOUT": (float, 3600.0),
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
    if not isinstance(config["SESSION_IDLE_TIMEOUT"], timedelta):
        config["SESSION_IDLE_TIMEOUT"] = timedelta(seconds=config["SESSION_IDLE_TIMEOUT"])
    url = normalize_database_url(config["DATABASE_URL"])
    config["DATABASE_URL"] = url
    config["SQLALCHEMY_DATABASE_URI"] = url
    private_sqlite_files(url)
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
                # No JIT: every query here reads a bounded page or a capped count, and compiling
                # one (chosen by cost estimates, which a LIMIT inflates) took longer than running it.
                "options": f"-c statement_timeout={int(timeout * 6000)} -c jit=off",
            },
        )
    config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", options)
