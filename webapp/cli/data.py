"""The commands that move completions in and out: ``import`` and ``export`` (JSONL)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import IO

import click

from .. import store, validation
from ..extensions import db
from ..formats import FORMATS, export_lines

IMPORT_BATCH = 200


def _lines_with_progress(stream: IO[bytes], total: int | None) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw line) while drawing a progress bar on stderr (bytes read, or lines when unsized)."""
    if total is None:
        with click.progressbar(enumerate(stream, start=1), label="Importing", file=sys.stderr, show_pos=True) as lines:
            yield from lines
        return
    with click.progressbar(length=total, label="Importing", file=sys.stderr) as bar:
        for number, raw in enumerate(stream, start=1):
            yield number, raw
            bar.update(len(raw))


@click.command("import")
@click.argument("file", type=click.File("rb"))
def import_command(file: IO[bytes]) -> None:
    """Import completions from JSONL in the export format (``-`` for stdin); upserts by id."""
    try:
        total: int | None = os.fstat(file.fileno()).st_size if file.seekable() else None
    except (OSError, ValueError):
        total = None
    counts = {"new_or_changed": 0, "unchanged": 0}
    bad: list[str] = []
    session = db.session
    pending = 0
    for number, raw in _lines_with_progress(file, total):
        if not raw.strip():
            continue
        try:
            record = validation.clean_import_record(json.loads(raw))
        except (ValueError, RecursionError, validation.ValidationError) as exc:
            message = exc.message if isinstance(exc, validation.ValidationError) else f"not valid JSON ({exc})"
            bad.append(f"line {number}: {message}")
            continue
        try:
            with session.begin_nested():
                _row, changed = store.save_completion(
                    session,
                    body=record,
                    messages=record["messages"],
                    metadata=record["metadata"],
                    actor="import",
                )
        except Exception as exc:  # a line the database refuses is reported like a malformed one
            bad.append(f"line {number}: the database refused it ({type(exc).__name__}: {exc})")
            continue
        counts["new_or_changed" if changed else "unchanged"] += 1
        pending += 1
        if pending >= IMPORT_BATCH:
            session.commit()
            pending = 0
    session.commit()
    for line in bad:
        click.echo(line, err=True)
    click.echo(
        f"Imported {counts['new_or_changed'] + counts['unchanged']} completions "
        f"({counts['new_or_changed']} new or changed, {counts['unchanged']} unchanged); {len(bad)} bad lines skipped."
    )
    if bad:
        raise click.ClickException("Some lines were not imported: fix the lines named above and run the import again (it is safe to repeat).")


def clean_filter_options(*, model: str | None, metadata: tuple[str, ...]) -> validation.Filter:
    """Return the filter of ``--model`` and ``--metadata KEY=VALUE`` options, by the API's rules."""
    try:
        pairs = [validation.parse_metadata_filter(text) for text in metadata]
        return validation.clean_filters(model=model, metadata=pairs)
    except validation.ValidationError as exc:
        raise click.BadParameter(exc.message, param_hint="--model" if exc.param == "model" else "--metadata") from None


@click.command("export")
@click.option("--model", help="Only completions of this model.")
@click.option("--metadata", "metadata_filters", multiple=True, metavar="KEY=VALUE", help="Repeatable; all must match.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="store", show_default=True)
@click.option("-o", "--output", type=click.File("w", encoding="utf-8"), default="-", help="Default: stdout.")
def export_command(model: str | None, metadata_filters: tuple[str, ...], fmt: str, output: IO[str]) -> None:
    """Stream completions as JSONL: ``store`` round-trips through import, ``chat`` is for fine-tuning."""
    selection = clean_filter_options(model=model, metadata=metadata_filters)
    lines = export_lines(db.session, filter=selection, fmt=fmt)  # type: ignore[arg-type]
    if output.name == "<stdout>":
        # stdout is the data: no progress bar to mix into it.
        for line in lines:
            output.write(line)
        return
    count = store.count_completions(db.session, filter=selection)
    with click.progressbar(lines, length=count, label="Exporting", file=sys.stderr) as bar:
        for line in bar:
            output.write(line)
    click.echo(f"Exported {count} completions to {output.name}.", err=True)
