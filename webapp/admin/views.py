"""The admin pages: read the form or query, call ``validation`` and ``store``, render or redirect.

Every successful POST redirects (POST/redirect/GET) with a flashed message; a POST
that fails re-renders its page with the errors beside the inputs and a 4xx status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from itertools import groupby
from typing import Any

from flask import Response, abort, flash, redirect, render_template, request, stream_with_context, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from .. import store, validation
from ..extensions import db, write_transaction
from ..formats import FORMATS, export_lines
from ..keycache import forget_api_keys
from ..models import Completion, utcnow
from ..validation import MAX_METADATA_PAIRS, Filter, PageQuery, ValidationError
from . import bp
from .auth import LOCK_FOR, MAX_FAILED_SIGN_INS, actor, current_user, safe_next, sign_in, sign_out
from .display import describe_filter, shorten
from .forms import ApiKeyForm, BulkForm, LoginForm, MetadataForm, RestoreForm, RevokeKeyForm, UndoForm, attach_error

PAGE_SIZE = 50
# The list counts its matches exactly up to this many, then says "10,000+".
COUNT_CAP = store.COUNT_CAP
# How many ids, and how many reasons, a flashed message names before "and N more" (flashes live in the cookie).
FLASH_IDS = 5
FLASH_REASONS = 3


def see_other(endpoint: str, **values: Any) -> BaseResponse:
    """Redirect a POST to a page to GET (303)."""
    return redirect(url_for(endpoint, **values), code=303)


# --- Sign in and out ------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Sign in; a username is locked for a while after repeated wrong passwords."""
    target = safe_next(request.args.get("next")) or url_for("admin.completion_list")
    if request.method == "GET" and current_user() is not None:
        return redirect(target)
    form = LoginForm()
    error, status = None, 200
    if form.validate_on_submit():
        username, password = form.username.data or "", form.password.data or ""
        try:
            user = store.verify_sign_in(db.session, username=username, password=password)
        except store.SignInLocked as exc:
            minutes = max(1, math.ceil((exc.until - utcnow()).total_seconds() / 60))
            error = f"Too many failed sign-ins for this username. Try again in {minutes} minute{'s' if minutes > 1 else ''}."
            status = 429
        else:
            with write_transaction() as tx:
                store.record_sign_in(
                    tx, username=username, succeeded=user is not None, max_failures=MAX_FAILED_SIGN_INS, lock_for=LOCK_FOR
                )
            if user is not None:
                sign_in(user)
                return redirect(target, code=303)
            error = "Incorrect username or password."
    elif form.is_submitted():
        status = 400
    return render_template("admin/login.html", form=form, error=error), status


@bp.post("/logout")
def logout() -> BaseResponse:
    """Sign out: the session ends on the server too."""
    sign_out()
    flash("You are signed out.", "info")
    return see_other("admin.login")


# --- The list ---------------------------------------------------------------------------------


# The list's filter inputs besides model and metadata, named as the API names them.
TEXT_FILTERS = ("search", "created_after", "created_before")


@dataclass(frozen=True)
class Filters:
    """The list's filter as typed (kept in the URL, so a view can be bookmarked) and as cleaned."""

    model: str | None = None
    texts: list[str] = field(default_factory=list)
    # ``search``, ``created_after``, ``created_before`` as typed (a date YYYY-MM-DD or unix seconds).
    typed: dict[str, str] = field(default_factory=dict)
    filter: Filter = field(default_factory=Filter)
    # An error beside one KEY=VALUE input (by position), beside one of TEXT_FILTERS (by name),
    # or about the filter as a whole.
    errors: dict[int, str] = field(default_factory=dict)
    field_errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def valid(self) -> bool:
        return not self.errors and not self.field_errors and self.error is None

    @property
    def active(self) -> bool:
        """Whether anything narrows the list."""
        return bool(self.model or self.texts or self.typed)

    def args(self) -> dict[str, Any]:
        """Return the URL arguments that carry this filter."""
        return {"model": self.model, "metadata": self.texts, **self.typed}

    def day(self, name: str) -> str:
        """Return the day a date input shows for ``created_after`` or (inclusive) ``created_before``."""
        seconds = getattr(self.filter, name)
        if seconds is None:
            return self.typed.get(name, "") if name in self.field_errors else ""
        return validation.day_of(seconds, inclusive_end=name == "created_before")


