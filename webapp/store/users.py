"""The people who sign in to the admin UI: users, sign-in checks and lockout, sessions."""

from __future__ import annotations

import functools
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from ..models import User, UserSession, utcnow
from .base import NameTaken, as_utc, hash_secret, storable


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


class SignInLocked(Exception):
    """Too many failed sign-ins for this username: refused until ``until``, even with the right password."""

    def __init__(self, username: str, until: datetime) -> None:
        super().__init__(f"Too many failed sign-ins for '{username}'.")
        self.username = username
        self.until = until


@functools.cache
def _decoy_password_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def verify_sign_in(session: Session, *, username: str, password: str, now: datetime | None = None) -> User | None:
    """Return the user named ``username`` if ``password`` is theirs, else None. Writes nothing.

    Raises SignInLocked while the username is locked, even for the right password. An
    unknown username costs the same password check, so timing does not tell which exist.
    The slow check runs outside any write transaction; ``record_sign_in`` writes the outcome.
    """
    user = session.scalar(select(User).where(User.username == username)) if storable(username) else None
    if user is None:
        check_password_hash(_decoy_password_hash(), password)
        return None
    if user.locked_until is not None and as_utc(user.locked_until) > (now or utcnow()):
        raise SignInLocked(username, as_utc(user.locked_until))
    return user if check_password(user, password) else None


def record_sign_in(
    session: Session,
    *,
    username: str,
    succeeded: bool,
    max_failures: int,
    lock_for: timedelta,
    now: datetime | None = None,
) -> None:
    """Clear the failed sign-ins of ``username`` after a success, or count one more failure.

    The ``max_failures``-th failure in a row locks the username for ``lock_for``. Counted
    in SQL, so concurrent wrong guesses all count. An unknown username changes nothing.
    """
    if not storable(username):
        return
    if succeeded:
        session.execute(
            update(User)
            .where(User.username == username, (User.failed_logins != 0) | User.locked_until.is_not(None))
            .values(failed_logins=0, locked_until=None)
            .execution_options(synchronize_session=False)
        )
        return
    failures = session.scalar(
        update(User)
        .where(User.username == username)
        .values(failed_logins=User.failed_logins + 1)
        .returning(User.failed_logins)
        .execution_options(synchronize_session=False)
    )
    if failures is not None and failures >= max_failures:
        session.execute(
            update(User)
            .where(User.username == username)
            .values(failed_logins=0, locked_until=(now or utcnow()) + lock_for)
            .execution_options(synchronize_session=False)
        )


def start_user_session(session: Session, *, user_id: int) -> str:
    """Open a sign-in session for ``user_id``; return its token (for the cookie), which is kept only as a hash."""
    token = secrets.token_urlsafe(32)
    session.add(UserSession(id=hash_secret(token), user_id=user_id))
    session.flush()
    return token


def user_for_session(session: Session, *, token: str, max_age: timedelta, now: datetime | None = None) -> User | None:
    """Return the user signed in with ``token``, or None if the session ended, expired or never existed."""
    now = now or utcnow()
    row = session.execute(
        select(User, UserSession.created_at)
        .join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.id == hash_secret(token))
    ).first()
    if row is None or as_utc(row.created_at) + max_age <= now:
        return None
    return row.User


def end_user_session(session: Session, *, token: str) -> None:
    """End the sign-in session ``token`` (a cookie still carrying it no longer signs anyone in)."""
    session.execute(delete(UserSession).where(UserSession.id == hash_secret(token)))


def end_expired_user_sessions(session: Session, *, user_id: int, max_age: timedelta, now: datetime | None = None) -> None:
    """Delete the sessions of ``user_id`` older than ``max_age`` (they can no longer sign anyone in)."""
    cutoff = (now or utcnow()) - max_age
    session.execute(delete(UserSession).where(UserSession.user_id == user_id, UserSession.created_at <= cutoff))
