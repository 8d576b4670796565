"""EHR subscriptions of a second kind: plain R4 (criteria) beside topic-based (backport)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24

Every subscription made so far is topic-based.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('ehr_subscription', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=20), nullable=False, server_default='backport'))


def downgrade() -> None:
    with op.batch_alter_table('ehr_subscription', schema=None) as batch_op:
        batch_op.drop_column('kind')