def tidy_filter_text(text: str) -> str:
    """Return a typed ``KEY=VALUE`` filter without spaces around its key and its value."""
    key, sep, value = text.partition("=")
    return f"{key.strip()}={value.strip()}" if sep else text.strip()


def read_filters(values: MultiDict[str, str]) -> Filters:
    """Return the filter in a query or form: ``model``, repeated ``metadata=KEY=VALUE`` (blank ones
    ignored), ``search``, ``created_after`` and ``created_before`` (dates or unix seconds)."""
    model = values.get("model") or None
    # "team = red" means team=red: spaces around the key and the value are dropped (the form's
    # convenience; the API keeps OpenAI's exact rules).
    texts = [tidy_filter_text(text) for text in values.getlist("metadata") if text.strip()]
    typed = {name: values[name] for name in TEXT_FILTERS if values.get(name, "").strip()}
    pairs: list[tuple[str, str]] = []
    errors: dict[int, str] = {}
    for index, text in enumerate(texts):
        try:
            pairs.append(validation.parse_metadata_filter(text))
        except ValidationError as exc:
            errors[index] = exc.message
    if errors:
        return Filters(model=model, texts=texts, typed=typed, errors=errors)
    try:
        cleaned = validation.clean_filters(model=model, metadata=pairs, days=True, **typed)
    except ValidationError as exc:
        if exc.param in TEXT_FILTERS:
            return Filters(model=model, texts=texts, typed=typed, field_errors={exc.param: exc.message})
        return Filters(model=model if exc.param != "model" else None, texts=texts, typed=typed, error=exc.message)
    return Filters(model=model, texts=texts, typed=typed, filter=cleaned)


def inclusive_to_redirect(values: MultiDict[str, str]) -> BaseResponse | None:
    """Redirect a filter form's inclusive "to" date (``created_to``) to the URL's ``created_before``, the day after.

    The URL keeps the API's parameter names; the form asks people the question they think in.
    """
    if "created_to" not in values:
        return None
    # Blank inputs say nothing: leave them out of the URL.
    args = MultiDict(
        [(name, value) for name, value in values.items(multi=True) if name != "created_to" and (name not in TEXT_FILTERS or value.strip())]
    )
    to = values.get("created_to", "").strip()
    args.pop("created_before", None)
    if to:
        try:
            args["created_before"] = validation.inclusive_day_end(to)
        except ValidationError:
            args["created_before"] = to  # shown back beside the input with the rule's message
    return redirect(url_for("admin.completion_list", **args.to_dict(flat=False)))


@dataclass(frozen=True)
class ListPage:
    """One page of the list and the cursors of its neighbours (None where there is none)."""

    rows: list[Completion]
    older: str | None
    newer: str | None


def read_page(filters: Filters, *, after: str | None, before: str | None) -> ListPage:
    """Return one page, newest first, in one query (no count).

    ``after`` pages towards older completions, ``before`` towards newer ones. Raises
    ValidationError when a cursor names a completion that never existed.
    """
    if before is not None:
        page = store.list_completions(db.session, filter=filters.filter, page=PageQuery(after=before, limit=PAGE_SIZE, order="asc"))
        rows = page.rows[::-1]
        return ListPage(rows, older=rows[-1].id if rows else None, newer=rows[0].id if rows and page.has_more else None)
    page = store.list_completions(db.session, filter=filters.filter, page=PageQuery(after=after, limit=PAGE_SIZE, order="desc"))
    rows = page.rows
    return ListPage(rows, older=rows[-1].id if page.has_more else None, newer=rows[0].id if rows and after else None)


