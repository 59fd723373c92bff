"""index doses by patient: reading a patient's record must not scan every dose

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 06:15:00

The only index that led with ``dose.patient_id`` was the partial unique index of
the doses in force (``WHERE voided_at IS NULL``), which a query for all of a
patient's doses (voided ones included: the record keeps them) cannot use: at a
million patients every record read, and so every replan, scanned 18 million doses.
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f('ix_dose_patient_id'), 'dose', ['patient_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_dose_patient_id'), table_name='dose')
