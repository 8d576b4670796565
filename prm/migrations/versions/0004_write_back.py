"""write-back: outbox drain state, care tickets, outreach messages; connections flagged for IT

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

Columns added to existing tables carry server defaults so rows written before this revision stay valid.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import prm.db

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('care_ticket',
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('priority', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('requester', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('encounter_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('focus', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('business_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('ehr_status', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True),
    sa.Column('due_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('closed_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'business_key', name='uq_care_ticket_key')
    )
    with op.batch_alter_table('care_ticket', schema=None) as batch_op:
        batch_op.create_index('ix_care_ticket_patient', ['connection_id', 'patient_id', 'status'], unique=False)

    op.create_table('outreach_message',
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recipient', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(length=4000), nullable=False),
    sa.Column('encounter_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('based_on', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('business_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('status_reason', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.Column('due_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sent_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ledger', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'business_key', name='uq_outreach_message_key')
    )
    with op.batch_alter_table('outreach_message', schema=None) as batch_op:
        batch_op.create_index('ix_outreach_patient', ['connection_id', 'patient_id', 'status'], unique=False)

    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ticket_routing', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('needs_it', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
        batch_op.add_column(sa.Column('needs_it_at', prm.db.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('outbox_row', schema=None) as batch_op:
        batch_op.add_column(sa.Column('revision', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('sent_revision', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('written_type', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True))
        batch_op.add_column(sa.Column('degraded_reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
        batch_op.add_column(sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column('claim_until', prm.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('outcome_unknown', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('duplicates', sa.JSON(), nullable=False, server_default='[]'))



def downgrade() -> None:
    with op.batch_alter_table('outbox_row', schema=None) as batch_op:
        batch_op.drop_column('duplicates')
        batch_op.drop_column('outcome_unknown')
        batch_op.drop_column('claim_until')
        batch_op.drop_column('claimed_by')
        batch_op.drop_column('degraded_reason')
        batch_op.drop_column('written_type')
        batch_op.drop_column('sent_revision')
        batch_op.drop_column('revision')

    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.drop_column('needs_it_at')
        batch_op.drop_column('needs_it')
        batch_op.drop_column('ticket_routing')

    with op.batch_alter_table('outreach_message', schema=None) as batch_op:
        batch_op.drop_index('ix_outreach_patient')

    op.drop_table('outreach_message')
    with op.batch_alter_table('care_ticket', schema=None) as batch_op:
        batch_op.drop_index('ix_care_ticket_patient')

    op.drop_table('care_ticket')