def render_list(source: MultiDict[str, str], *, bulk: BulkForm | None = None, status: int = 200) -> Any:
    """Render the list page for the filter and cursor in ``source`` (the query, or the bulk form's hidden fields)."""
    filters = read_filters(source)
    after, before = source.get("after") or None, source.get("before") or None
    page = ListPage([], None, None)
    if filters.valid:
        try:
            page = read_page(filters, after=validation.clean_cursor(after), before=validation.clean_cursor(before))
        except ValidationError:
            flash("That page of the list no longer exists: here are the newest completions.", "info")
            return redirect(url_for("admin.completion_list", **filters.args()))
        if before is not None and not page.rows:
            # Everything newer was deleted meanwhile.
            return redirect(url_for("admin.completion_list", **filters.args()))
    else:
        status = 400
    count = store.count_completions(db.session, filter=filters.filter, cap=COUNT_CAP) if filters.valid else None
    return (
        render_template(
            "admin/completion_list.html",
            filters=filters,
            models=store.list_models(db.session),
            page=page,
            count=count,
            count_cap=COUNT_CAP,
            after=after,
            before=before,
            bulk=bulk or BulkForm(formdata=None),
            hidden_filter=filter_args(filters.filter) if filters.valid else {},
            # A completion opened from this page knows its place: its neighbours and the way back.
            nav_args=list_args(source, filters) if filters.valid else {},
            max_pairs=MAX_METADATA_PAIRS,
        ),
        status,
    )


@bp.get("/")
def completion_list() -> Any:
    """List completions, newest first, filtered by model, metadata, text and dates, a keyset page at a time."""
    return inclusive_to_redirect(request.args) or render_list(request.args)


def filter_args(selection: Filter) -> dict[str, Any]:
    """Return the URL arguments (or hidden form fields) that carry a cleaned filter, whatever fields it has.

    Built from the cleaned ``Filter`` (not from what was typed), so a bulk change, a
    download or a completion's neighbours act on exactly the filter the page was loaded with.
    """
    args: dict[str, Any] = {}
    for item in fields(selection):
        value = getattr(selection, item.name)
        if isinstance(value, Mapping):
            args[item.name] = [f"{key}={text}" for key, text in value.items()]
        elif isinstance(value, (list, tuple)):
            if value:
                args[item.name] = " ".join(str(part) for part in value)
        elif value is not None and value != "":
            args[item.name] = value
    return args


def list_args(source: MultiDict[str, str], filters: Filters) -> dict[str, Any]:
    """Return the URL arguments of the list page ``source`` came from: its filter and its cursor."""
    cursor = {name: source.get(name) or None for name in ("after", "before")}
    return {**filter_args(filters.filter), **{k: v for k, v in cursor.items() if v}}


def bulk_selection(form: BulkForm, filters: Filters, *, upto: int) -> store.Selection:
    """Return what a valid bulk form acts on: its ticked ids, or its filter's matches up to ``upto``."""
    if form.scope.data == "all":
        return store.Selection(filter=filters.filter, upto=upto)
    return store.Selection(ids=tuple(dict.fromkeys(form.ids.data)))


def describe_change(action: str, key: str | None, value: str | None) -> str:
    """Return what a bulk change does, as the confirmation page, the flash and the history say it."""
    if action == "delete":
        return "Delete"
    if action == "remove":
        return f"Remove the key '{key}'"
    if action == "undo":
        return "Undo"
    return f"Set '{key}' to '{shorten(value or '', 80)}'"


def describe_scope(form: BulkForm, filters: Filters) -> str:
    """Return what a bulk change acts on, in words: the ticked completions, or the filter."""
    if form.scope.data == "all":
        return "every completion matching " + describe_filter(filters.filter)
    count = len(dict.fromkeys(form.ids.data))
    return f"the {count} ticked completion{'' if count == 1 else 's'}"


@bp.post("/bulk")
def bulk_update() -> Any:
    """Check a bulk change and show what it will do, and on how many completions; nothing is written here."""
    form = BulkForm()
    filters = read_filters(request.form)
    if not filters.valid or not form.validate():
        return render_list(request.form, bulk=form, status=400)
    upto = store.latest_seq(db.session)
    count = store.count_selection(db.session, selection=bulk_selection(form, filters, upto=upto))
    form.upto.data = str(upto)
    key, value = form.change or (None, None)
    return render_template(
        "admin/bulk_confirm.html",
        form=form,
        count=count,
        change=describe_change(form.action.data, key, value),
        scope=describe_scope(form, filters),
        hidden_filter=filter_args(filters.filter),
        back=url_for("admin.completion_list", **list_args(request.form, filters)),
        cursor={name: request.form.get(name) for name in ("after", "before") if request.form.get(name)},
    )


