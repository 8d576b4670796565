"""rest-hook subscriptions per connection and topic; a stream's wake-up mark

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

Both are new: the table starts empty and the column nullable (never woken), so existing streams stay valid.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import prm.db

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ehr_subscription',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('topic', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('resource_types', sa.JSON(), nullable=False),
    sa.Column('hook_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('secret_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('ehr_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('events_seen', sa.Integer(), nullable=False),
    sa.Column('notifications', sa.Integer(), nullable=False),
    sa.Column('last_heard_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'topic', name='uq_ehr_subscription'),
    sa.UniqueConstraint('hook_key')
    )
    with op.batch_alter_table('ehr_subscription', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ehr_subscription_connection_id'), ['connection_id'], unique=False)
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.add_column(sa.Column('woken_at', prm.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.drop_column('woken_at')
    with op.batch_alter_table('ehr_subscription', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ehr_subscription_connection_id'))
    op.drop_table('ehr_subscription')
