"""The admin pages: read the form or query, call ``validation`` and ``store``, render or redirect.

Every successful POST redirects (POST/redirect/GET) with a flashed message; a POST
that fails re-renders its page with the errors beside the inputs and a 4xx status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
from .display import shorten
from .forms import ApiKeyForm, BulkForm, LoginForm, MetadataForm, RestoreForm, RevokeKeyForm, attach_error

PAGE_SIZE = 50
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


@dataclass(frozen=True)
class Filters:
    """The list's filter as typed (kept in the URL, so a view can be bookmarked) and as cleaned."""

    model: str | None = None
    texts: list[str] = field(default_factory=list)
    filter: Filter = field(default_factory=Filter)
    # An error beside one KEY=VALUE input (by position), or about the filter as a whole.
    errors: dict[int, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def valid(self) -> bool:
        return not self.errors and self.error is None

    def args(self) -> dict[str, Any]:
        """Return the URL arguments that carry this filter."""
        return {"model": self.model, "metadata": self.texts}


def read_filters(values: MultiDict[str, str]) -> Filters:
    """Return the filter in a query or form: ``model`` and repeated ``metadata=KEY=VALUE`` (blank ones ignored)."""
    model = values.get("model") or None
    texts = [text for text in values.getlist("metadata") if text.strip()]
    pairs: list[tuple[str, str]] = []
    errors: dict[int, str] = {}
    for index, text in enumerate(texts):
        try:
            pairs.append(validation.parse_metadata_filter(text))
        except ValidationError as exc:
            errors[index] = exc.message
    if errors:
        return Filters(model=model, texts=texts, errors=errors)
    try:
        cleaned = validation.clean_filters(model=model, metadata=pairs)
    except ValidationError as exc:
        return Filters(model=model if exc.param != "model" else None, texts=texts, error=exc.message)
    return Filters(model=model, texts=texts, filter=cleaned)


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
    return (
        render_template(
            "admin/completion_list.html",
            filters=filters,
            models=store.list_models(db.session),
            page=page,
            after=after,
            before=before,
            bulk=bulk or BulkForm(formdata=None),
            max_pairs=MAX_METADATA_PAIRS,
        ),
        status,
    )


@bp.get("/")
def completion_list() -> Any:
    """List completions, newest first, filtered by model and metadata, a keyset page at a time."""
    return render_list(request.args)


@bp.post("/bulk")
def bulk_update() -> Any:
    """Set or remove one key on the ticked completions or on all the filter matches, in one transaction."""
    form = BulkForm()
    filters = read_filters(request.form)
    if not filters.valid or not form.validate():
        return render_list(request.form, bulk=form, status=400)
    assert form.change is not None
    key, value = form.change
    with write_transaction() as tx:
        if form.scope.data == "all":
            ids: Any = (
                row.id
                for row in store.iter_completions(tx, filter=filters.filter, order="desc")
            )
        else:
            ids = list(dict.fromkeys(form.ids.data))
        result = store.set_metadata_key(tx, completion_ids=ids, key=key, value=value, actor=actor())
    for category, message in bulk_summary(result, key=key, value=value):
        flash(message, category)
    cursor = {name: request.form.get(name) or None for name in ("after", "before")}
    return see_other("admin.completion_list", **filters.args(), **cursor)


def _some(ids: list[str]) -> str:
    named = ", ".join(ids[:FLASH_IDS])
    return named + (f" and {len(ids) - FLASH_IDS} more" if len(ids) > FLASH_IDS else "")


def bulk_summary(result: store.BulkResult, *, key: str, value: str | None) -> list[tuple[str, str]]:
    """Return the flashed lines that tell what a bulk change did: how many changed, and each refusal's reason."""
    changed, unchanged = len(result.changed), len(result.unchanged)
    plural = lambda n: "completion" if n == 1 else "completions"  # noqa: E731
    if value is None:
        done = f"Removed '{key}' from {changed} {plural(changed)}"
        same = f"{unchanged} did not have it"
    else:
        done = f"Set '{key}' to '{shorten(value, 80)}' on {changed} {plural(changed)}"
        same = f"{unchanged} had it already"
    lines = [("success" if changed else "info", done + (f"; {same}." if unchanged else "."))]
    refused = sorted(result.refused, key=lambda item: item[1])
    groups = [(message, [cid for cid, _ in group]) for message, group in groupby(refused, key=lambda item: item[1])]
    for message, ids in groups[:FLASH_REASONS]:
        lines.append(("error", f"Left unchanged: {_some(ids)}. {message}"))
    if len(groups) > FLASH_REASONS:
        others = sum(len(ids) for _, ids in groups[FLASH_REASONS:])
        lines.append(("error", f"{others} more left unchanged for other reasons."))
    return lines


# --- One completion -------------------------------------------------------------------------


def render_detail(row: Completion, form: MetadataForm, *, status: int = 200, conflict: bool = False) -> Any:
    """Render a completion's page with the metadata form as given (fresh, re-shown with errors, or in conflict)."""
    return (
        render_template(
            "admin/completion_detail.html",
            row=row,
            completion=store.completion_object(row),
            form=form,
            history=store.metadata_history(db.session, completion_id=row.id),
            conflict=conflict,
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
        return render_detail(row, form.with_row_added())
    if "remove" in request.form:
        index = request.form.get("remove", type=int)
        return render_detail(row, form.with_row_removed(index if index is not None else -1))
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
    return see_other("admin.completion_detail", completion_id=completion_id)


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
    if request.method == "GET":
        return render_template("admin/delete_completion.html", row=store.get_completion(db.session, completion_id=completion_id))
    with write_transaction() as tx:
        store.delete_completion(tx, completion_id=completion_id)
    flash(f"Deleted completion {completion_id}.", "success")
    return see_other("admin.completion_list")


# --- Export -------------------------------------------------------------------------------


@bp.get("/export")
def export() -> Any:
    """Download the completions the filter matches as JSONL (``store`` or ``chat``), streamed a page at a time."""
    filters = read_filters(request.args)
    fmt = request.args.get("format", "store")
    if not filters.valid or fmt not in FORMATS:
        flash("Fix the filter before exporting." if not filters.valid else f"Unknown export format '{fmt}'.", "error")
        return redirect(url_for("admin.completion_list", **filters.args()))
    lines = export_lines(db.session, filter=filters.filter, fmt=fmt)  # type: ignore[arg-type]
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


@bp.post("/keys/revoke")
def revoke_api_key() -> BaseResponse:
    """Revoke a key: requests using it get 401 from now on."""
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
