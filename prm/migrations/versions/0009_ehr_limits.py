"""a connection's limits at the EHR: requests in flight and requests a minute, across every worker

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24

Existing connections get the limits every connection had until now (4 in flight, 1,200 a minute).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ehr_max_in_flight', sa.Integer(), nullable=False, server_default='4'))
        batch_op.add_column(sa.Column('ehr_requests_per_minute', sa.Integer(), nullable=False,
                                      server_default='1200'))


def downgrade() -> None:
    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.drop_column('ehr_requests_per_minute')
        batch_op.drop_column('ehr_max_in_flight')
