"""The people who sign in to the admin UI: users, the sign-in throttle, sessions."""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from ..models import SignInAttempts, User, UserSession, utcnow
from .base import NameTaken, as_utc, hash_secret, storable

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
    user = session.scalar(select(User).where(User.username == username)) if storable(username) else None
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
    return [UserSummary(name, as_utc(created), sessions, addresses) for name, created, sessions, addresses in rows]


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
    return SignInAttempt(number=number, window_ends=as_utc(started) + window)


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
    user = session.scalar(select(User).where(User.username == username)) if storable(username) else None
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
    if row is None or as_utc(row.created_at) + max_age <= now or as_utc(row.last_seen_at) + idle_timeout <= now:
        return None
    return SignedIn(user=row.User, last_seen_at=as_utc(row.last_seen_at))


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
