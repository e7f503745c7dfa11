"""The one data layer: plain typed functions over a SQLAlchemy session.

Nothing here reads the request, ``g`` or the Flask session, and nothing here commits:
the caller decides the transaction (see ``extensions.write_transaction``). Each function
says what it returns and what it raises.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, tuple_, update
from sqlalchemy.orm import Session, aliased
from werkzeug.security import check_password_hash, generate_password_hash

from .models import ApiKey, Completion, CompletionMetadata, MetadataChange, User, utcnow
from .validation import ListQuery, Order, PageQuery, ValidationError

# The request fields OpenAI echoes on a stored completion, by their name in the create request.
ECHOED_REQUEST_FIELDS = {
    "seed": "seed",
    "temperature": "temperature",
    "top_p": "top_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "response_format": "response_format",
    "user": "input_user",
    "service_tier": "service_tier",
}
API_KEY_PREFIX = "cs-"
# Touching last_used_at on every request would make every read a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class CompletionNotFound(Exception):
    """No live completion has this id (never stored, or deleted)."""

    def __init__(self, completion_id: str) -> None:
        super().__init__(f"No chat completion found with id '{completion_id}'.")
        self.completion_id = completion_id


class PreconditionFailed(Exception):
    """The completion changed since the version the caller named (``If-Match``)."""

    def __init__(self, current: Completion) -> None:
        super().__init__(
            "The chat completion was changed since you read it (its ETag no longer matches If-Match). "
            "Retrieve it again and retry with the new ETag."
        )
        self.current = current


class NameTaken(Exception):
    """An API key or user with this name exists already."""


@dataclass(frozen=True)
class Page:
    """One page of a list: the rows and whether more follow."""

    rows: list[Any]
    has_more: bool


# --- The OpenAI shape -------------------------------------------------------------------


def completion_object(row: Completion) -> dict[str, Any]:
    """Return the OpenAI completion object of a live row, ``metadata`` always an object."""
    obj = dict(row.body or {})
    obj["object"] = "chat.completion"
    obj["metadata"] = dict(row.metadata_map or {})
    return obj


def export_record(row: Completion) -> dict[str, Any]:
    """Return the ``store`` export line of a row: the API object plus its input messages."""
    return {**completion_object(row), "messages": list(row.messages or [])}


def chat_record(row: Completion) -> dict[str, Any]:
    """Return the fine-tuning line of a row: its input messages and the assistant's reply."""
    messages = list(row.messages or [])
    choices = (row.body or {}).get("choices") or []
    if choices:
        reply = choices[0].get("message") or {}
        assistant: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
        if reply.get("tool_calls"):
            assistant["tool_calls"] = reply["tool_calls"]
        messages.append(assistant)
    return {"messages": messages}


def message_objects(row: Completion) -> list[dict[str, Any]]:
    """Return the input messages of a row as OpenAI message-list items (ids ``{id}-{index}``)."""
    items = []
    for index, message in enumerate(row.messages or []):
        content = message.get("content")
        item = {key: value for key, value in message.items() if key != "content"}
        item["id"] = f"{row.id}-{index}"
        if isinstance(content, list):
            item["content"] = "".join(
                part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
            )
            item["content_parts"] = content
        else:
            item["content"] = content
            item["content_parts"] = None
        item.setdefault("name", None)
        item.setdefault("refusal", None)
        items.append(item)
    return items


def build_completion_body(request: Mapping[str, Any], response: Mapping[str, Any], request_id: str | None) -> dict[str, Any]:
    """Return the body to store for a create: the upstream answer plus the request fields OpenAI echoes."""
    body = {key: value for key, value in response.items() if key != "metadata"}
    body["request_id"] = request_id
    for source, target in ECHOED_REQUEST_FIELDS.items():
        if target == "service_tier" and "service_tier" in response:
            continue
        body[target] = request.get(source)
    return body


