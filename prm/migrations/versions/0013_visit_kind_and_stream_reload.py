"""what a visit or booking was for, as the EHR words it; a stream can be asked to read everything again

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-24

`type_text` on visits and bookings: the sidebar says what a visit was for ("Check-up (examination)"), which
the stored codes alone could not (a clinic's own code system names its codes only in the EHR).

A stream reads every resource of its type again when asked (`reload_asked` above `reload_served`): IT asks
for it after a restore at the EHR, and an upgrade asks for it when the snapshot keeps a field it did not
before. This one does for Encounter and Appointment streams past their first load, so visits and bookings
synced before it get their words at the next run; until then the sidebar shows them without.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ('visit', 'booking'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('type_text', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reload_asked', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('reload_served', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('reload_serving', sa.Integer(), nullable=True))
    op.execute("UPDATE sync_stream SET reload_asked = reload_asked + 1 "
               "WHERE resource_type IN ('Encounter', 'Appointment') AND phase = 'incremental'")


def downgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.drop_column('reload_serving')
        batch_op.drop_column('reload_served')
        batch_op.drop_column('reload_asked')
    for table in ('visit', 'booking'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('type_text')
