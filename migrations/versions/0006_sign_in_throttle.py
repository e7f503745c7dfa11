"""sign-in attempts by (username, address); idle time of sessions

The per-user lockout columns go: attempts are counted per (username, client address) in
their own table, so that a stranger's guesses no longer lock the real user out.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 07:40:00

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('sign_in_attempts',
    sa.Column('username', sa.String(length=150), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('window_started', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('username', 'address')
    )
    with op.batch_alter_table('sign_in_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sign_in_attempts_window_started'), ['window_started'], unique=False)

    # Not in batch mode: on SQLite that copies the table and drops the old one, and with
    # foreign keys on, dropping it would cascade to every open session. SQLite 3.35+ drops
    # a plain column in place.
    op.drop_column('users', 'locked_until')
    op.drop_column('users', 'failed_logins')

    # Sessions open at the upgrade count as last seen when they began.
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))
    op.execute('UPDATE user_sessions SET last_seen_at = created_at')
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.alter_column('last_seen_at', existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade():
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.drop_column('last_seen_at')

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_logins', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('sign_in_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sign_in_attempts_window_started'))

    op.drop_table('sign_in_attempts')
