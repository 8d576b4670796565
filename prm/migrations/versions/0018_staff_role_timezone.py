"""the time zone a PractitionerRole declares; bookings nobody is booked on

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-25

Issue 5 reads the clinic time zone from the `timezone` extension of Organization, Location and
PractitionerRole; roles kept only where they work. A care ticket owned by a role, with no visit, now reads its
dates in the zone the role declares, before its Locations' and Organization's.

An Appointment every patient of which declined kept its first patient as `patient_id` and not among
`declined_patients`, so it showed as that patient's next booking (or a missed one). Such a booking now lists
every patient it names as declined, its `patient_id` too, and is on nobody's sidebar.

Roles synced before this revision hold no zone, and such bookings the old lists: PractitionerRole and
Appointment streams past their first load are asked to read everything again (as 0013 and 0017 did), so both
come right at the next run. So is such a stream part-way through its first load that has stored rows already:
its load goes on from its cursor and would not read them again (0013 and 0017 left those out); it reads
everything once its first load ends.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('staff_role', schema=None) as batch_op:
        batch_op.add_column(sa.Column('timezone', sa.String(length=64), nullable=True))
    op.execute("UPDATE sync_stream SET reload_asked = reload_asked + 1 "
               "WHERE resource_type IN ('PractitionerRole', 'Appointment') "
               "AND (phase = 'incremental' OR resources_synced > 0)")


def downgrade() -> None:
    with op.batch_alter_table('staff_role', schema=None) as batch_op:
        batch_op.drop_column('timezone')
