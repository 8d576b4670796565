"""every patient an appointment names, not only its first

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-25

A booking kept only the first patient its Appointment names, so a group session, a couple's or a family's
appointment was missing from every other patient's sidebar (no next booking, no missed one), a Group-scoped
connection dropped it where its first patient was not a member, and erasing that patient took it from the
members booked on it too. `other_patients` holds the others booked on it, `declined_patients` those it names
whose place is declined (not on their sidebar, still in their record); `shared` marks the few rows naming more
than one, indexed, so a patient's bookings are found by their first patient's index and among the shared ones.

Bookings synced before this revision hold one patient; Appointment streams past their first load are asked
to read everything again (as 0013 did), so each shared one gets its patients at the next run.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('booking', schema=None) as batch_op:
        batch_op.add_column(sa.Column('other_patients', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('declined_patients', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('shared', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index('ix_booking_shared', ['connection_id', 'shared', 'start_at'], unique=False)
    op.execute("UPDATE sync_stream SET reload_asked = reload_asked + 1 "
               "WHERE resource_type = 'Appointment' AND phase = 'incremental'")


def downgrade() -> None:
    with op.batch_alter_table('booking', schema=None) as batch_op:
        batch_op.drop_index('ix_booking_shared')
        batch_op.drop_column('shared')
        batch_op.drop_column('declined_patients')
        batch_op.drop_column('other_patients')
