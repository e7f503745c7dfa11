"""What the benchmarks share: an app over a given database, and a migrated, emptied database."""

from __future__ import annotations

from typing import Any


def make_app(url: str) -> Any:
    """Return the app over ``url`` (benchmark settings)."""
    from webapp import create_app

    return create_app({"DATABASE_URL": url, "SECRET_KEY": "bench", "TESTING": True})


def empty_and_migrate(url: str) -> None:
    """Make the database at ``url`` an empty, migrated store.

    A SQLite file is removed and made again: emptied with DELETE, its FTS5 search tables would
    keep every old posting beside a delete marker for it, which each later insert merges with
    (the first run of a bench would then be the only one into a truly empty store).
    PostgreSQL's tables are truncated.
    """
    import os

    from flask_migrate import upgrade
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from webapp.extensions import db

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(parsed.database + suffix):
                os.remove(parsed.database + suffix)
    app = make_app(url)
    with app.app_context():
        upgrade()
        if db.engine.dialect.name == "postgresql":
            tables = [t.name for t in reversed(db.metadata.sorted_tables)]
            db.session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        db.session.commit()
        db.engine.dispose()
