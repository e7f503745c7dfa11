"""sync sources: where `flask sync` stands with each source

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 07:40:00

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('sync_sources',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source_key', sa.String(length=64), nullable=False),
    sa.Column('base_url', sa.Text(), nullable=False),
    sa.Column('selection', sa.Text(), nullable=False),
    sa.Column('last_id', sa.String(length=255), nullable=True),
    sa.Column('full_after', sa.String(length=255), nullable=True),
    sa.Column('mirrored', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source_key')
    )


def downgrade():
    op.drop_table('sync_sources')
