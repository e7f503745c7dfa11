"""The one data layer: plain typed functions over a SQLAlchemy session.

Nothing here reads the request, ``g`` or the Flask session, and nothing here commits:
the caller decides the transaction (see ``extensions.write_transaction``). Each function
says what it returns and what it raises.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased
from werkzeug.security import check_password_hash, generate_password_hash

from .models import ApiKey, Completion, CompletionMetadata, MetadataChange, SignInAttempts, User, UserSession, utcnow
from .validation import ListQuery, Order, PageQuery, ValidationError, clean_metadata

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


def version_etag(version: int | str) -> str:
    """Return the strong ETag of a completion's ``version`` (as a form carries it, too)."""
    return f'"{version}"'


def etag(row: Completion) -> str:
    """Return the strong ETag of a row's current version."""
    return version_etag(row.version)


# --- Completions ------------------------------------------------------------------------


def _as_utc(value: datetime) -> datetime:
    """Return ``value`` timezone-aware: SQLite hands back naive datetimes that were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _storable(name: str) -> bool:
    """Return whether a stored name (an id, a username) could hold ``name``.

    PostgreSQL text refuses NUL, so a name with one is simply not there: looking it up
    answers "not found" on every backend instead of a database error on one.
    """
    return "\x00" not in name


def get_completion(session: Session, *, completion_id: str) -> Completion:
    """Return the live completion ``completion_id``; raise CompletionNotFound otherwise."""
    if not _storable(completion_id):
        raise CompletionNotFound(completion_id)
    row = session.scalar(select(Completion).where(Completion.id == completion_id, Completion.deleted.is_(False)))
    if row is None:
        raise CompletionNotFound(completion_id)
    return row


# Below this many matches SQLite reads a metadata filter's matches from its index and sorts them;
# above it, walking the (created, seq) index and checking each row finds a page sooner.
SELECTIVE_FILTER_ROWS = 2000


def _metadata_condition(session: Session, key: str, value: str) -> Any:
    """Return the WHERE condition for one ``metadata[key]=value`` filter, shaped for the planner at hand.

    PostgreSQL knows how common each value is and plans the EXISTS either way. SQLite's
    planner does not, so a bounded count on the covering (key, value, seq) index decides.
    """
    matches = select(CompletionMetadata.completion_seq).where(
        CompletionMetadata.key == key, CompletionMetadata.value == value
    )
    if session.get_bind().dialect.name == "sqlite":
        probe = select(func.count()).select_from(matches.limit(SELECTIVE_FILTER_ROWS).subquery())
        if (session.scalar(probe) or 0) < SELECTIVE_FILTER_ROWS:
            return Completion.seq.in_(matches)
    return exists(matches.where(CompletionMetadata.completion_seq == Completion.seq))


def _filtered(session: Session, stmt: Any, *, model: str | None, metadata: Mapping[str, str]) -> Any:
    stmt = stmt.where(Completion.deleted.is_(False))
    if model is not None:
        stmt = stmt.where(Completion.model == model)
    for key, value in metadata.items():
        stmt = stmt.where(_metadata_condition(session, key, value))
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
    stmt = _keyset(_filtered(session, select(Completion), model=query.model, metadata=query.metadata), after=query.after, order=query.order)
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
    stmt = _filtered(session, select(func.count()).select_from(Completion), model=model, metadata=metadata or {})
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
    """Return the distinct models of live completions, sorted.

    A plain DISTINCT reads every row (most of a second at a million rows); this hops
    from one model to the next along the (model, created, seq) index instead, one
    lookup per model, on SQLite and PostgreSQL alike.
    """
    step, live = aliased(Completion), aliased(Completion)
    models = select(func.min(Completion.model).label("model")).cte("models", recursive=True)
    models = models.union_all(
        select(select(func.min(step.model)).where(step.model > models.c.model).scalar_subquery())
        .where(models.c.model.is_not(None))
    )
    stmt = (
        select(models.c.model)
        .where(models.c.model.is_not(None), exists().where(live.model == models.c.model, live.deleted.is_(False)))
        .order_by(models.c.model)
    )
    return list(session.scalars(stmt))


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


def key_needs_touch(key: Any, now: datetime | None = None) -> bool:
    """Return whether ``key.last_used_at`` (of an ApiKey or anything with that field) is stale enough to be worth a write."""
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


# At most this many passwords are checked for one username from one client address in
# SIGN_IN_WINDOW (from the first attempt); further attempts are refused until it ends.
MAX_SIGN_IN_ATTEMPTS = 5
SIGN_IN_WINDOW = timedelta(minutes=15)
# How often, at most, a session's last use is written: often enough for the idle timeout,
# rarely enough that reading pages does not mean writing on every request.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


class UserNotFound(LookupError):
    """No user has this name."""

    def __init__(self, username: str) -> None:
        super().__init__(f"No user named '{username}'. `flask --app webapp users list` shows them.")


def create_user(session: Session, *, username: str, password: str) -> User:
    """Create an admin user with a hashed password; raise NameTaken if the name is in use."""
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise NameTaken(f"A user named '{username}' exists already.")
    user = User(username=username, password_hash=generate_password_hash(password))
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, *, username: str) -> User:
    """Return the user named ``username``; raise UserNotFound if there is none."""
    user = session.scalar(select(User).where(User.username == username)) if _storable(username) else None
    if user is None:
        raise UserNotFound(username)
    return user


def set_password(session: Session, *, username: str, password: str) -> int:
    """Give ``username`` a new password and end all their sessions (a stolen one among them).

    Returns how many sessions ended; raises UserNotFound.
    """
    user = get_user(session, username=username)
    user.password_hash = generate_password_hash(password)
    return end_user_sessions(session, user_id=user.id)


def delete_user(session: Session, *, username: str) -> None:
    """Delete ``username``: their sessions end and their sign-in attempts are forgotten.

    Their name stays in the metadata history they wrote. Raises UserNotFound.
    """
    user = get_user(session, username=username)
    end_user_sessions(session, user_id=user.id)
    forget_sign_in_attempts(session, username=username)
    session.delete(user)
    session.flush()


@dataclass(frozen=True)
class UserSummary:
    """One line of ``users list``: a user, their live sessions, and the addresses throttled for their name now."""

    username: str
    created_at: datetime
    live_sessions: int
    throttled_addresses: int


def list_users(session: Session, *, max_age: timedelta, idle_timeout: timedelta, now: datetime | None = None) -> list[UserSummary]:
    """Return every user, by name, with their live sessions and throttled addresses (one query)."""
    now = now or utcnow()
    live = (
        select(func.count())
        .where(
            UserSession.user_id == User.id,
            UserSession.created_at > now - max_age,
            UserSession.last_seen_at > now - idle_timeout,
        )
        .scalar_subquery()
    )
    throttled = (
        select(func.count())
        .where(
            SignInAttempts.username == User.username,
            SignInAttempts.attempts >= MAX_SIGN_IN_ATTEMPTS,
            SignInAttempts.window_started > now - SIGN_IN_WINDOW,
        )
        .scalar_subquery()
    )
    rows = session.execute(select(User.username, User.created_at, live, throttled).order_by(User.username))
    return [UserSummary(name, _as_utc(created), sessions, addresses) for name, created, sessions, addresses in rows]


def count_users(session: Session) -> int:
    """Return how many admin users there are."""
    return session.scalar(select(func.count()).select_from(User)) or 0


def check_password(user: User, password: str) -> bool:
    """Return whether ``password`` is the user's password."""
    return check_password_hash(user.password_hash, password)


