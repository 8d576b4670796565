"""export group per connection; the patients a patient-by-patient stream has read in full

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

The new column is nullable (no Group: system-level export as before), so existing connections stay valid.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('stream_patient',
    sa.Column('stream_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.ForeignKeyConstraint(['stream_id'], ['sync_stream.id'], ),
    sa.PrimaryKeyConstraint('stream_id', 'patient_id')
    )
    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.add_column(sa.Column('export_group', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.drop_column('export_group')

    op.drop_table('stream_patient')
