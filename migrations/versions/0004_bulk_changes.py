"""bulk changes as batches (undo), a batch id on metadata changes; API key names unique among live keys only

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 07:20:00

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
# SQLite's copy of the initial schema has an unnamed UNIQUE(name): batch mode finds it by this name.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _unique_name_constraint() -> str:
    return 'uq_api_keys_name' if op.get_bind().dialect.name == 'sqlite' else 'api_keys_name_key'


def upgrade():
    op.create_table('bulk_changes',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=True),
    sa.Column('value', sa.String(length=512), nullable=True),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('requested', sa.Integer(), nullable=False),
    sa.Column('changed', sa.Integer(), nullable=False),
    sa.Column('unchanged', sa.Integer(), nullable=False),
    sa.Column('refused', sa.JSON(), nullable=False),
    sa.Column('refused_count', sa.Integer(), nullable=False),
    sa.Column('undoes_id', BigId, nullable=True),
    sa.ForeignKeyConstraint(['undoes_id'], ['bulk_changes.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('bulk_changes', schema=None) as batch_op:
        batch_op.create_index('ix_bulk_changes_undoes', ['undoes_id'], unique=False)

    with op.batch_alter_table('metadata_changes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', BigId, nullable=True))
        batch_op.create_index('ix_metadata_changes_batch', ['batch_id', 'id'], unique=False)
        batch_op.create_foreign_key('fk_metadata_changes_batch_id', 'bulk_changes', ['batch_id'], ['id'])

    with op.batch_alter_table('api_keys', schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(_unique_name_constraint(), type_='unique')
        batch_op.create_index(
            'ux_api_keys_live_name', ['name'], unique=True,
            sqlite_where=sa.text('revoked_at IS NULL'), postgresql_where=sa.text('revoked_at IS NULL'),
        )


def downgrade():
    with op.batch_alter_table('api_keys', schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_index('ux_api_keys_live_name')
        batch_op.create_unique_constraint(_unique_name_constraint(), ['name'])

    with op.batch_alter_table('metadata_changes', schema=None) as batch_op:
        batch_op.drop_constraint('fk_metadata_changes_batch_id', type_='foreignkey')
        batch_op.drop_index('ix_metadata_changes_batch')
        batch_op.drop_column('batch_id')

    with op.batch_alter_table('bulk_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_bulk_changes_undoes')

    op.drop_table('bulk_changes')