# --- Sign-in ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignInAttempt:
    """A counted sign-in attempt: its number in the current window, and when that window ends."""

    number: int
    window_ends: datetime


def _attempt_key(username: str, address: str) -> dict[str, str]:
    # Any text may be typed as a username: keep it to what the column holds (PostgreSQL text
    # refuses NUL). Names that long or with NUL cannot be users, so sharing a row costs nobody.
    return {"username": username[:150].replace("\x00", "\ufffd"), "address": address[:64]}


def count_sign_in_attempt(
    session: Session, *, username: str, address: str, window: timedelta = SIGN_IN_WINDOW, now: datetime | None = None
) -> SignInAttempt:
    """Count one sign-in attempt for ``username`` from ``address``, before its password is checked.

    Returns the attempt's number in the current window (which starts at the first attempt
    and lasts ``window``). One atomic upsert, so concurrent attempts get distinct numbers:
    the caller checks the password only while the number is at most MAX_SIGN_IN_ATTEMPTS. Known and
    unknown usernames are counted alike. Windows that ended are deleted on the way.
    """
    now = now or utcnow()
    table = SignInAttempts.__table__
    session.execute(delete(SignInAttempts).where(SignInAttempts.window_started <= now - window))
    upsert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = (
        upsert(table)
        .values(**_attempt_key(username, address), attempts=1, window_started=now)
        .on_conflict_do_update(index_elements=[table.c.username, table.c.address], set_={"attempts": table.c.attempts + 1})
        .returning(table.c.attempts, table.c.window_started)
    )
    number, started = session.execute(statement).one()
    return SignInAttempt(number=number, window_ends=_as_utc(started) + window)


