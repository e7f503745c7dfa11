"""The commands that keep the store's data over time: ``sync`` (mirror another store), ``purge`` (retention), ``backup``."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from flask import current_app
from openai import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    OpenAI,
    PermissionDeniedError,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from .. import store, validation
from ..extensions import db, write_transaction
from .data import Tally, clean_filter_options, filter_options, write_completions

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
    if dry_run:
        click.echo(f"Would purge {total} completions created before {when} ({days} days ago).")
        return
    if not yes:
        _confirm_or_refuse(f"Purge {total} completions created before {when} ({days} days ago)? This cannot be undone.")
    # On SQLite a writer waiting for the lock sleeps and retries; pausing as long as a batch
    # took leaves it room to get in instead of meeting the purge's next batch every time.
    pause = db.engine.dialect.name == "sqlite"

    def in_batches(step: Callable[[Session], int], progress: Callable[[int], Any]) -> int:
        done = 0
        while True:
            started = time.monotonic()
            with write_transaction() as session:
                count = step(session)
            done += count
            progress(count)
            if count < PURGE_BATCH:
                return done
            if pause:
                time.sleep(max(0.01, time.monotonic() - started))

    with click.progressbar(length=total, label="Purging", file=sys.stderr) as bar:
        purged = in_batches(
            lambda session: len(store.purge_batch(session, filter=selection, created_before=cutoff, limit=PURGE_BATCH)), bar.update
        )
    click.echo(f"Purged {purged} completions created before {when} ({days} days ago).")
    if not selection.metadata:
        # Completions deleted earlier left their history of metadata values: that goes too.
        cleared = in_batches(
            lambda session: store.purge_deleted_history_batch(session, model=selection.model, created_before=cutoff, limit=PURGE_BATCH),
            lambda _count: None,
        )
        if cleared:
            click.echo(f"Removed the history of {cleared} completions deleted earlier.")


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


# Completions asked for per list page (the API's maximum), and messages calls at once.
SYNC_PAGE = 100
MESSAGE_WORKERS = 8
# The SDK retries 408/409/429/5xx and connection errors with backoff (and honours Retry-After).
SYNC_RETRIES = 6


@dataclass
class SyncRun:
    """The client of one sync run, and what it has seen so far."""

    client: OpenAI
    base_url: str
    selection: validation.Filter
    tally: Tally = field(default_factory=Tally)
    kept_deleted: int = 0

    def list_page(self, after: str | None) -> dict[str, Any]:
        """Return one page of the source's list (its JSON, exactly as sent), oldest first."""
        query: dict[str, Any] = {"limit": SYNC_PAGE, "order": "asc"}
        if after is not None:
            query["after"] = after
        if self.selection.model is not None:
            query["model"] = self.selection.model
        if self.selection.metadata:
            query["metadata"] = dict(self.selection.metadata)
        return self.client.chat.completions.with_raw_response.list(**query).http_response.json()

    def messages(self, completion_id: str) -> list[dict[str, Any]] | None:
        """Return the input messages of ``completion_id`` at the source, every page; None if it vanished meanwhile."""
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": 100, "order": "asc"}
        try:
            while True:
                page = self.client.chat.completions.messages.with_raw_response.list(completion_id, **query).http_response.json()
                items.extend(page["data"])
                if not page.get("has_more") or not page["data"]:
                    return [store.input_message(item) for item in items]
                query["after"] = page["data"][-1]["id"]
        except NotFoundError:
            return None


