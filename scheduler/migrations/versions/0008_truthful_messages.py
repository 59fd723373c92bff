"""truthful messages: loading-dose reminder choice, when an event got its date, the pass mark, outbox indexes

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-26 01:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('patient', sa.Column('loading_reminders', sa.String(length=16), nullable=False,
                                       server_default='every-dose'))
    op.add_column('event', sa.Column('due_set_at', models.types.UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        'pass_mark',
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_pass_mark')),
    )
    op.create_index('ix_outbox_kind_event_due_event_id', 'outbox', ['kind', 'event_due', 'event_id'])
    op.create_index('ix_outbox_status_reported', 'outbox', ['status', 'reported'])


def downgrade() -> None:
    op.drop_index('ix_outbox_status_reported', table_name='outbox')
    op.drop_index('ix_outbox_kind_event_due_event_id', table_name='outbox')
    op.drop_table('pass_mark')
    # A plain DROP COLUMN: a batch copy of `patient` would trip the foreign keys to it.
    op.drop_column('patient', 'loading_reminders')
    op.drop_column('event', 'due_set_at')
