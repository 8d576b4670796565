"""when a stream last read all there was (its lag is measured from then)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24

Streams past their first load take their last success as the best known answer; the others have none yet.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import prm.db

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.add_column(sa.Column('caught_up_at', prm.db.UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE sync_stream SET caught_up_at = last_success_at WHERE phase = 'incremental'")


def downgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.drop_column('caught_up_at')
