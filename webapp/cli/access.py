"""The commands for access: API keys (``keys``), people (``users``) and the first of each (``bootstrap``)."""

from __future__ import annotations

import secrets
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from .. import store, validation
from ..extensions import db, write_transaction
from ..keycache import forget_api_keys

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
    click.echo(f"Revoked API key '{name}'. Servers refuse it within {current_app.config['API_KEY_CACHE_SECONDS']:g} s.")


@users_cli.command("create")
@click.argument("username")
@click.option("--password", help="Prompted for (hidden) when absent.")
def create_user(username: str, password: str | None) -> None:
    """Create a user who can sign in to the admin UI."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("The password must not be empty.")
    try:
        with write_transaction() as session:
            store.create_user(session, username=username, password=password)
    except store.NameTaken as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created user '{username}'.")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@click.command("bootstrap")
def bootstrap_command() -> None:
    """Create a first admin user and API key when there are none, printing their secrets once."""
    created = []
    with write_transaction() as session:
        if store.count_users(session) == 0:
            password = secrets.token_urlsafe(12)
            store.create_user(session, username="admin", password=password)
            created.append(f"Admin user 'admin', password: {password}")
        if store.count_api_keys(session) == 0:
            _key, secret = store.create_api_key(session, name="default")
            created.append(f"API key 'default': {secret}")
    for line in created:
        click.echo(line)
    if created:
        click.echo("Keep these now: they are shown only once. `flask --app webapp users create` and `keys create` make more.")