def _clean_source_object(obj: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Return a source's completion object and its metadata, by the rules of this store; raise ValidationError."""
    cleaned = validation.clean_completion(obj)
    return cleaned, validation.clean_metadata(cleaned.get("metadata"))


def _mirror_page(run: SyncRun, objects: list[Any], pool: ThreadPoolExecutor, report: Callable[[str, str], None]) -> None:
    """Store one list page: new completions with their messages (fetched concurrently), known ones
    with the messages already here (they never change), tombstones left as they are."""
    cleaned: list[tuple[dict[str, Any], dict[str, str]]] = []
    for obj in objects:
        try:
            cleaned.append(_clean_source_object(obj))
        except validation.ValidationError as exc:
            label = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else "?"
            run.tally.refused += 1
            report(label, exc.message)
    here = store.stored_messages(db.session, ids=[body["id"] for body, _metadata in cleaned])
    db.session.rollback()
    wanted = [body["id"] for body, _metadata in cleaned if body["id"] not in here]
    fetched = dict(zip(wanted, pool.map(run.messages, wanted)))
    batch: list[tuple[str, store.IncomingCompletion]] = []
    for body, metadata in cleaned:
        messages = here[body["id"]] if body["id"] in here else fetched[body["id"]]
        if body["id"] in here and messages is None:
            # Deleted or purged here: a mirror does not undo this store's own deletions.
            run.kept_deleted += 1
            continue
        if messages is None:
            report(body["id"], "deleted at the source while it was being read; the next sync tries again")
            continue
        batch.append((body["id"], store.IncomingCompletion(body=body, messages=messages, metadata=metadata)))
    write_completions(batch, actor="sync", tally=run.tally, report=report)


def _source_error(exc: APIError, base_url: str) -> click.ClickException:
    """Return the message, for a person, of a source that cannot be read."""
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return click.ClickException(f"{base_url} refused the API key ({exc.status_code}): check --api-key.")
    if isinstance(exc, APIConnectionError):
        return click.ClickException(f"Could not reach {base_url} ({exc.__cause__ or exc}): check the URL and the network.")
    if isinstance(exc, NotFoundError):
        return click.ClickException(
            f"{base_url}/chat/completions does not exist (404): BASE_URL is the API root, e.g. https://api.openai.com/v1."
        )
    status = getattr(exc, "status_code", None)
    return click.ClickException(f"{base_url} answered {status or 'an error'} ({exc.message}); run sync again to resume.")


@click.command("sync")
@click.option("--from", "base_url", required=True, metavar="BASE_URL", help="The source's API root, e.g. https://api.openai.com/v1.")
@click.option("--api-key", help="The source's key. Default: the OPENAI_API_KEY environment variable.")
@click.option("--full", is_flag=True, help="Walk everything again: brings changed metadata (messages are not fetched again).")
@click.option("--model", help="Only completions of this model.")
@click.option("--metadata", "metadata_filters", multiple=True, metavar="KEY=VALUE", help="Repeatable; all must match.")
def sync_command(base_url: str, api_key: str | None, full: bool, model: str | None, metadata_filters: tuple[str, ...]) -> None:
    """Mirror another OpenAI-compatible store (OpenAI's, or another Completion Store) into this one.

    Remembers where it stopped per source (URL, key and filter), so a re-run fetches only
    what is new; it is safe to kill and run again. A completion the source deleted stays here.
    """
    selection = clean_filter_options(model=model, metadata=metadata_filters)
    base_url = base_url.rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise click.BadParameter("expected an http:// or https:// URL, e.g. https://api.openai.com/v1.", param_hint="--from")
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        raise click.UsageError("The source needs a key: --api-key KEY, or set OPENAI_API_KEY.")
    run = SyncRun(client=OpenAI(base_url=base_url, api_key=api_key, max_retries=SYNC_RETRIES, timeout=60.0), base_url=base_url, selection=selection)
    with write_transaction() as session:
        source = store.get_sync_source(session, base_url=base_url, key_fingerprint=store.hash_secret(api_key)[:16], selection=selection)
        source_id, last_id, full_after = source.id, source.last_id, source.full_after
    cursor = full_after if full else last_id
    if full and full_after is not None:
        click.echo(f"Resuming the unfinished full walk after {full_after}.", err=True)

    def report(label: str, message: str) -> None:
        click.echo(f"completion {label}: {message}", err=True)

    newest = last_id
    with ThreadPoolExecutor(MESSAGE_WORKERS) as pool, click.progressbar(
        iterable=(n for n in ()), label=f"Syncing from {base_url}", file=sys.stderr, show_pos=True
    ) as bar:
        while True:
            try:
                page = run.list_page(cursor)
            except (BadRequestError, NotFoundError) as exc:
                if cursor is None:
                    raise _source_error(exc, base_url) from None
                # OpenAI forgets completions after 30 days, and with them the cursor that named one.
                click.echo(f"The source no longer knows {cursor} (expired or deleted there): walking its list from the start.", err=True)
                cursor = None
                continue
            except APIError as exc:
                raise _source_error(exc, base_url) from None
            objects = page.get("data") or []
            before = run.tally.changed
            try:
                _mirror_page(run, objects, pool, report)
            except APIError as exc:
                raise _source_error(exc, base_url) from None
            bar.update(len(objects))
            if objects:
                cursor = objects[-1]["id"] if isinstance(objects[-1], dict) else cursor
                newest = cursor
                position = {"full_after": cursor} if full else {"last_id": cursor}
                with write_transaction() as session:
                    store.save_sync_position(session, source_id=source_id, mirrored=run.tally.changed - before, **position)
            if not objects or not page.get("has_more"):
                break
    if full:
        with write_transaction() as session:
            store.save_sync_position(session, source_id=source_id, full_after=None, last_id=newest)
    tally = run.tally
    click.echo(
        f"Synced {tally.changed + tally.unchanged} completions from {base_url} ({tally.changed} new or changed, "
        f"{tally.unchanged} unchanged); {run.kept_deleted} deleted here and left so; {tally.refused} refused."
    )
    if tally.refused:
        raise click.ClickException("Some completions were not stored: see the lines above.")