def etag(row: Completion) -> str:
    """Return the strong ETag of a row's current version."""
    return f'"{row.version}"'


# --- Completions ------------------------------------------------------------------------


def get_completion(session: Session, *, completion_id: str) -> Completion:
    """Return the live completion ``completion_id``; raise CompletionNotFound otherwise."""
    row = session.scalar(select(Completion).where(Completion.id == completion_id, Completion.deleted.is_(False)))
    if row is None:
        raise CompletionNotFound(completion_id)
    return row


def _filtered(stmt: Any, *, model: str | None, metadata: Mapping[str, str]) -> Any:
    stmt = stmt.where(Completion.deleted.is_(False))
    if model is not None:
        stmt = stmt.where(Completion.model == model)
    for key, value in metadata.items():
        stmt = stmt.where(
            exists().where(
                CompletionMetadata.completion_seq == Completion.seq,
                CompletionMetadata.key == key,
                CompletionMetadata.value == value,
            )
        )
    return stmt


def _keyset(stmt: Any, *, after: str | None, order: Order) -> Any:
    """Order by (created, seq) and start after the row ``after`` names, tombstones included."""
    position = tuple_(Completion.created, Completion.seq)
    if after is not None:
        cursor = aliased(Completion)
        start = tuple_(
            select(cursor.created).where(cursor.id == after).scalar_subquery(),
            select(cursor.seq).where(cursor.id == after).scalar_subquery(),
        )
        stmt = stmt.where(position > start if order == "asc" else position < start)
    if order == "asc":
        return stmt.order_by(Completion.created.asc(), Completion.seq.asc())
    return stmt.order_by(Completion.created.desc(), Completion.seq.desc())


def _require_cursor(session: Session, after: str | None) -> None:
    """Raise ValidationError if ``after`` names no completion, live or deleted."""
    if after is not None and session.scalar(select(Completion.seq).where(Completion.id == after)) is None:
        raise ValidationError(f"Invalid 'after': no chat completion found with id '{after}'.", "after", "invalid_value")


def list_completions(session: Session, *, query: ListQuery) -> Page:
    """Return one page of live completions matching ``query``, in one query.

    Raises ValidationError (param ``after``) when ``after`` names a completion that never
    existed; a deleted one still pages on from where it stood.
    """
    stmt = _keyset(_filtered(select(Completion), model=query.model, metadata=query.metadata), after=query.after, order=query.order)
    rows = list(session.scalars(stmt.limit(query.limit + 1)))
    if not rows:
        # Only an empty page can hide a cursor that does not exist.
        _require_cursor(session, query.after)
    return Page(rows=rows[: query.limit], has_more=len(rows) > query.limit)


def iter_completions(
    session: Session,
    *,
    model: str | None = None,
    metadata: Mapping[str, str] | None = None,
    order: Order = "asc",
    batch_size: int = 500,
) -> Iterator[Completion]:
    """Yield every live completion matching the filters, a keyset page at a time (bounded memory)."""
    after: str | None = None
    while True:
        page = list_completions(
            session,
            query=ListQuery(model=model, metadata=dict(metadata or {}), after=after, limit=batch_size, order=order),
        )
        yield from page.rows
        if not page.has_more:
            return
        after = page.rows[-1].id
        session.expunge_all()


def count_completions(session: Session, *, model: str | None = None, metadata: Mapping[str, str] | None = None) -> int:
    """Return how many live completions match the filters (for progress bars, not for list pages)."""
    stmt = _filtered(select(func.count()).select_from(Completion), model=model, metadata=metadata or {})
    return session.scalar(stmt) or 0