@bp.post("/bulk/apply")
def bulk_apply() -> Any:
    """Apply a confirmed bulk change in short transactions, recorded as one batch; back to the same list page."""
    form = BulkForm()
    filters = read_filters(request.form)
    if not filters.valid or not form.validate() or not form.upto.data:
        flash("That bulk change could not be applied as confirmed: nothing was changed. Start again from the list.", "error")
        return see_other("admin.completion_list", **list_args(request.form, filters))
    key, value = form.change or (None, None)
    action = form.action.data
    batch = store.run_bulk_change(
        write_transaction,
        selection=bulk_selection(form, filters, upto=int(form.upto.data)),
        action=action,  # type: ignore[arg-type]
        key=key,
        value=value,
        actor=actor(),
        scope=describe_scope(form, filters),
        requested=request.form.get("count", type=int) or 0,
    )
    flash_batch(batch)
    return see_other("admin.completion_list", **list_args(request.form, filters))


def _some(ids: list[str]) -> str:
    named = ", ".join(ids[:FLASH_IDS])
    return named + (f" and {len(ids) - FLASH_IDS} more" if len(ids) > FLASH_IDS else "")


def _completions(count: int) -> str:
    return f"{count} completion{'' if count == 1 else 's'}"


def batch_summary(batch: Any) -> list[tuple[str, str]]:
    """Return the flashed lines that tell what a bulk change did: how many changed, and each refusal's reason."""
    changed, unchanged = batch.changed, batch.unchanged
    if batch.action == "delete":
        done = f"Deleted {_completions(changed)}"
    elif batch.action == "undo":
        done = f"Undid bulk change #{batch.undoes_id}: {_completions(changed)} put back as before it"
    elif batch.action == "remove":
        done = f"Removed '{batch.key}' from {_completions(changed)}"
        done += f"; {unchanged} did not have it" if unchanged else ""
    else:
        done = f"Set '{batch.key}' to '{shorten(batch.value or '', 80)}' on {_completions(changed)}"
        done += f"; {unchanged} had it already" if unchanged else ""
    lines = [("success" if changed else "info", done + ".")]
    refused = sorted((tuple(item) for item in batch.refused or []), key=lambda item: item[1])
    groups = [(message, [cid for cid, _ in group]) for message, group in groupby(refused, key=lambda item: item[1])]
    for message, ids in groups[:FLASH_REASONS]:
        lines.append(("error", f"Left unchanged: {_some(ids)}. {message}"))
    named = sum(len(ids) for _, ids in groups[:FLASH_REASONS])
    if batch.refused_count > named:
        lines.append(("error", f"{batch.refused_count - named} more left unchanged: see Bulk changes."))
    return lines


def flash_batch(batch: Any) -> None:
    """Flash what a bulk change did; its first line offers Undo when it can be undone (see base.html)."""
    lines = batch_summary(batch)
    for index, (category, message) in enumerate(lines):
        if index == 0 and batch.action != "delete" and batch.changed:
            # base.html draws an Undo button beside a flash of this category.
            category = f"undo:{batch.id}"
        flash(message, category)


@bp.get("/bulk-changes")
def bulk_changes() -> Any:
    """The recent bulk changes, newest first: who, when, what, on how many; each offers Undo while it can."""
    before_id = request.args.get("before", type=int)
    batches, undone = store.list_bulk_changes(db.session, before_id=before_id, limit=PAGE_SIZE)
    undoes = {batch.undoes_id for batch in batches if batch.undoes_id}
    return render_template(
        "admin/bulk_changes.html",
        batches=batches,
        undone=undone,
        undoes=undoes,
        describe=describe_change,
        older=batches[-1].id if len(batches) == PAGE_SIZE else None,
    )


