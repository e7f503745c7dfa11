"""``/overview``: totals and charts of completions and tokens, per hour, day or week and model,
for the same filter as the list. Reads ``store.usage_series``; draws with ``charts``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from flask import render_template, request, url_for
from werkzeug.datastructures import MultiDict

from .. import store
from ..charts import Column, Series, format_count, nice_ceiling, stacked_bars
from ..extensions import db
from ..store.overview import DAY, HOUR, Usage, UsageSeries, ceil_to, floor_to
from ..validation import MAX_METADATA_PAIRS, ValidationError
from . import bp
from .views import Filters, read_filters

WEEK = 7 * DAY
# More days than this are drawn per week (Monday to Sunday): a bar per day would be thinner than a pixel.
MAX_DAYS = 400
# The most used models get a colour each; the rest share one bar segment.
MAX_SERIES = 6
OTHER_MODELS = "Other models"
# The quick ranges: (label, length in hours or days, bucket width).
QUICK_RANGES = (("Last 24 hours", 24, HOUR), ("Last 7 days", 7, DAY), ("Last 30 days", 30, DAY), ("Last 90 days", 90, DAY))
DATE_PARAMS = ("created_after", "created_before")


def clean_created_bound(value: str, param: str) -> int:
    """Return a ``created_after``/``created_before`` bound as unix seconds: a whole number of
    seconds, or ``YYYY-MM-DD`` meaning 00:00 UTC of that day. Raises ValidationError otherwise."""
    text = value.strip()
    if text.lstrip("-").isdigit() and text.isascii() and len(text) <= 12:
        return int(text)
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValidationError(
            f"Invalid '{param}': expected a date (YYYY-MM-DD) or a whole number of seconds since 1970, but got '{value}'.",
            param,
            "invalid_type",
        ) from None
    return int(day.timestamp())


@dataclass(frozen=True)
class DateRange:
    """The date filter as typed (for the URL and the form) and as cleaned (unix seconds)."""

    texts: dict[str, str]
    after: int | None = None
    before: int | None = None
    errors: dict[str, str] | None = None

    def args(self) -> dict[str, str]:
        """Return the URL arguments that carry this range."""
        return {name: text for name, text in self.texts.items() if text}


def read_dates(values: MultiDict[str, str]) -> DateRange:
    """Return the ``created_after``/``created_before`` of a query, cleaned, with an error per bad one."""
    texts = {name: (values.get(name) or "").strip() for name in DATE_PARAMS}
    bounds: dict[str, int | None] = {}
    errors: dict[str, str] = {}
    for name, text in texts.items():
        try:
            bounds[name] = clean_created_bound(text, name) if text else None
        except ValidationError as exc:
            errors[name] = exc.message
    if errors:
        return DateRange(texts, errors=errors)
    return DateRange(texts, after=bounds["created_after"], before=bounds["created_before"])


def day_text(moment: int) -> str:
    """Return the UTC date of unix time ``moment`` as ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d")


def bucket_label(start: int, span: int) -> str:
    """Return what a bucket is called in titles and tables: ``Mon 5 Jan 2026``, ``5 Jan 2026 14:00 UTC``, ``Week of ...``."""
    moment = datetime.fromtimestamp(start, timezone.utc)
    day = f"{moment:%a} {moment.day} {moment:%b %Y}"
    if span == HOUR:
        return f"{moment.day} {moment:%b %Y %H}:00 UTC"
    return f"Week of {day}" if span == WEEK else day


def bucket_bounds(start: int, span: int) -> dict[str, str]:
    """Return the list's URL arguments for one bucket: dates for days and weeks, seconds for hours."""
    end = start + span
    if span == HOUR:
        return {"created_after": str(start), "created_before": str(end)}
    return {"created_after": day_text(start), "created_before": day_text(end)}


