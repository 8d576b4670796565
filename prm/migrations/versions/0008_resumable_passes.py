"""where an unfinished pass goes on (a full re-read, a patient-by-patient pass)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24

The columns are nullable (no pass under way), so existing streams stay valid.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import prm.db

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pass_kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True))
        batch_op.add_column(sa.Column('pass_position', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('pass_started', prm.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.drop_column('pass_started')
        batch_op.drop_column('pass_position')
        batch_op.drop_column('pass_kind')
