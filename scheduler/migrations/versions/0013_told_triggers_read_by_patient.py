"""told triggers read one patient's events: never every patient's planned doses

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 08:10:00

When an event changes, the SQLite triggers of 0010 clear the told marks of the
patient's other planned loading doses. Their condition named the kind, phase and
status as well as the patient, and on a database without statistics (a clinic
that never ran ``ANALYZE``) SQLite served it from the (status, kind, due) index:
every patient's planned doses, once per event changed (``cobalt give`` took
~117 ms of CPU at 2,000 patients, growing with the clinic). The terms other than
the patient are written ``+kind``, ``+phase``, ``+status`` here, which no index
may serve, so the only index left is the patient's. PostgreSQL's triggers are
unchanged (its planner has statistics from autovacuum).
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHANGED = ("OLD.due IS NOT NEW.due OR OLD.status IS NOT NEW.status"
            " OR OLD.phase IS NOT NEW.phase OR OLD.due_set_at IS NOT NEW.due_set_at")


def _triggers(plus: str) -> tuple[str, str]:
    """The two SQLite triggers that clear the siblings' marks; ``plus`` is "+" to keep
    every index but the patient's out of their condition, "" as 0010 wrote them."""
    siblings = ("UPDATE event SET told = 0 WHERE patient_id = {row}.patient_id"
                f" AND {plus}kind = 'dose' AND {plus}phase = 'loading' AND {plus}status = 'planned'"
                " AND told <> 0 AND OLD.kind = 'dose' AND OLD.phase = 'loading'")
    return (
        f"""CREATE TRIGGER event_told_cleared AFTER UPDATE OF due, status, phase, due_set_at ON event
    WHEN {_CHANGED}
    BEGIN
        UPDATE event SET told = 0 WHERE id = NEW.id AND told <> 0;
        INSERT INTO event_change (event_id) SELECT NEW.id
            WHERE NOT EXISTS (SELECT 1 FROM event_change WHERE event_id = NEW.id);
        {siblings.format(row='NEW')};
    END""",
        f"""CREATE TRIGGER event_gone AFTER DELETE ON event
    BEGIN
        INSERT INTO event_change (event_id) SELECT OLD.id
            WHERE NOT EXISTS (SELECT 1 FROM event_change WHERE event_id = OLD.id);
        {siblings.format(row='OLD')};
    END""",
    )


def _replace(plus: str) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    op.execute("DROP TRIGGER event_told_cleared")
    op.execute("DROP TRIGGER event_gone")
    for statement in _triggers(plus):
        op.execute(statement)


def upgrade() -> None:
    _replace("+")


def downgrade() -> None:
    _replace("")
