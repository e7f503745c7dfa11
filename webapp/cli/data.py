"""The commands that move completions in and out: ``import`` and ``export`` (JSONL)."""

from __future__ import annotations

import functools
import gc
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import IO, Any

import click
from flask import current_app
from sqlalchemy.exc import OperationalError

from .. import store, validation
from ..extensions import db, write_transaction
from ..formats import FORMATS, export_lines

# Lines per transaction: big enough that a batch costs a few statements per thousand lines
# (and SQLite's search index gets few, large segments: 2,500 imported ~10% faster than 1,000),
# small enough that the write lock is held about a tenth of a second at a time (API writers wait
# at most that, far below DATABASE_TIMEOUT) and that the batches alive at once (one read, one
# queued, one written by each writer: three on SQLite, four on PostgreSQL) take well under 100 MiB.
IMPORT_BATCH = 2500
# Batches written at once, each by a thread on a connection of its own. PostgreSQL does a
# batch's work (COPY: indexes, the search index's trigrams, foreign keys) in the connection's
# server process, one core per connection; with two, one batch's server work overlaps the
# other's round trips and Python work instead of waiting for them. SQLite has one writer at a
# time: there a second thread would only wait for the lock.
IMPORT_WRITERS = {"postgresql": 2}
DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE
# A batch that lost a deadlock to another writer (batches updating rows that triggers count in
# a different order) is written again, a few times at most.
DEADLOCK_RETRIES = 5


@dataclass
class Tally:
    """What a run of batches did: completions written or changed, found unchanged, refused."""

    changed: int = 0
    unchanged: int = 0
    refused: int = 0

    def add(self, other: Tally) -> None:
        """Count ``other``'s numbers into this one."""
        self.changed += other.changed
        self.unchanged += other.unchanged
        self.refused += other.refused


def _refusal(exc: BaseException) -> str:
    """Return the first line of what the database said, without the SQL (no bound values are in it)."""
    cause = getattr(exc, "orig", None) or exc
    return f"the database refused it ({type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''})"