def forget_sign_in_attempts(session: Session, *, username: str, address: str | None = None) -> int:
    """Forget the sign-in attempts of ``username`` from ``address`` (after a success), or from
    every address (``users unlock``). Returns how many addresses were forgotten."""
    key = _attempt_key(username, address or "")
    condition = SignInAttempts.username == key["username"]
    if address is not None:
        condition = and_(condition, SignInAttempts.address == key["address"])
    return session.execute(delete(SignInAttempts).where(condition)).rowcount


@functools.cache
def _decoy_password_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def verify_sign_in(session: Session, *, username: str, password: str) -> User | None:
    """Return the user named ``username`` if ``password`` is theirs, else None. Writes nothing.

    An unknown username costs the same password check, so timing does not tell which exist.
    Count the attempt first (``count_sign_in_attempt``): this is the slow, guessable part.
    """
    user = session.scalar(select(User).where(User.username == username)) if _storable(username) else None
    if user is None:
        check_password_hash(_decoy_password_hash(), password)
        return None
    return user if check_password(user, password) else None


# --- Sessions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedIn:
    """The user of a live session, and when the session was last used."""

    user: User
    last_seen_at: datetime

    def needs_touch(self, now: datetime | None = None) -> bool:
        """Return whether the session's last use should be written now (at most once a minute)."""
        return (now or utcnow()) - self.last_seen_at >= LAST_SEEN_RESOLUTION


def start_user_session(session: Session, *, user_id: int) -> str:
    """Open a sign-in session for ``user_id``; return its token (for the cookie), which is kept only as a hash."""
    token = secrets.token_urlsafe(32)
    session.add(UserSession(id=hash_secret(token), user_id=user_id))
    session.flush()
    return token


def user_for_session(
    session: Session, *, token: str, max_age: timedelta, idle_timeout: timedelta, now: datetime | None = None
) -> SignedIn | None:
    """Return who is signed in with ``token``, or None if the session ended, never existed,
    is older than ``max_age`` or went unused for ``idle_timeout``."""
    now = now or utcnow()
    row = session.execute(
        select(User, UserSession.created_at, UserSession.last_seen_at)
        .join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.id == hash_secret(token))
    ).first()
    if row is None or _as_utc(row.created_at) + max_age <= now or _as_utc(row.last_seen_at) + idle_timeout <= now:
        return None
    return SignedIn(user=row.User, last_seen_at=_as_utc(row.last_seen_at))