def list_messages(session: Session, *, completion_id: str, query: PageQuery) -> Page:
    """Return one page of the input messages of ``completion_id`` as message-list items.

    Raises CompletionNotFound, or ValidationError (param ``after``) for an unknown message id.
    """
    items = message_objects(get_completion(session, completion_id=completion_id))
    if query.order == "desc":
        items.reverse()
    start = 0
    if query.after is not None:
        ids = [item["id"] for item in items]
        if query.after not in ids:
            raise ValidationError(
                f"Invalid 'after': no message found with id '{query.after}'.", "after", "invalid_value"
            )
        start = ids.index(query.after) + 1
    chunk = items[start : start + query.limit + 1]
    return Page(rows=chunk[: query.limit], has_more=len(chunk) > query.limit)


def list_models(session: Session) -> list[str]:
    """Return the distinct models of live completions, sorted."""
    return list(session.scalars(select(Completion.model).where(Completion.deleted.is_(False)).distinct().order_by(Completion.model)))


def _replace_metadata_rows(session: Session, seq: int, metadata: Mapping[str, str]) -> None:
    session.execute(delete(CompletionMetadata).where(CompletionMetadata.completion_seq == seq))
    if metadata:
        session.execute(
            insert(CompletionMetadata),
            [{"completion_seq": seq, "key": key, "value": value} for key, value in metadata.items()],
        )


def _record_change(session: Session, *, completion_id: str, actor: str, before: Mapping[str, str], after: Mapping[str, str]) -> None:
    session.add(MetadataChange(completion_id=completion_id, actor=actor, before=dict(before), after=dict(after)))


