"""told marks: what a pass decided about each event, cleared by triggers when it changes

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 04:00:00

``event.told`` holds one bit per kind of message the pass has decided about the
event at its present date (scheduler.told). ``event_change`` lists the events
that changed or went since the pass last compared them with what their patient
was told. Both are kept by triggers, so no writer of ``event`` or ``patient``
has to know of them: a change of an event's date, status, phase or date stamp
clears its marks (and those of the patient's other loading doses, which decide
"first of the week"), and a change of a patient's address, opt-out, status or
loading-dose choice clears the marks of all their events.
"""
from collections.abc import Sequence
from datetime import date, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EVENT_CHANGED = ("OLD.due IS DISTINCT FROM NEW.due OR OLD.status IS DISTINCT FROM NEW.status"
                  " OR OLD.phase IS DISTINCT FROM NEW.phase OR OLD.due_set_at IS DISTINCT FROM NEW.due_set_at")
_PATIENT_CHANGED = ("OLD.email IS DISTINCT FROM NEW.email OR OLD.opted_out IS DISTINCT FROM NEW.opted_out"
                    " OR OLD.status IS DISTINCT FROM NEW.status"
                    " OR OLD.loading_reminders IS DISTINCT FROM NEW.loading_reminders")
# The patient's other planned loading doses: which of them is first of its week may change.
_SIBLINGS = ("UPDATE event SET told = 0 WHERE patient_id = {row}.patient_id AND kind = 'dose'"
             " AND phase = 'loading' AND status = 'planned' AND told <> 0")

SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER event_told_cleared AFTER UPDATE OF due, status, phase, due_set_at ON event
    WHEN {_EVENT_CHANGED.replace('IS DISTINCT FROM', 'IS NOT')}
    BEGIN
        UPDATE event SET told = 0 WHERE id = NEW.id AND told <> 0;
        INSERT INTO event_change (event_id) SELECT NEW.id
            WHERE NOT EXISTS (SELECT 1 FROM event_change WHERE event_id = NEW.id);
        {_SIBLINGS.format(row='NEW')} AND OLD.kind = 'dose' AND OLD.phase = 'loading';
    END""",
    f"""CREATE TRIGGER event_gone AFTER DELETE ON event
    BEGIN
        INSERT INTO event_change (event_id) SELECT OLD.id
            WHERE NOT EXISTS (SELECT 1 FROM event_change WHERE event_id = OLD.id);
        {_SIBLINGS.format(row='OLD')} AND OLD.kind = 'dose' AND OLD.phase = 'loading';
    END""",
    f"""CREATE TRIGGER patient_told_cleared AFTER UPDATE OF email, opted_out, status, loading_reminders ON patient
    WHEN {_PATIENT_CHANGED.replace('IS DISTINCT FROM', 'IS NOT')}
    BEGIN
        UPDATE event SET told = 0 WHERE patient_id = NEW.id AND told <> 0;
        INSERT INTO event_change (event_id) SELECT e.id FROM event e
            WHERE e.patient_id = NEW.id AND e.status <> 'done'
            AND NOT EXISTS (SELECT 1 FROM event_change c WHERE c.event_id = e.id);
    END""",
)

POSTGRES_TRIGGERS = (
    # BEFORE: the changed row's own marks; AFTER (end of statement): the rest, so a
    # statement that updates several of one patient's rows never meets its own changes.
    """CREATE FUNCTION event_told_cleared() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.told := 0;
        RETURN NEW;
    END $$""",
    f"""CREATE FUNCTION event_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO event_change (event_id) VALUES (OLD.id) ON CONFLICT DO NOTHING;
        IF OLD.kind = 'dose' AND OLD.phase = 'loading' THEN
            {_SIBLINGS.format(row='OLD')};
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION patient_told_cleared() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE event SET told = 0 WHERE patient_id = NEW.id AND told <> 0;
        INSERT INTO event_change (event_id) SELECT id FROM event WHERE patient_id = NEW.id AND status <> 'done'
            ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$""",
    f"""CREATE TRIGGER event_told_cleared BEFORE UPDATE OF due, status, phase, due_set_at ON event
    FOR EACH ROW WHEN ({_EVENT_CHANGED}) EXECUTE FUNCTION event_told_cleared()""",
    f"""CREATE TRIGGER event_changed AFTER UPDATE OF due, status, phase, due_set_at ON event
    FOR EACH ROW WHEN ({_EVENT_CHANGED}) EXECUTE FUNCTION event_changed()""",
    """CREATE TRIGGER event_gone AFTER DELETE ON event FOR EACH ROW EXECUTE FUNCTION event_changed()""",
    f"""CREATE TRIGGER patient_told_cleared AFTER UPDATE OF email, opted_out, status, loading_reminders ON patient
    FOR EACH ROW WHEN ({_PATIENT_CHANGED}) EXECUTE FUNCTION patient_told_cleared()""",
)


def upgrade() -> None:
    op.add_column('event', sa.Column('told', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('ix_event_kind_told_due', 'event', ['kind', 'told', 'due'])
    op.create_table(
        'event_change',
        sa.Column('event_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint('event_id', name=op.f('pk_event_change')),
    )
    # Events told of a date not long passed: the first pass compares them with what was told,
    # as every pass did before, so a move made before this migration is still told.
    op.execute(sa.text(
        "INSERT INTO event_change (event_id) SELECT DISTINCT event_id FROM outbox"
        " WHERE event_id IS NOT NULL AND event_due >= :since"
        " AND kind IN ('dose-reminder', 'lab-reminder', 'changed')"
    ).bindparams(since=date.today() - timedelta(days=2)))
    triggers = POSTGRES_TRIGGERS if op.get_bind().dialect.name == 'postgresql' else SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER patient_told_cleared ON patient")
        for name in ('event_gone', 'event_changed', 'event_told_cleared'):
            op.execute(f"DROP TRIGGER {name} ON event")
        for name in ('patient_told_cleared', 'event_changed', 'event_told_cleared'):
            op.execute(f"DROP FUNCTION {name}()")
    else:
        for name in ('patient_told_cleared', 'event_gone', 'event_told_cleared'):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table('event_change')
    op.drop_index('ix_event_kind_told_due', table_name='event')
    # A plain DROP COLUMN: a batch copy of `event` would drop the other tables' view of it.
    op.drop_column('event', 'told')
