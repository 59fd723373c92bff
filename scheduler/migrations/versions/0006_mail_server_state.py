"""mail server state: connection-level failures and the next probe

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 01:10:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import models.types


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('mail_server',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('down_since', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_probe_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_mail_server'))
    )


def downgrade() -> None:
    op.drop_table('mail_server')