@bp.post("/bulk-changes/<int:batch_id>/undo")
def undo_bulk_change(batch_id: int) -> BaseResponse:
    """Undo a bulk change (itself recorded as one); name every completion changed since and left alone."""
    form = UndoForm()
    if not form.validate():
        abort(400)
    back = safe_next(form.next.data) or url_for("admin.bulk_changes")
    try:
        batch = store.undo_bulk_change(write_transaction, batch_id=batch_id, actor=actor())
    except LookupError:
        abort(404)
    except store.NotUndoable as exc:
        flash(str(exc), "error")
    else:
        flash_batch(batch)
    return redirect(back, code=303)


# --- One completion -------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbours:
    """Where a completion stands in the list it was opened from: the ids just newer and just older
    within that list's filter and order, and that list page's arguments (filter and cursor)."""

    newer: str | None
    older: str | None
    args: dict[str, Any]


def neighbours(row: Completion, source: MultiDict[str, str]) -> Neighbours:
    """Return the neighbours of ``row`` in the list whose filter and cursor ``source`` (the page's query) carries.

    With no (or a broken) filter, the list is every completion. Two one-row keyset queries.
    """
    filters = read_filters(source)
    if not filters.valid:
        filters = read_filters(MultiDict())
    newer = store.list_completions(db.session, filter=filters.filter, page=PageQuery(after=row.id, limit=1, order="asc")).rows
    older = store.list_completions(db.session, filter=filters.filter, page=PageQuery(after=row.id, limit=1, order="desc")).rows
    return Neighbours(newer=newer[0].id if newer else None, older=older[0].id if older else None, args=list_args(source, filters))


def render_detail(row: Completion, form: MetadataForm, *, status: int = 200, conflict: bool = False, unsaved: bool = False) -> Any:
    """Render a completion's page with the metadata form as given (fresh, re-shown with errors, in conflict,
    or ``unsaved`` after adding or removing a row)."""
    return (
        render_template(
            "admin/completion_detail.html",
            row=row,
            nav=neighbours(row, request.args),
            completion=store.completion_object(row),
            form=form,
            history=store.metadata_history(db.session, completion_id=row.id),
            conflict=conflict,
            unsaved=unsaved,
            max_pairs=MAX_METADATA_PAIRS,
        ),
        status,
    )


@bp.route("/completions/<path:completion_id>", methods=["GET", "POST"])
def completion_detail(completion_id: str) -> Any:
    """Show a completion; POST edits its metadata (add or remove a row, or save the rows)."""
    row = store.get_completion(db.session, completion_id=completion_id)
    if request.method == "GET":
        return render_detail(row, MetadataForm.for_pairs(list((row.metadata_map or {}).items()), version=row.version))
    form = MetadataForm()
    if "add" in request.form:
        return render_detail(row, form.with_row_added(), unsaved=True)
    if "remove" in request.form:
        index = request.form.get("remove", type=int)
        return render_detail(row, form.with_row_removed(index if index is not None else -1), unsaved=True)
    if not form.validate():
        return render_detail(row, form, status=400)
    assert form.metadata is not None
    try:
        with write_transaction() as tx:
            store.update_metadata(
                tx, completion_id=completion_id, metadata=form.metadata, actor=actor(), if_match={store.version_etag(form.version.data)}
            )
    except store.PreconditionFailed as exc:
        # Keep the person's rows, now based on the current version: saving again is a deliberate overwrite.
        form.version.data = str(exc.current.version)
        return render_detail(exc.current, form, status=412, conflict=True)
    count = len(form.metadata)
    flash(f"Saved the metadata ({count} pair{'' if count == 1 else 's'}).", "success")
    return see_other("admin.completion_detail", completion_id=completion_id, **request.args.to_dict(flat=False))


