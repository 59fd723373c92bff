"""corrections: void records, move events

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-26 01:00:00

A record entered in error (a dose, lab results, a decision) is kept and marked
void (``voided_at``, ``voided_by``, ``void_reason``). A day with a voided dose
may take the real one, so the one-dose-a-day rule holds for doses in force
only (a partial unique index). ``event_move`` keeps each move of a planned event.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import models.types

revision: str = '0007'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VOIDABLE = ('dose', 'lab_result', 'decision')
_IN_FORCE = sa.text('voided_at IS NULL')


def upgrade() -> None:
    for table in _VOIDABLE:
        op.add_column(table, sa.Column('voided_at', models.types.UTCDateTime(timezone=True), nullable=True))
        op.add_column(table, sa.Column('voided_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        op.add_column(table, sa.Column('void_reason', sqlmodel.sql.sqltypes.AutoString(length=400),
                                       nullable=True))
    # `dose` is referenced by no other table, so SQLite may copy it to drop the constraint.
    with op.batch_alter_table('dose', schema=None) as batch_op:
        batch_op.drop_constraint('uq_dose_patient_id_given_on', type_='unique')
    op.create_index('ux_dose_patient_id_given_on_in_force', 'dose', ['patient_id', 'given_on'], unique=True,
                    sqlite_where=_IN_FORCE, postgresql_where=_IN_FORCE)
    op.create_table(
        'event_move',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('patient_id', sa.Integer(), nullable=False),
        sa.Column('event_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('moved_from', sa.Date(), nullable=False),
        sa.Column('moved_to', sa.Date(), nullable=False),
        sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=True),
        sa.Column('recorded_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('recorded_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_event_move_patient_id_patient')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_event_move')),
    )
    op.create_index(op.f('ix_event_move_patient_id'), 'event_move', ['patient_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_event_move_patient_id'), table_name='event_move')
    op.drop_table('event_move')
    op.drop_index('ux_dose_patient_id_given_on_in_force', table_name='dose')
    # The old schema cannot tell a voided record from one in force: voided ones go
    # (a voided record must never count again), and one dose a day holds again.
    for table in _VOIDABLE:
        op.execute(f"DELETE FROM {table} WHERE voided_at IS NOT NULL")
    with op.batch_alter_table('dose', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_dose_patient_id_given_on', ['patient_id', 'given_on'])
    for table in _VOIDABLE:
        # Plain DROP COLUMN (SQLite 3.35+): no copy of a table others point at.
        op.drop_column(table, 'void_reason')
        op.drop_column(table, 'voided_by')
        op.drop_column(table, 'voided_at')
