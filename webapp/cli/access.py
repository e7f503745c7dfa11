"""The commands for access: API keys (``keys``), people (``users``) and the first of each (``bootstrap``)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from .. import store, validation
from ..extensions import db, write_transaction
from ..keycache import forget_api_keys, revocation_notice

keys_cli = AppGroup("keys", help="Create, list and revoke API keys for /v1.")
users_cli = AppGroup("users", help="Manage the people who sign in to the admin UI.")


@keys_cli.command("create")
@click.argument("name")
@click.option("--read-only", is_flag=True, help="The key can list and retrieve, not change.")
def create_key(name: str, read_only: bool) -> None:
    """Create an API key; its secret is printed once, alone on the last line."""
    try:
        name = validation.clean_api_key_name(name)
    except validation.ValidationError as exc:
        raise click.BadParameter(exc.message, param_hint="NAME") from None
    try:
        with write_transaction() as session:
            _key, secret = store.create_api_key(session, name=name, read_only=read_only)
    except store.NameTaken as exc:
        raise click.ClickException(str(exc)) from None
    scope = "read-only" if read_only else "read-write"
    click.echo(f"Created {scope} API key '{name}'. Copy the secret now: it is not shown again.")
    click.echo(secret)


@keys_cli.command("list")
def list_keys() -> None:
    """List API keys: name, scope, created, last used, revoked."""
    keys = store.list_api_keys(db.session)
    if not keys:
        click.echo("No API keys. Create one with: flask --app webapp keys create NAME")
        return
    click.echo(f"{'NAME':<24} {'SCOPE':<10} {'PREFIX':<10} {'CREATED':<20} {'LAST USED':<20} REVOKED")
    for key in keys:
        click.echo(
            f"{key.name:<24} {'read-only' if key.read_only else 'read-write':<10} {key.prefix + '…':<10} "
            f"{_when(key.created_at):<20} {_when(key.last_used_at):<20} {_when(key.revoked_at)}"
        )


@keys_cli.command("revoke")
@click.argument("name")
def revoke_key(name: str) -> None:
    """Revoke an API key: running servers refuse it within API_KEY_CACHE_SECONDS (2 s by default)."""
    try:
        with write_transaction() as session:
            store.revoke_api_key(session, name=name)
    except LookupError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    forget_api_keys()
    click.echo(revocation_notice(name, current_app.config["API_KEY_CACHE_SECONDS"]))


def password_options(command: Any) -> Any:
    """Add ``--password`` and ``--password-stdin`` to a command that sets a password."""
    command = click.option(
        "--password-stdin", "password_stdin", is_flag=True, help="Read the password from the first line of stdin."
    )(command)
    return click.option(
        "--password", help="The password on the command line (it stays in the shell's history: prefer the prompt or --password-stdin)."
    )(command)


def read_password(username: str, *, password: str | None, password_stdin: bool) -> str:
    """Return the new password of ``username``: given, read from stdin, or asked for (hidden,
    twice, again until it is acceptable); ``validation.clean_password`` decides what is."""
    if password is not None and password_stdin:
        raise click.UsageError("Give --password or --password-stdin, not both.")
    min_length = current_app.config["PASSWORD_MIN_LENGTH"]

    def clean(value: str) -> str:
        try:
            return validation.clean_password(value, username=username, min_length=min_length)
        except validation.ValidationError as exc:
            raise click.BadParameter(exc.message, param_hint="password") from None

    if password_stdin:
        return clean(sys.stdin.readline().rstrip("\r\n"))
    if password is not None:
        return clean(password)
    return click.prompt(
        f"Password (at least {min_length} characters)", hide_input=True, confirmation_prompt=True, value_proc=clean
    )


@contextmanager
def reporting_unknown_users() -> Iterator[None]:
    """Turn a name that is no user into the command's error message."""
    try:
        yield
    except store.UserNotFound as exc:
        raise click.ClickException(str(exc)) from None


