"""patient phone

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 00:50:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('patient', sa.Column('phone', sa.String(length=40), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch copy of `patient` would trip the
    # foreign keys that point at it.
    op.drop_column('patient', 'phone')
