"""index the open events by due date, and the outbox rows whose bodies are kept

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 07:20:00

``ix_event_planned_due`` holds the planned events only (``WHERE status =
'planned'``), by (status, due, patient): the worklist and the digest read the open
events due in a window. The queries say ``status = 'planned'`` with the literal, so
both databases match the index's WHERE; a count of open events of active patients
reads the index alone (index-only on PostgreSQL, a covering index on SQLite). At a
million patients PostgreSQL read those windows with a parallel scan of all of
``event`` through ``ix_event_status_due``, which holds every event.

``ix_outbox_created_at_body_kept`` holds the messages whose bodies are still kept
(``WHERE body_text <> ''``): the daily purge clears old bodies, and a cleared row
leaves the index, so the purge reads what is left to clear instead of every
finished message ever sent.

On SQLite, a database that has statistics (``sqlite_stat1``, written by
``ANALYZE``) gets them for the two new indexes too: without them its planner
would weigh the new indexes by guesses against measured old ones.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = sa.text("status = 'planned'")
BODY_KEPT = sa.text("body_text <> ''")
NEW = ('ix_event_planned_due', 'ix_outbox_created_at_body_kept')


def upgrade() -> None:
    op.create_index('ix_event_planned_due', 'event', ['status', 'due', 'patient_id'], unique=False,
                    sqlite_where=OPEN, postgresql_where=OPEN)
    op.create_index('ix_outbox_created_at_body_kept', 'outbox', ['created_at'], unique=False,
                    sqlite_where=BODY_KEPT, postgresql_where=BODY_KEPT)
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite' and bind.execute(
            sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'")).first():
        for index in NEW:
            op.execute(f'ANALYZE {index}')


def downgrade() -> None:
    op.drop_index('ix_outbox_created_at_body_kept', table_name='outbox')
    op.drop_index('ix_event_planned_due', table_name='event')
