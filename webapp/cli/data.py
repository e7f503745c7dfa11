"""The commands that move completions in and out: ``import`` and ``export`` (JSONL)."""

from __future__ import annotations

import functools
import gc
import json
import multiprocessing
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
# at most that, far below DATABASE_TIMEOUT) and that the batches alive at once (one received, one
# queued, one written by each writer: three on SQLite, four on PostgreSQL; and in the reading
# process one read and one on its way through the pipe) take well under 100 MiB.
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

    ``prepared``: its values, if already computed (``store.prepare_batch``; then ``batch`` is
    read only if the database refuses it). When the database
    refuses the batch, it is written again one completion at a time, each in a savepoint, so
    the good ones land and ``report(label, message)`` names each refused one; ``one_by_one()``
    is entered around that rewrite.
    """
    try:
        with write_transaction() as session:
            if prepared is not None:
                outcome = store.write_prepared(session, prepared=prepared, actor=actor)
            else:
                outcome = store.upsert_completions(session, completions=[completion for _label, completion in batch], actor=actor)
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


def _incoming(record: dict[str, Any]) -> store.IncomingCompletion:
    """Return a cleaned import record (``validation.clean_import_record``) as a completion to upsert."""
    return store.IncomingCompletion(body=record, messages=record["messages"], metadata=record["metadata"])


class _ParsedLines(Sequence[tuple[str, store.IncomingCompletion]]):
    """A batch's numbered input lines, read as completions when asked for (lines already checked)."""

    def __init__(self, lines: list[tuple[str, bytes]]) -> None:
        self._lines = lines

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> tuple[str, store.IncomingCompletion]:  # type: ignore[override]
        label, raw = self._lines[index]
        return label, _incoming(validation.clean_import_record(json.loads(raw)))


@dataclass(frozen=True)
class _Read:
    """What the reading process hands over: a batch of good lines (maybe none) and the input bytes it covers."""

    lines: list[tuple[str, bytes]]  # (line number, the line)
    ids: list[str]
    prepared: store.PreparedBatch | None  # None: a value in it is refused; the writer finds which
    size: int


@dataclass(frozen=True)
class _Refused:
    """A line the reading process refused, and why."""

    label: str
    message: str


@dataclass(frozen=True)
class _Failed:
    """What stopped the reading process."""

    message: str


def _read_batches(file: IO[bytes], dialect: Any) -> Iterator[_Read | _Refused]:
    """Read the JSONL input: check each line, group good ones in batches of distinct ids, prepare each."""
    lines: list[tuple[str, bytes]] = []
    records: list[store.IncomingCompletion] = []
    ids: dict[str, None] = {}
    size = 0

    def batch() -> _Read:
        nonlocal lines, records, ids, size
        prepared = None
        if records:
            try:
                prepared = store.prepare_batch(dialect, records)
            except store.ROW_REFUSALS as exc:
                if not store.refuses_a_row(exc):
                    raise
        read = _Read(lines, list(ids), prepared, size)
        lines, records, ids, size = [], [], {}, 0
        return read

    for number, raw in enumerate(file, start=1):
        size += len(raw)
        if not raw.strip():
            continue
        try:
            record = validation.clean_import_record(json.loads(raw))
        except (ValueError, RecursionError, validation.ValidationError) as exc:
            yield _Refused(str(number), exc.message if isinstance(exc, validation.ValidationError) else f"not valid JSON ({exc})")
            continue
        if record["id"] in ids or len(lines) >= IMPORT_BATCH:
            # A repeated id goes to the next batch, so its two lines apply in file order.
            yield batch()
        ids[record["id"]] = None
        lines.append((str(number), raw))
        records.append(_incoming(record))
    yield batch()