def touch_user_session(session: Session, *, token: str, now: datetime | None = None) -> None:
    """Record that the session ``token`` was used now (it stays alive for another idle timeout)."""
    session.execute(
        update(UserSession)
        .where(UserSession.id == hash_secret(token))
        .values(last_seen_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )


def end_user_session(session: Session, *, token: str) -> None:
    """End the sign-in session ``token`` (a cookie still carrying it no longer signs anyone in)."""
    session.execute(delete(UserSession).where(UserSession.id == hash_secret(token)))


def end_user_sessions(session: Session, *, user_id: int) -> int:
    """End every session of ``user_id`` ("sign out everywhere"); return how many there were."""
    return session.execute(delete(UserSession).where(UserSession.user_id == user_id)).rowcount


def end_expired_user_sessions(
    session: Session, *, user_id: int, max_age: timedelta, idle_timeout: timedelta, now: datetime | None = None
) -> None:
    """Delete the sessions of ``user_id`` older than ``max_age`` or unused for ``idle_timeout`` (they sign nobody in)."""
    now = now or utcnow()
    session.execute(
        delete(UserSession).where(
            UserSession.user_id == user_id,
            (UserSession.created_at <= now - max_age) | (UserSession.last_seen_at <= now - idle_timeout),
        )
    )


# --- Admin: history and bulk labelling --------------------------------------------------


def get_metadata_change(session: Session, *, change_id: int) -> MetadataChange:
    """Return the recorded metadata change ``change_id``; raise LookupError if there is none."""
    change = session.get(MetadataChange, change_id)
    if change is None:
        raise LookupError(f"No metadata change #{change_id}.")
    return change


@dataclass(frozen=True)
class BulkResult:
    """What a bulk metadata change did: ids changed, ids already as asked, ids refused with the reason."""

    changed: list[str]
    unchanged: list[str]
    refused: list[tuple[str, str]]


def set_metadata_key(
    session: Session,
    *,
    completion_ids: Iterable[str],
    key: str,
    value: str | None,
    actor: str,
) -> BulkResult:
    """Set ``key`` to ``value`` (``None`` removes it) on each completion, recording each change.

    ``key`` and ``value`` must be clean already. A completion whose metadata would break
    a rule (more than 16 pairs) is left as it is and reported in ``refused`` with the
    rule's message, as is an id that is not live. Nothing commits here: the caller's
    transaction holds every change or none.
    """
    changed: list[str] = []
    unchanged: list[str] = []
    refused: list[tuple[str, str]] = []
    for completion_id in completion_ids:
        try:
            outcome = _set_one_key(session, completion_id=completion_id, key=key, value=value, actor=actor)
        except CompletionNotFound:
            refused.append((completion_id, "Not found: deleted meanwhile, or never stored."))
            continue
        except (ValidationError, PreconditionFailed) as exc:
            refused.append((completion_id, exc.message if isinstance(exc, ValidationError) else str(exc)))
            continue
        (changed if outcome else unchanged).append(completion_id)
    return BulkResult(changed=changed, unchanged=unchanged, refused=refused)


def _set_one_key(session: Session, *, completion_id: str, key: str, value: str | None, actor: str) -> bool:
    """Set or remove one key on the current version of one completion; return whether it changed."""
    for _attempt in range(5):
        row = get_completion(session, completion_id=completion_id)
        before = dict(row.metadata_map or {})
        after = dict(before)
        if value is None:
            after.pop(key, None)
        else:
            after[key] = value
        if after == before:
            return False
        try:
            update_metadata(
                session, completion_id=completion_id, metadata=clean_metadata(after), actor=actor, if_match={etag(row)}
            )
            return True
        except PreconditionFailed:
            # Changed by someone else since we read it: apply the change to what they wrote.
            session.expire(row)
    raise PreconditionFailed(get_completion(session, completion_id=completion_id))
