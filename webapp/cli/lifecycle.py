"""The commands that keep the store's data over time: ``purge`` (retention) and ``backup``."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
from flask import current_app
from sqlalchemy.engine import make_url

from .. import store, validation
from ..extensions import db, write_transaction
from .data import filter_options

# Completions per purge transaction: each holds SQLite's write lock for a few hundredths of a
# second, and the purge then steps aside as long again, so API writers always get their turn.
PURGE_BATCH = 500
SECONDS_PER_DAY = 86_400


def _now() -> int:
    """Return the current unix time in whole seconds (the clock purge measures ages by)."""
    return int(time.time())


def _confirm_or_refuse(question: str) -> None:
    """Ask ``question`` on the terminal; refuse (exit 1) when the answer is no or there is no terminal."""
    if not sys.stdin.isatty():
        raise click.ClickException("There is no terminal to ask for confirmation: pass --yes to purge, or --dry-run to count.")
    if not click.confirm(question, default=False):
        raise click.ClickException("Nothing purged.")


@click.command("purge")
@click.option("--older-than", "older_than", type=click.IntRange(min=0), metavar="DAYS", help="Default: the RETENTION_DAYS setting.")
@filter_options
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for cron).")
def purge_command(older_than: int | None, selection: validation.Filter, dry_run: bool, yes: bool) -> None:
    """Delete completions created more than DAYS ago (with the filters: only those matching), for good.

    Their messages, metadata and history are removed in short batches; a content-free
    tombstone (id, created, model) stays so that list cursors naming them keep working.
    """
    days = older_than if older_than is not None else current_app.config.get("RETENTION_DAYS")
    if days is None:
        raise click.UsageError("Say how old: --older-than DAYS, or set RETENTION_DAYS. Nothing was purged.")
    cutoff = _now() - int(days) * SECONDS_PER_DAY
    when = datetime.fromtimestamp(cutoff, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    total = store.count_purgeable(db.session, filter=selection, created_before=cutoff)
    db.session.rollback()
    if dry_run or total == 0:
        click.echo(f"{'Would purge' if dry_run else 'Purged'} {total} completions created before {when} ({days} days ago).")
        return
    if not yes:
        _confirm_or_refuse(f"Purge {total} completions created before {when} ({days} days ago)? This cannot be undone.")
    # On SQLite a writer waiting for the lock sleeps and retries; pausing as long as a batch
    # took leaves it room to get in instead of meeting the purge's next batch every time.
    pause = db.engine.dialect.name == "sqlite"
    purged = 0
    with click.progressbar(length=total, label="Purging", file=sys.stderr) as bar:
        while True:
            started = time.monotonic()
            with write_transaction() as session:
                ids = store.purge_batch(session, filter=selection, created_before=cutoff, limit=PURGE_BATCH)
            purged += len(ids)
            bar.update(len(ids))
            if len(ids) < PURGE_BATCH:
                break
            if pause:
                time.sleep(max(0.01, time.monotonic() - started))
    click.echo(f"Purged {purged} completions created before {when} ({days} days ago).")


def _sqlite_path() -> Path | None:
    url = make_url(current_app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise click.ClickException("The database is in memory: there is nothing on disk to back up.")
    return Path(url.database)


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
def backup_command(file: Path) -> None:
    """Copy the live SQLite store to FILE (readable by its owner only), consistently, blocking no writer."""
    source = _sqlite_path()
    if source is None:
        raise click.ClickException(
            "The store is on PostgreSQL: back it up with pg_dump, e.g. "
            'pg_dump --format=custom --file FILE "$DATABASE_URL" (restore: pg_restore --clean --dbname ...).'
        )
    if file.resolve() == source.resolve():
        raise click.UsageError("FILE is the live database itself: name another file.")
    # Written aside and renamed into place: FILE is never a half-written copy, and is 0600 from the start.
    partial = file.with_name(f".{file.name}.{os.getpid()}.partial")
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        _copy_sqlite(source, partial)
        os.replace(partial, file)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    size = file.stat().st_size
    click.echo(f"Backed up {source} to {file} ({size / 2**20:.1f} MiB, consistent as of its start).")


def _copy_sqlite(source: Path, target: Path) -> None:
    """Copy ``source`` into ``target`` with SQLite's online backup API, in one step.

    One step reads one snapshot: in WAL mode writers go on meanwhile and the copy holds
    exactly what was committed when it began. (Copying in several steps would restart
    whenever another process writes, and might never finish on a busy store.)
    """
    timeout = float(current_app.config["DATABASE_TIMEOUT"])
    with sqlite3.connect(source, timeout=timeout) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
        check = dst.execute("PRAGMA quick_check").fetchone()[0]
        # A standalone file: no -wal beside it to lose when someone copies the backup alone.
        dst.execute("PRAGMA journal_mode = DELETE")
    src.close()
    dst.close()
    if check != "ok":
        raise click.ClickException(f"The copy failed its integrity check ({check}); the live database was not changed.")
