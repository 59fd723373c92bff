"""index the outbox by status, next attempt and id: a sender's claim reads a batch

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-26 11:30:00

A sender claims the oldest sendable rows, a batch at a time. It read every row
ready to send and sorted them by id to keep a batch, so each claim cost the whole
queue (190 ms a batch with 133,000 messages queued at a million patients on
PostgreSQL, a fifth of the delivery). The claim now takes the queued rows in
(next attempt, id) order, which ``ix_outbox_status_next_attempt_at_id`` gives as it
stands: it reads the first batch of the index and stops. The index replaces
``ix_outbox_status_next_attempt_at``, whose two columns it begins with.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_outbox_status_next_attempt_at_id', 'outbox', ['status', 'next_attempt_at', 'id'],
                    unique=False)
    op.drop_index('ix_outbox_status_next_attempt_at', table_name='outbox')
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite' and bind.execute(
            sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'")).first():
        op.execute('ANALYZE ix_outbox_status_next_attempt_at_id')


def downgrade() -> None:
    op.create_index('ix_outbox_status_next_attempt_at', 'outbox', ['status', 'next_attempt_at'], unique=False)
    op.drop_index('ix_outbox_status_next_attempt_at_id', table_name='outbox')