@bp.post("/history/<int:change_id>/restore")
def restore_metadata(change_id: int) -> BaseResponse:
    """Put back the metadata as it stood before or after a recorded change (itself recorded as a change)."""
    try:
        change = store.get_metadata_change(db.session, change_id=change_id)
    except LookupError:
        abort(404)
    form = RestoreForm()
    if not form.validate():
        abort(400)
    completion_id, changed_at = change.completion_id, change.changed_at
    state = validation.clean_metadata(change.before if form.state.data == "before" else change.after)
    try:
        with write_transaction() as tx:
            store.update_metadata(
                tx, completion_id=completion_id, metadata=state, actor=actor(), if_match={store.version_etag(form.version.data)}
            )
    except store.PreconditionFailed:
        flash(
            "The metadata changed since you loaded the page, so nothing was restored. "
            "The page now shows the current metadata and history: restore again if you still want to.",
            "error",
        )
    else:
        moment = changed_at.replace(tzinfo=changed_at.tzinfo or timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        flash(f"Restored the metadata as it was {form.state.data} the change of {moment}.", "success")
    return see_other("admin.completion_detail", completion_id=completion_id)


@bp.route("/delete/<path:completion_id>", methods=["GET", "POST"])
def delete_completion(completion_id: str) -> Any:
    """Ask for confirmation on a page of its own; POST deletes and returns to the list."""
    back = list_args(request.args, read_filters(request.args)) if read_filters(request.args).valid else {}
    if request.method == "GET":
        row = store.get_completion(db.session, completion_id=completion_id)
        return render_template("admin/delete_completion.html", row=row, back=back)
    with write_transaction() as tx:
        store.delete_completion(tx, completion_id=completion_id)
    flash(f"Deleted completion {completion_id}.", "success")
    return see_other("admin.completion_list", **back)


# --- Export -------------------------------------------------------------------------------


@bp.get("/export")
def export() -> Any:
    """Download the completions the filter matches as JSONL (``store`` or ``chat``), streamed a page at a time."""
    filters = read_filters(request.args)
    fmt = request.args.get("format", "store")
    if not filters.valid or fmt not in FORMATS:
        flash("Fix the filter before exporting." if not filters.valid else f"Unknown export format '{fmt}'.", "error")
        return redirect(url_for("admin.completion_list", **filters.args()))
    skip_truncated = request.args.get("skip_truncated") == "1"
    lines = export_lines(db.session, filter=filters.filter, fmt=fmt, skip_truncated=skip_truncated)  # type: ignore[arg-type]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    response = Response(stream_with_context(lines), mimetype="application/jsonl")
    response.headers["Content-Disposition"] = f'attachment; filename="completions-{fmt}-{stamp}.jsonl"'
    response.headers["Cache-Control"] = "no-store"
    return response


# --- API keys -----------------------------------------------------------------------------


@bp.route("/keys", methods=["GET", "POST"])
def api_keys() -> Any:
    """List API keys; POST creates one and shows its secret once (this response only: never flashed or stored)."""
    form = ApiKeyForm()
    created: dict[str, Any] | None = None
    status = 200
    if form.validate_on_submit():
        name, read_only = form.name.data or "", bool(form.read_only.data)
        try:
            with write_transaction() as tx:
                _key, secret = store.create_api_key(tx, name=name, read_only=read_only)
        except store.NameTaken as exc:
            attach_error(form, ValidationError(str(exc), "name"))
            status = 400
        else:
            created = {"name": name, "secret": secret, "read_only": read_only}
            form = ApiKeyForm(formdata=None)
    elif form.is_submitted():
        status = 400
    return (
        render_template(
            "admin/api_keys.html", keys=store.list_api_keys(db.session), form=form, created=created
        ),
        status,
    )


@bp.route("/keys/revoke", methods=["GET", "POST"])
def revoke_api_key() -> Any:
    """Ask first on a page of its own (GET ``?name=``); POST revokes the key: requests using it get 401 from now on."""
    if request.method == "GET":
        name = request.args.get("name", "")
        try:
            key = store.get_live_api_key(db.session, name=validation.clean_api_key_name(name))
        except (LookupError, ValidationError):
            flash(f"No live API key named '{name}'.", "error")
            return redirect(url_for("admin.api_keys"))
        return render_template("admin/revoke_api_key.html", key=key, form=RevokeKeyForm(formdata=None, data={"name": key.name}))
    form = RevokeKeyForm()
    if not form.validate():
        abort(400)
    name = form.name.data or ""
    try:
        with write_transaction() as tx:
            store.revoke_api_key(tx, name=validation.clean_api_key_name(name))
    except (LookupError, ValidationError):
        flash(f"No live API key named '{name}'.", "error")
    else:
        forget_api_keys()
        flash(f"Revoked API key '{name}': requests using it now get 401.", "success")
    return see_other("admin.api_keys")
