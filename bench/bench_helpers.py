"""What the benchmarks share: an app over a given database, and a migrated, emptied database."""

from __future__ import annotations

from typing import Any


def make_app(url: str) -> Any:
    """Return the app over ``url`` (benchmark settings)."""
    from webapp import create_app

    return create_app({"DATABASE_URL": url, "SECRET_KEY": "bench", "TESTING": True})


def empty_and_migrate(url: str) -> None:
    """Migrate the database at ``url`` and empty every table."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    from webapp.extensions import db

    app = make_app(url)
    with app.app_context():
        upgrade()
        tables = [t.name for t in reversed(db.metadata.sorted_tables)]
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                db.session.execute(text(f"DELETE FROM {name}"))
        db.session.commit()
        db.engine.dispose()
