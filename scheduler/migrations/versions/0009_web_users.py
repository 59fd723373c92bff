"""web users: names, roles, argon2 hashes and lockout

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-26 01:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import models.types

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'app_user',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('failed_logins', sa.Integer(), nullable=False),
        sa.Column('locked_until', models.types.UTCDateTime(), nullable=True),
        sa.Column('created_at', models.types.UTCDateTime(), nullable=False),
        sa.Column('last_login_at', models.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_app_user')),
    )
    op.create_index(op.f('ix_app_user_name'), 'app_user', ['name'], unique=True)


def downgrade() -> None:
    op.drop_index(op.f('ix_app_user_name'), table_name='app_user')
    op.drop_table('app_user')