def clean_username_argument(username: str) -> str:
    """Return ``username`` if the username rule allows it; raise click.BadParameter otherwise."""
    try:
        return validation.clean_username(username)
    except validation.ValidationError as exc:
        raise click.BadParameter(exc.message, param_hint="USERNAME") from None


@users_cli.command("create")
@click.argument("username")
@password_options
def create_user(username: str, password: str | None, password_stdin: bool) -> None:
    """Create a user who can sign in to the admin UI (the password is asked for, hidden, unless given)."""
    username = clean_username_argument(username)
    password = read_password(username, password=password, password_stdin=password_stdin)
    try:
        with write_transaction() as session:
            store.create_user(session, username=username, password=password)
    except store.NameTaken as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created user '{username}'.")


@users_cli.command("passwd")
@click.argument("username")
@password_options
def change_password(username: str, password: str | None, password_stdin: bool) -> None:
    """Set a user's password; every session of theirs ends."""
    with reporting_unknown_users():
        store.get_user(db.session, username=username)  # an unknown name is said before a password is asked for
        password = read_password(username, password=password, password_stdin=password_stdin)
        with write_transaction() as session:
            ended = store.set_password(session, username=username, password=password)
        click.echo(f"Changed the password of '{username}'; {_sessions(ended)} ended.")


@users_cli.command("list")
def list_users() -> None:
    """List users: name, created, live sessions, client addresses throttled for the name now."""
    users = store.list_users(
        db.session, max_age=current_app.permanent_session_lifetime, idle_timeout=current_app.config["SESSION_IDLE_TIMEOUT"]
    )
    if not users:
        click.echo("No users. Create one with: flask --app webapp users create NAME")
        return
    click.echo(f"{'USERNAME':<24} {'CREATED':<20} {'SESSIONS':<9} THROTTLED ADDRESSES")
    for user in users:
        click.echo(f"{user.username:<24} {_when(user.created_at):<20} {user.live_sessions:<9} {user.throttled_addresses}")


@users_cli.command("unlock")
@click.argument("username")
def unlock_user(username: str) -> None:
    """Forget a user's failed sign-ins from every address, so they can sign in again now."""
    with reporting_unknown_users():
        with write_transaction() as session:
            store.get_user(session, username=username)
            forgotten = store.forget_sign_in_attempts(session, username=username)
        click.echo(f"Cleared the sign-in attempts for '{username}' from {forgotten} address{'es' if forgotten != 1 else ''}.")


@users_cli.command("sign-out")
@click.argument("username")
def sign_out_user(username: str) -> None:
    """Sign a user out everywhere: every session of theirs ends."""
    with reporting_unknown_users():
        with write_transaction() as session:
            ended = store.end_user_sessions(session, user_id=store.get_user(session, username=username).id)
        click.echo(f"Signed '{username}' out everywhere; {_sessions(ended)} ended.")


@users_cli.command("delete")
@click.argument("username")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_user(username: str, yes: bool) -> None:
    """Delete a user: their sessions end at once. The history keeps their name."""
    with reporting_unknown_users():
        store.get_user(db.session, username=username)
        if not yes:
            click.confirm(f"Delete user '{username}'?", abort=True)
        with write_transaction() as session:
            store.delete_user(session, username=username)
        click.echo(f"Deleted user '{username}'; their sessions ended.")


def _sessions(count: int) -> str:
    return f"{count} session{'s' if count != 1 else ''}"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@click.command("bootstrap")
def bootstrap_command() -> None:
    """Create a first admin user and API key when there are none, printing their secrets once."""
    created = []
    with write_transaction() as session:
        if store.count_users(session) == 0:
            password = secrets.token_urlsafe(max(12, current_app.config["PASSWORD_MIN_LENGTH"]))
            store.create_user(session, username="admin", password=password)
            created.append(f"Admin user 'admin', password: {password}")
        if store.count_api_keys(session) == 0:
            _key, secret = store.create_api_key(session, name="default")
            created.append(f"API key 'default': {secret}")
    for line in created:
        click.echo(line)
    if created:
        click.echo("Keep these now: they are shown only once. `flask --app webapp users create` and `keys create` make more.")
