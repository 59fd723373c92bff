"""PostgreSQL: index the open events' due date as one expression, with its statistics

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26 11:00:00

The worklist reads the open events due by a day: ``status = 'planned' AND due <= ?``.
PostgreSQL's planner takes the two terms as independent: most of a clinic's events
are past (given, done), so "due by today" looks like most of the table, and at a
million patients it estimated about a million rows and scanned all of ``event``.

``ix_event_open_due`` indexes ``CASE WHEN status = 'planned' THEN due END``: the due
date of an open event, NULL for every other. ``ANALYZE`` keeps statistics for an
expression index (not for a partial one), so a query written on the same expression
(``models.OPEN_DUE``) is estimated from the open events' own due dates.

PostgreSQL only: SQLite reads the worklist from ``ix_event_planned_due`` (0012),
whose partial WHERE its planner matches. Alembic's autogenerate cannot compare an
expression index, so ``models.compared`` leaves it out of the models-vs-migrations
comparison.
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("CREATE INDEX ix_event_open_due ON event ((CASE WHEN status = 'planned' THEN due END))")
        op.execute('ANALYZE event')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP INDEX IF EXISTS ix_event_open_due')