def week_start(moment: int) -> int:
    """Return the Monday 00:00 UTC that starts the week of ``moment`` (1 January 1970 was a Thursday)."""
    day = floor_to(moment, DAY)
    return day - ((day // DAY + 3) % 7) * DAY


def by_week(series: UsageSeries) -> UsageSeries:
    """Return ``series`` (per day) summed per week, Monday to Sunday."""
    assert series.start is not None and series.end is not None
    weekly = UsageSeries(span=WEEK, start=week_start(series.start), end=week_start(series.end - 1) + WEEK)
    for (start, model), usage in series.cells.items():
        key = (week_start(start), model)
        weekly.cells[key] = weekly.cells.get(key, Usage()) + usage
    return weekly


class ListLinks:
    """The list's URLs for the overview's filter narrowed to one bucket and model.

    Built from one ``url_for`` prefix and query parts encoded once per model and per bucket:
    a quarter's charts hold thousands of links, and ``url_for`` for each took half the time.
    """

    def __init__(self, args: dict[str, Any], models: list[str]) -> None:
        prefix = url_for("admin.completion_list", **{k: v for k, v in args.items() if k not in ("model", *DATE_PARAMS)})
        self.prefix = prefix + ("&" if "?" in prefix else "?")
        self.filter_model = urlencode({"model": args["model"]}) + "&" if args.get("model") else ""
        self.models = [urlencode({"model": model}) + "&" for model in models]

    def bucket(self, start: int, span: int) -> tuple[str, tuple[str, ...]]:
        """Return the URL of a bucket for the filter's models, and one per model."""
        bounds = urlencode(bucket_bounds(start, span))
        return self.prefix + self.filter_model + bounds, tuple(self.prefix + model + bounds for model in self.models)


@dataclass(frozen=True)
class Bucket:
    """One bar: its label, its links (all models, then each model) and its usage (each model, then the rest)."""

    label: str
    href: str
    hrefs: tuple[str, ...]
    usages: tuple[Usage, ...]


def read_buckets(series: UsageSeries, models: list[str], links: ListLinks) -> tuple[list[Bucket], bool]:
    """Return every bucket of ``series`` with ``models``' usage apart and the rest summed; and whether there is a rest."""
    index = {model: position for position, model in enumerate(models)}
    table: dict[int, list[Usage]] = {}
    others = False
    for (start, model), usage in series.cells.items():
        row = table.setdefault(start, [Usage()] * (len(models) + 1))
        position = index.get(model, len(models))
        others = others or position == len(models)
        row[position] = row[position] + usage
    buckets = []
    for start in series.bucket_starts():
        usages = table.get(start, [Usage()] * (len(models) + 1))
        href, hrefs = links.bucket(start, series.span)
        buckets.append(
            Bucket(
                label=bucket_label(start, series.span),
                href=href,
                hrefs=hrefs + ((href,) if others else ()),
                usages=tuple(usages if others else usages[:-1]),
            )
        )
    return buckets, others


@dataclass(frozen=True)
class Chart:
    """One chart and the table of its exact numbers."""

    chart_id: str
    title: str
    svg: Any
    top: int
    series: list[Series]
    columns: list[Column]
    first: str
    last: str


def build_chart(*, chart_id: str, title: str, kinds: list[Series], buckets: list[Bucket], measure: Callable[[Usage], int]) -> Chart:
    """Return the stacked bar chart of ``measure`` per bucket, one segment per series."""
    columns = [
        Column(label=bucket.label, href=bucket.href, values=tuple(measure(usage) for usage in bucket.usages), hrefs=bucket.hrefs)
        for bucket in buckets
    ]
    top = nice_ceiling(max((column.total for column in columns), default=0))
    return Chart(
        chart_id=chart_id,
        title=title,
        svg=stacked_bars(chart_id=chart_id, title=title, series=kinds, columns=columns, top=top),
        top=top,
        series=kinds,
        columns=columns,
        first=columns[0].label if columns else "",
        last=columns[-1].label if columns else "",
    )


def build_charts(counted: UsageSeries, models: list[str], links: ListLinks, unit: str) -> list[Chart]:
    """Return the two charts, completions and tokens per bucket, a colour for each of ``models`` and one for the rest."""
    buckets, others = read_buckets(counted, models, links)
    kinds = [Series(model, f"series-{index}") for index, model in enumerate(models)]
    if others:
        kinds.append(Series(OTHER_MODELS, "series-other"))
    return [
        build_chart(chart_id="chart-completions", title=f"Completions per {unit}, by model", kinds=kinds, buckets=buckets, measure=lambda u: u.completions),
        build_chart(chart_id="chart-tokens", title=f"Tokens per {unit} (prompt and completion), by model", kinds=kinds, buckets=buckets, measure=lambda u: u.tokens),
    ]


def read_overview(filters: Filters, dates: DateRange) -> tuple[UsageSeries, Usage | None]:
    """Return the usage series of the filter (per week past MAX_DAYS days) and, when the filter
    names both ends of its range, the totals of the range of the same length just before it."""
    counted = store.usage_series(db.session, filter=filters.filter, created_after=dates.after, created_before=dates.before)
    if counted.start is not None and counted.end is not None and counted.span == DAY and (counted.end - counted.start) // DAY > MAX_DAYS:
        counted = by_week(counted)
    previous = None
    if dates.after is not None and dates.before is not None and dates.before > dates.after:
        length = dates.before - dates.after
        previous = store.usage_series(
            db.session, filter=filters.filter, created_after=dates.after - length, created_before=dates.after
        ).total
    return counted, previous


def quick_ranges(now: int) -> list[tuple[str, dict[str, str]]]:
    """Return the quick ranges' labels and URL arguments, ending with the current hour or day."""
    ranges = []
    for label, count, span in QUICK_RANGES:
        end = ceil_to(now + 1, span)
        start = end - count * span
        if span == HOUR:
            ranges.append((label, {"created_after": str(start), "created_before": str(end)}))
        else:
            ranges.append((label, {"created_after": day_text(start), "created_before": day_text(end)}))
    return ranges


def change(now: int, before: int) -> str | None:
    """Return how ``now`` compares with ``before`` as a signed percentage, or None when there was nothing before."""
    if before == 0:
        return None
    percent = (now - before) * 100 / before
    return f"{percent:+.0f} %" if abs(percent) >= 1 or percent == 0 else f"{percent:+.1f} %"


@bp.get("/overview")
def overview() -> Any:
    """Show totals and charts for the list's filter (model, metadata, date range)."""
    filters = read_filters(request.args)
    dates = read_dates(request.args)
    valid = filters.valid and not dates.errors
    args = {**filters.args(), **dates.args()}

    def link(endpoint: str = "admin.completion_list", **overrides: Any) -> str:
        return url_for(endpoint, **{**args, **overrides})

    counted, previous = read_overview(filters, dates) if valid else (UsageSeries(span=DAY, start=None, end=None), None)
    by_model = counted.by_model()
    unit = {HOUR: "hour", DAY: "day", WEEK: "week"}[counted.span]
    models = list(by_model)[:MAX_SERIES]
    charts = build_charts(counted, models, ListLinks(args, models), unit) if counted.cells else []
    total = counted.total
    return (
        render_template(
            "admin/overview.html",
            filters=filters,
            dates=dates,
            models=store.list_models(db.session),
            max_pairs=MAX_METADATA_PAIRS,
            total=total,
            previous=previous,
            change=change,
            by_model=by_model,
            charts=charts,
            unit=unit,
            first=bucket_label(counted.start, counted.span) if counted.start is not None else None,
            last=bucket_label(counted.end - counted.span, counted.span) if counted.end is not None and counted.end > (counted.start or 0) else None,
            quick=quick_ranges(int(datetime.now(timezone.utc).timestamp())),
            link=link,
            count=format_count,
        ),
        200 if valid else 400,
    )