def _reading_process(file: IO[bytes], dialect: Any, send: Any, receive: Any) -> None:
    """The reading process: send what :func:`_read_batches` reads, then None; or what stopped it."""
    # Forked with both ends of the pipe: with the receiving end closed here, the importing
    # process holds the only one, and a send fails (BrokenPipeError) once that process is gone.
    receive.close()
    try:
        for item in _read_batches(file, dialect):
            send.send(item)
        send.send(None)
    except (BrokenPipeError, KeyboardInterrupt):  # the import stopped: so does its reader
        pass
    except BaseException as exc:  # an unreadable input, say: the importing process says so
        try:
            send.send(_Failed(f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass


class ReadingProcess:
    """Reads, checks and prepares an import's batches in a process of its own.

    The JSON parsing, the checks and the column values take about as long as the database's
    work on them; in a thread of the writing process they held the GIL that the writer needs
    between its statements, and each waited for the other (measured on SQLite: the writer
    ran about a third slower beside a reading thread). A forked process shares nothing but the
    pipe: each batch comes over as its lines and driver rows (a few microseconds a line to
    pickle and unpickle). A writer that stops (or is killed) closes the pipe, which stops the
    reader too.
    """

    def __init__(self, file: IO[bytes], dialect: Any) -> None:
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_reading_process, args=(file, dialect, send, self._receive), name="import-reader", daemon=True)
        self._process.start()
        send.close()  # the reader holds the only sending end: when it ends, so does the pipe

    def __iter__(self) -> Iterator[_Read | _Refused]:
        while True:
            try:
                item = self._receive.recv()
            except EOFError:
                raise click.ClickException("The process reading the input stopped unexpectedly: run the import again (it is safe to repeat).") from None
            if item is None:
                return
            if isinstance(item, _Failed):
                raise click.ClickException(f"Could not read the input ({item.message}): check the file and run the import again (it is safe to repeat).")
            yield item

    def close(self) -> None:
        """Stop the reader if it still runs, and wait for it."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._receive.close()


@dataclass
class _Queued:
    """A batch for the writer threads: its lines, their prepared values, what it must wait for."""

    batch: Sequence[tuple[str, store.IncomingCompletion]]
    prepared: store.PreparedBatch | None
    after: list[threading.Event]  # batches queued earlier holding one of its ids: it is written after them
    done: threading.Event


class BatchWriter:
    """Writes batches with :func:`write_completions` on threads of their own (``writers`` of them).

    The reading process (:class:`ReadingProcess`) parses, checks and prepares the next batch
    meanwhile, so both CPU cores work. At most one batch waits besides those being written, so memory
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

    def put(self, batch: Sequence[tuple[str, store.IncomingCompletion]], prepared: store.PreparedBatch | None, ids: Sequence[str]) -> None:
        """Queue ``batch`` (its completions' ``ids``; waits while another one waits); raise what stopped the writers, if anything did."""
        self.raise_failure()
        mine = set(ids)
        self._pending = [(held, done) for held, done in self._pending if not done.is_set()]
        item = _Queued(batch, prepared, after=[done for held, done in self._pending if not mine.isdisjoint(held)], done=threading.Event())
        self._pending.append((mine, item.done))
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


@contextmanager
def _bulk_load() -> Iterator[None]:
    """Tune the interpreter for a bulk load with a writer thread; everything is as it was afterwards.

    - The cycle collector runs less often (it took ~15% of an import's CPU): a batch's objects
      are freed by reference counting once written, yet the collector kept walking them, and
      the app's long-lived objects, every 700 allocations. Frozen, the objects that exist
      before the load are walked no more; the youngest generation is collected every 10,000
      allocations. It still runs, so memory stays bounded.
    - The GIL changes hands every 0.5 ms instead of 5: a writer thread waits for the GIL
      after each statement while another thread computes (PostgreSQL's two writers, the
      thread taking batches from the reading process).
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

    # Unsized (stdin): a bar with no end that counts lines, given an iterable of unknown length.
    bar_args: dict[str, Any] = {"length": total} if total is not None else {"iterable": (n for n in ()), "show_pos": True}
    reader: ReadingProcess | None = None
    writer: BatchWriter | None = None
    try:
        with _bulk_load(), click.progressbar(label="Importing", file=sys.stderr, **bar_args) as bar:
            # Forked before the writer threads start, and after the collector is tuned (it inherits that).
            reader = ReadingProcess(file, db.engine.dialect)
            writer = BatchWriter(actor="import", report=report, writers=IMPORT_WRITERS.get(db.engine.dialect.name, 1))
            for item in reader:
                if isinstance(item, _Refused):
                    tally.refused += 1
                    report(item.label, item.message)
                    continue
                if item.lines:
                    writer.put(_ParsedLines(item.lines), item.prepared, item.ids)
                bar.update(item.size if total is not None else len(item.lines))
            writer.close()  # the bar ends when the last batch is written
    finally:
        # Also when reading fails: what was queued is whole lines, written as usual.
        if writer is not None:
            writer.close()
        if reader is not None:
            reader.close()
    assert writer is not None
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