def write_completions(
    batch: Sequence[tuple[str, store.IncomingCompletion]],
    *,
    actor: str,
    tally: Tally,
    report: Callable[[str, str], None],
    prepared: store.PreparedBatch | None = None,
    one_by_one: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> None:
    """Upsert ``batch`` (labelled completions with distinct ids) in one transaction, counting into ``tally``.

    ``prepared``: its values, if already computed (``store.prepare_batch``). When the database
    refuses the batch, it is written again one completion at a time, each in a savepoint, so
    the good ones land and ``report(label, message)`` names each refused one; ``one_by_one()``
    is entered around that rewrite.
    """
    completions = [completion for _label, completion in batch]
    try:
        with write_transaction() as session:
            outcome = store.upsert_completions(session, completions=completions, actor=actor, prepared=prepared)
    except store.ROW_REFUSALS as exc:
        if not store.refuses_a_row(exc):
            raise
        outcome = None
    if outcome is not None:
        tally.changed += len(outcome.changed)
        tally.unchanged += len(outcome.unchanged)
        return
    with one_by_one(), write_transaction() as session:
        for label, completion in batch:
            try:
                with session.begin_nested():
                    one = store.upsert_completions(session, completions=[completion], actor=actor)
            except store.ROW_REFUSALS as exc:
                if not store.refuses_a_row(exc):
                    raise
                tally.refused += 1
                report(label, _refusal(exc))
                continue
            tally.changed += len(one.changed)
            tally.unchanged += len(one.unchanged)


class _Gate:
    """Lets the writer threads write batches side by side, and one of them write alone.

    A batch written line by line holds the rows the others count into (the rollup, the pair
    counts) from its first line to its commit, seconds for a large batch: another writer
    would wait for them in the database, up to its statement timeout. It waits here instead.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._sharing = 0
        self._alone = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the gate with the other writers, once no writer holds it alone."""
        with self._changed:
            self._changed.wait_for(lambda: not self._alone)
            self._sharing += 1
        try:
            yield
        finally:
            with self._changed:
                self._sharing -= 1
                self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Within :meth:`shared` (and outside any transaction): hold the gate alone, once the others are done."""
        with self._changed:
            self._sharing -= 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._alone and self._sharing == 0)
            self._alone = True
        try:
            yield
        finally:
            with self._changed:
                self._alone = False
                self._sharing += 1
                self._changed.notify_all()


@dataclass
class _Queued:
    """A batch for the writer threads: its lines, their prepared values, what it must wait for."""

    batch: list[tuple[str, store.IncomingCompletion]]
    prepared: store.PreparedBatch | None
    after: list[threading.Event]  # batches queued earlier holding one of its ids: it is written after them
    done: threading.Event


class BatchWriter:
    """Writes batches with :func:`write_completions` on threads of their own (``writers`` of them).

    The reading thread parses, checks and prepares the next batch meanwhile: the database's
    work (SQLite's, in this process, or PostgreSQL's, over the socket) runs outside the GIL,
    so both CPU cores work. At most one batch waits besides those being written, so memory
    stays bounded. Each batch is still one transaction: a kill leaves whole batches, and a
    re-run upserts the rest. Batches sharing an id are written one after the other, in the
    order given, so a repeated id ends as its last line; others may commit in any order.
    """

    def __init__(self, *, actor: str, report: Callable[[str, str], None], writers: int = 1) -> None:
        self.tally = Tally()  # the writers' counts, added up by ``close``
        self._actor, self._report = actor, report
        self._queue: queue.Queue[_Queued | None] = queue.Queue(1)
        self._failure: BaseException | None = None
        self._pending: list[tuple[set[str], threading.Event]] = []  # ids and end of each batch queued and not yet written
        self._gate = _Gate()
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        self._tallies = [Tally() for _ in range(writers)]  # one per thread: only it counts into its own
        self._threads = [
            threading.Thread(target=self._run, args=(app, tally), name=f"import-writer-{n}") for n, tally in enumerate(self._tallies)
        ]
        for thread in self._threads:
            thread.start()

    def put(self, batch: list[tuple[str, store.IncomingCompletion]], prepared: store.PreparedBatch | None) -> None:
        """Queue ``batch`` (waits while another one waits); raise what stopped the writers, if anything did."""
        self.raise_failure()
        ids = {completion.body["id"] for _label, completion in batch}
        self._pending = [(held, done) for held, done in self._pending if not done.is_set()]
        item = _Queued(batch, prepared, after=[done for held, done in self._pending if not ids.isdisjoint(held)], done=threading.Event())
        self._pending.append((ids, item.done))
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every queued batch is written (or skipped, once a writer has stopped); again: nothing."""
        alive = [thread for thread in self._threads if thread.is_alive()]
        for _thread in alive:
            self._queue.put(None)
        for thread in alive:
            thread.join()
        if alive:
            for tally in self._tallies:
                self.tally.add(tally)

    def raise_failure(self) -> None:
        """Raise what stopped the writers, if anything did."""
        if self._failure is not None:
            raise self._failure

    def _run(self, app: Any, tally: Tally) -> None:
        with app.app_context():
            while (item := self._queue.get()) is not None:
                try:
                    for earlier in item.after:
                        earlier.wait()
                    if self._failure is None:  # else stopped: the reader learns it at its next put; take what it queued meanwhile
                        self._write(item, tally)
                except BaseException as exc:  # the database went away, say: the reader raises it
                    self._failure = exc
                finally:
                    item.done.set()

    def _write(self, item: _Queued, tally: Tally) -> None:
        for attempt in range(DEADLOCK_RETRIES + 1):
            # Counted and reported once the batch is in: a batch written again counts once.
            counted, refused = Tally(), list[tuple[str, str]]()
            try:
                with self._gate.shared():
                    write_completions(
                        item.batch,
                        actor=self._actor,
                        tally=counted,
                        report=lambda *line: refused.append(line),
                        prepared=item.prepared,
                        one_by_one=self._gate.alone,
                    )
            except OperationalError as exc:
                if attempt == DEADLOCK_RETRIES or getattr(exc.orig, "sqlstate", None) != DEADLOCK_DETECTED:
                    raise
                continue
            tally.add(counted)
            for label, message in refused:
                self._report(label, message)
            return


def _prepared(batch: Sequence[tuple[str, store.IncomingCompletion]]) -> store.PreparedBatch | None:
    """Return the batch's values, computed before its transaction; None when a value is refused (the writer then finds which)."""
    try:
        return store.prepare_batch(db.engine.dialect, [completion for _label, completion in batch])
    except store.ROW_REFUSALS as exc:
        if not store.refuses_a_row(exc):
            raise
        return None


@contextmanager
def _bulk_load() -> Iterator[None]:
    """Tune the interpreter for a bulk load with a writer thread; everything is as it was afterwards.

    - The cycle collector runs less often (it took ~15% of an import's CPU): a batch's objects
      are freed by reference counting once written, yet the collector kept walking them, and
      the app's long-lived objects, every 700 allocations. Frozen, the objects that exist
      before the load are walked no more; the youngest generation is collected every 10,000
      allocations. It still runs, so memory stays bounded.
    - The GIL changes hands every 0.5 ms instead of 5: the writer thread waits for the GIL
      after each statement while the reader computes, and 5 ms a statement serialised the
      two threads again.
    """
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.freeze()
    gc.set_threshold(10_000, *thresholds[1:])
    sys.setswitchinterval(0.0005)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _input_size(file: IO[bytes]) -> int | None:
    try:
        return os.fstat(file.fileno()).st_size if file.seekable() else None
    except (OSError, ValueError):
        return None


@click.command("import")
@click.argument("file", type=click.File("rb"))
def import_command(file: IO[bytes]) -> None:
    """Import completions from JSONL in the export format (``-`` for stdin); upserts by id."""
    total = _input_size(file)
    tally = Tally()

    def report(label: str, message: str) -> None:
        # At once, not gathered: a file of a million bad lines must not fill the memory.
        click.echo(f"line {label}: {message}", err=True)

    batch: list[tuple[str, store.IncomingCompletion]] = []
    ids: set[str] = set()
    pending_bytes = 0
    # Unsized (stdin): a bar with no end that counts lines, given an iterable of unknown length.
    bar_args: dict[str, Any] = {"length": total} if total is not None else {"iterable": (n for n in ()), "show_pos": True}
    writer = BatchWriter(actor="import", report=report, writers=IMPORT_WRITERS.get(db.engine.dialect.name, 1))
    try:
        with _bulk_load(), click.progressbar(label="Importing", file=sys.stderr, **bar_args) as bar:

            def flush() -> None:
                nonlocal pending_bytes
                if batch:
                    writer.put(batch.copy(), _prepared(batch))
                bar.update(pending_bytes if total is not None else len(batch))
                batch.clear()
                ids.clear()
                pending_bytes = 0

            for number, raw in enumerate(file, start=1):
                pending_bytes += len(raw)
                if not raw.strip():
                    continue
                try:
                    record = validation.clean_import_record(json.loads(raw))
                except (ValueError, RecursionError, validation.ValidationError) as exc:
                    message = exc.message if isinstance(exc, validation.ValidationError) else f"not valid JSON ({exc})"
                    tally.refused += 1
                    report(str(number), message)
                    continue
                if record["id"] in ids or len(batch) >= IMPORT_BATCH:
                    # A repeated id goes to the next batch, so its two lines apply in file order.
                    flush()
                ids.add(record["id"])
                batch.append(
                    (str(number), store.IncomingCompletion(body=record, messages=record["messages"], metadata=record["metadata"]))
                )
            flush()
            writer.close()  # the bar ends when the last batch is written
    finally:
        # Also when reading fails: what was queued is whole lines, written as usual.
        writer.close()
    writer.raise_failure()
    tally.add(writer.tally)
    click.echo(
        f"Imported {tally.changed + tally.unchanged} completions "
        f"({tally.changed} new or changed, {tally.unchanged} unchanged); {tally.refused} bad lines skipped."
    )
    if tally.refused:
        raise click.ClickException("Some lines were not imported: fix the lines named above and run the import again (it is safe to repeat).")


def clean_filter_options(
    *,
    model: str | None,
    metadata: tuple[str, ...],
    search: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
) -> validation.Filter:
    """Return the filter of ``--model``, ``--metadata KEY=VALUE``, ``--search`` and the created range, by the API's rules.

    The dates take unix seconds or ``YYYY-MM-DD`` (00:00 UTC). A bad value is reported
    against its option.
    """
    try:
        pairs = [validation.parse_metadata_filter(text) for text in metadata]
        return validation.clean_filters(
            model=model, metadata=pairs, search=search, created_after=created_after, created_before=created_before, days=True
        )
    except validation.ValidationError as exc:
        option = "--metadata" if (exc.param or "metadata").startswith("metadata") else "--" + (exc.param or "").replace("_", "-")
        raise click.BadParameter(exc.message, param_hint=option) from None


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the filter options (the API's filter, by its rules) as one ``selection`` argument."""

    @click.option("--model", help="Only completions of this model.")
    @click.option("--metadata", "metadata_filters", multiple=True, metavar="KEY=VALUE", help="Repeatable; all must match.")
    @click.option("--search", help="Words that must all occur in the text (any case, any language).")
    @click.option("--created-after", metavar="WHEN", help="Created at or after: unix seconds or YYYY-MM-DD (00:00 UTC).")
    @click.option("--created-before", metavar="WHEN", help="Created strictly before: unix seconds or YYYY-MM-DD.")
    @functools.wraps(command)
    def with_selection(
        *args: Any,
        model: str | None,
        metadata_filters: tuple[str, ...],
        search: str | None,
        created_after: str | None,
        created_before: str | None,
        **kwargs: Any,
    ) -> Any:
        selection = clean_filter_options(
            model=model, metadata=metadata_filters, search=search, created_after=created_after, created_before=created_before
        )
        return command(*args, selection=selection, **kwargs)

    return with_selection


@click.command("export")
@filter_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="store", show_default=True)
# Not lazy: the file is created even when nothing matches, so a script finds it (empty) and not stale.
@click.option("-o", "--output", type=click.File("w", encoding="utf-8", lazy=False), default="-", help="Default: stdout.")
@click.option(
    "--skip-truncated", is_flag=True, help="Leave out completions whose reply was cut off by the token limit (finish_reason: length)."
)
def export_command(selection: validation.Filter, fmt: str, output: IO[str], skip_truncated: bool) -> None:
    """Stream completions as JSONL: ``store`` round-trips through import, ``chat`` is for fine-tuning."""
    lines = export_lines(db.session, filter=selection, fmt=fmt, skip_truncated=skip_truncated)  # type: ignore[arg-type]
    if output.name == "<stdout>":
        # stdout is the data: no progress bar to mix into it.
        for line in lines:
            output.write(line)
        return
    count = store.count_completions(db.session, filter=selection)
    written = 0
    with click.progressbar(lines, length=count, label="Exporting", file=sys.stderr) as bar:
        for line in bar:
            output.write(line)
            written += 1
    click.echo(f"Exported {written} completions to {output.name}.", err=True)
