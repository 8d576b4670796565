"""why the sync paused a stream itself: the EHR refused a type it does not offer us

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-25

`pause_note` on a stream the sync paused because the EHR refused its type, where the connection's check had
found that type unlisted or not granted (an EHR without guardians, say): it stops asking and stops counting
as failing, and the note says why. IT's own pause or resume clears it; a check that finds the type offered
resumes the stream.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pause_note', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.drop_column('pause_note')
