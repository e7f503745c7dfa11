"""The commands that move completions in and out: ``import`` and ``export`` (JSONL)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import click

from .. import store, validation
from ..extensions import db, write_transaction
from ..formats import FORMATS, export_lines

# Lines per transaction: big enough that a batch costs a few statements per thousand lines,
# small enough that the write lock is held for a few hundredths of a second at a time.
IMPORT_BATCH = 1000


@dataclass
class Tally:
    """What a run of batches did: completions written or changed, found unchanged, refused."""

    changed: int = 0
    unchanged: int = 0
    refused: int = 0


def _refusal(exc: BaseException) -> str:
    """Return the first line of what the database said, without the SQL (no bound values are in it)."""
    cause = getattr(exc, "orig", None) or exc
    return f"the database refused it ({type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''})"


def write_completions(
    batch: Sequence[tuple[str, store.IncomingCompletion]], *, actor: str, tally: Tally, report: Callable[[str, str], None]
) -> None:
    """Upsert ``batch`` (labelled completions with distinct ids) in one transaction, counting into ``tally``.

    When the database refuses the batch, it is written again one completion at a time, each in
    a savepoint, so the good ones land and ``report(label, message)`` names each refused one.
    """
    completions = [completion for _label, completion in batch]
    try:
        with write_transaction() as session:
            outcome = store.upsert_completions(session, completions=completions, actor=actor)
    except store.ROW_REFUSALS:
        outcome = None
    if outcome is not None:
        tally.changed += len(outcome.changed)
        tally.unchanged += len(outcome.unchanged)
        return
    with write_transaction() as session:
        for label, completion in batch:
            try:
                with session.begin_nested():
                    one = store.upsert_completions(session, completions=[completion], actor=actor)
            except store.ROW_REFUSALS as exc:
                tally.refused += 1
                report(label, _refusal(exc))
                continue
            tally.changed += len(one.changed)
            tally.unchanged += len(one.unchanged)


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
    with click.progressbar(label="Importing", file=sys.stderr, **bar_args) as bar:

        def flush() -> None:
            nonlocal pending_bytes
            write_completions(batch, actor="import", tally=tally, report=report)
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