def update_metadata(
    session: Session,
    *,
    completion_id: str,
    metadata: Mapping[str, str],
    actor: str,
    if_match: Collection[str] | None = None,
) -> Completion:
    """Replace the metadata of ``completion_id`` with ``metadata`` (already cleaned) and record the change.

    ``if_match`` is the ETags the caller will accept (``None``: any). The write only
    lands on the version that was read, so two concurrent updates never both win.
    Returns the updated row. Raises CompletionNotFound or PreconditionFailed.
    """
    for _attempt in range(20):
        row = get_completion(session, completion_id=completion_id)
        if if_match is not None and etag(row) not in if_match:
            raise PreconditionFailed(row)
        before = dict(row.metadata_map or {})
        result = session.execute(
            update(Completion)
            .where(Completion.seq == row.seq, Completion.version == row.version)
            .values(metadata_map=dict(metadata), version=Completion.version + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            _replace_metadata_rows(session, row.seq, metadata)
            _record_change(session, completion_id=completion_id, actor=actor, before=before, after=metadata)
            session.flush()
            session.refresh(row)
            return row
        # Someone else wrote in between: read again (PostgreSQL's READ COMMITTED sees it).
        session.expire(row)
    raise PreconditionFailed(get_completion(session, completion_id=completion_id))


def delete_completion(session: Session, *, completion_id: str) -> None:
    """Delete ``completion_id``, keeping a tombstone of its place in the order.

    Raises CompletionNotFound if it is not live.
    """
    row = get_completion(session, completion_id=completion_id)
    result = session.execute(
        update(Completion)
        .where(Completion.seq == row.seq, Completion.deleted.is_(False))
        .values(deleted=True, body=None, messages=None, metadata_map=None, version=Completion.version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise CompletionNotFound(completion_id)
    session.execute(delete(CompletionMetadata).where(CompletionMetadata.completion_seq == row.seq))
    session.expire(row)


def save_completion(
    session: Session,
    *,
    body: Mapping[str, Any],
    messages: list[Any],
    metadata: Mapping[str, str],
    actor: str,
) -> tuple[Completion, bool]:
    """Insert or replace the completion ``body["id"]`` (upsert by id); a tombstone comes back to life.

    ``body`` is the completion object without ``metadata``. Returns the row and whether
    anything changed: saving the same completion twice changes nothing the second time.
    """
    body = {key: value for key, value in body.items() if key not in ("metadata", "messages")}
    body["object"] = "chat.completion"
    completion_id = body["id"]
    row = session.scalar(select(Completion).where(Completion.id == completion_id))
    if row is None:
        row = Completion(
            id=completion_id,
            created=body["created"],
            model=body["model"],
            body=body,
            messages=messages,
            metadata_map=dict(metadata),
            deleted=False,
            version=1,
        )
        session.add(row)
        session.flush()
        _replace_metadata_rows(session, row.seq, metadata)
        if metadata:
            _record_change(session, completion_id=completion_id, actor=actor, before={}, after=metadata)
        return row, True
    before = {} if row.deleted else dict(row.metadata_map or {})
    if not row.deleted and row.body == body and row.messages == messages and before == dict(metadata):
        return row, False
    row.created = body["created"]
    row.model = body["model"]
    row.body = body
    row.messages = messages
    row.metadata_map = dict(metadata)
    row.deleted = False
    row.version = row.version + 1
    row.updated_at = utcnow()
    session.flush()
    _replace_metadata_rows(session, row.seq, metadata)
    if before != dict(metadata):
        _record_change(session, completion_id=completion_id, actor=actor, before=before, after=metadata)
    return row, True


def metadata_history(session: Session, *, completion_id: str) -> list[MetadataChange]:
    """Return every recorded metadata change of ``completion_id``, newest first."""
    return list(
        session.scalars(
            select(MetadataChange)
            .where(MetadataChange.completion_id == completion_id)
            .order_by(MetadataChange.id.desc())
        )
    )


# --- API keys ---------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    """Return the SHA-256 hex digest under which an API key's secret is stored.

    Keys are 256 random bits, so a fast hash is enough: nothing to brute-force.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_api_key(session: Session, *, name: str, read_only: bool = False) -> tuple[ApiKey, str]:
    """Create an API key; return it and its secret, which is not kept anywhere.

    Raises NameTaken if a key of that name exists (revoked ones included).
    """
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise NameTaken(f"An API key named '{name}' exists already; choose another name.")
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, key_hash=hash_secret(secret), prefix=secret[:8], read_only=read_only)
    session.add(key)
    session.flush()
    return key, secret


def authenticate_api_key(session: Session, *, secret: str) -> ApiKey | None:
    """Return the live key whose secret is ``secret``, or None (unknown or revoked)."""
    digest = hash_secret(secret)
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, digest):
        return None
    return key


def key_needs_touch(key: ApiKey, now: datetime | None = None) -> bool:
    """Return whether ``key.last_used_at`` is stale enough to be worth a write."""
    now = now or utcnow()
    last = key.last_used_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=now.tzinfo)
    return last is None or now - last >= LAST_USED_RESOLUTION


def touch_api_key(session: Session, *, key_id: int) -> None:
    """Set the key's ``last_used_at`` to now."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def list_api_keys(session: Session) -> list[ApiKey]:
    """Return every API key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_api_key(session: Session, *, name: str) -> ApiKey:
    """Revoke the key ``name``; return it. Raises LookupError if there is no live key of that name."""
    key = session.scalar(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
    if key is None:
        raise LookupError(f"No live API key named '{name}'. See `flask --app webapp keys list`.")
    key.revoked_at = utcnow()
    session.flush()
    return key


def count_api_keys(session: Session) -> int:
    """Return how many live API keys there are."""
    return session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0


# --- Users ------------------------------------------------------------------------------


def create_user(session: Session, *, username: str, password: str) -> User:
    """Create an admin user with a hashed password; raise NameTaken if the name is in use."""
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise NameTaken(f"A user named '{username}' exists already.")
    user = User(username=username, password_hash=generate_password_hash(password))
    session.add(user)
    session.flush()
    return user


def count_users(session: Session) -> int:
    """Return how many admin users there are."""
    return session.scalar(select(func.count()).select_from(User)) or 0


def check_password(user: User, password: str) -> bool:
    """Return whether ``password`` is the user's password."""
    return check_password_hash(user.password_hash, password)


