"""The ``flask --app webapp ...`` commands: a module per concern, registered here.

``db upgrade`` comes from Flask-Migrate.
"""

from __future__ import annotations

from flask import Flask

from .access import bootstrap_command, keys_cli, users_cli
from .data import export_command, import_command
from .lifecycle import backup_command, purge_command, sync_command


def register_commands(app: Flask) -> None:
    """Attach every command to the app's ``flask`` CLI."""
    app.cli.add_command(keys_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(import_command)
    app.cli.add_command(export_command)
    app.cli.add_command(bootstrap_command)
    app.cli.add_command(purge_command)
    app.cli.add_command(backup_command)
    app.cli.add_command(sync_command)
