"""whether the EHR answers a search naming several patients in full, per stream

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-25

`patient_lists` on a stream that reads patient by patient (or reads a Group's newcomers whole): what the EHR
answered when the sync last asked whether a search of the stream's type may name up to fifty patients at once
(workers.patient_lists), with when. None until asked; a check of the connection clears it, so an upgraded EHR
is asked again.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_lists', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.drop_column('patient_lists')
