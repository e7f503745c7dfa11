"""completion ids follow the id rule: rename the few stored ones that do not

A stored completion's id is 1 to 255 characters with no "/", no whitespace and no control
characters (DESIGN.md "Ids"). Before the rule, import and the upstream could store any id,
and an id such as "imp/messages" could not be retrieved: its URL is the message list of "imp".
This renames each unfit id to a fit one (every unfit character becomes "_", and a random
suffix is added if that name is taken), in the metadata history too, and prints each
renaming so the operator can tell the people who hold the old id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 07:30:00

"""
import re
import secrets

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# The rule as webapp.validation.completion_id_fault had it when this was written: a migration
# must do the same thing whenever it runs, whatever the code around it has become.
MAX_ID_LENGTH = 255
UNFIT_CHARACTER = re.compile(r"[/\s\x00-\x1f\x7f-\x9f]")

completions = sa.table("completions", sa.column("seq", sa.BigInteger), sa.column("id", sa.String))
changes = sa.table("metadata_changes", sa.column("completion_id", sa.String))


def _unfit(completion_id):
    return not completion_id or len(completion_id) > MAX_ID_LENGTH or UNFIT_CHARACTER.search(completion_id) is not None


def _free(connection, candidate):
    return connection.execute(sa.select(completions.c.seq).where(completions.c.id == candidate)).first() is None


def _fitted(connection, old):
    base = UNFIT_CHARACTER.sub("_", old)[:MAX_ID_LENGTH] or "chatcmpl"
    candidate = base
    while not _free(connection, candidate):
        candidate = f"{base[: MAX_ID_LENGTH - 13]}-{secrets.token_hex(6)}"
    return candidate


def upgrade():
    connection = op.get_bind()
    # Only the ids are read; the unfit ones (few, if any) are kept to be renamed afterwards.
    unfit = [
        (seq, completion_id)
        for seq, completion_id in connection.execute(sa.select(completions.c.seq, completions.c.id))
        if _unfit(completion_id)
    ]
    for seq, old in unfit:
        new = _fitted(connection, old)
        connection.execute(sa.update(completions).where(completions.c.seq == seq).values(id=new))
        connection.execute(sa.update(changes).where(changes.c.completion_id == old).values(completion_id=new))
        print(f"Renamed completion {old!r} to {new!r}: ids may not hold '/', whitespace or control characters.")


def downgrade():
    # The old names would break the routes again; renamed ids stay renamed.
    pass
