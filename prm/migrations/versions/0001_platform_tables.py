"""platform tables

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import prm.db

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_record',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('occurred_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor_kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=True),
    sa.Column('launch_id', sa.Integer(), nullable=True),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('entity', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.Column('count', sa.Integer(), nullable=True),
    sa.Column('detail', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_record', schema=None) as batch_op:
        batch_op.create_index('ix_audit_patient_time', ['connection_id', 'patient_id', 'occurred_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_record_connection_id'), ['connection_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_record_occurred_at'), ['occurred_at'], unique=False)

    op.create_table('connection',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('iss', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('client_auth', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('scopes', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('default_role', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_secret_enc', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('frame_origins', sa.JSON(), nullable=False),
    sa.Column('role_mapping', sa.JSON(), nullable=False),
    sa.Column('health_status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('health_checked_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('health_detail', sa.JSON(), nullable=False),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_connection_iss'), ['iss'], unique=True)
        batch_op.create_index(batch_op.f('ix_connection_name'), ['name'], unique=True)

    op.create_table('job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('due_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('runs', sa.Integer(), nullable=False),
    sa.Column('enqueued_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_until', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('started_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'subject_id', 'due_at', name='uq_job_slot')
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index('ix_job_due', ['status', 'due_at'], unique=False)

    op.create_table('lease',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('expires_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('local_admin',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('local_admin', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_local_admin_username'), ['username'], unique=True)

    op.create_table('launch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('handle', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('code_verifier_enc', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('authorize_endpoint', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('token_endpoint', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('fhir_user', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('encounter_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('access_token_enc', sqlmodel.sql.sqltypes.AutoString(length=8000), nullable=True),
    sa.Column('refresh_token_enc', sqlmodel.sql.sqltypes.AutoString(length=8000), nullable=True),
    sa.Column('expires_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('context', sa.JSON(), nullable=False),
    sa.Column('failure_reason', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('state')
    )
    with op.batch_alter_table('launch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_launch_connection_id'), ['connection_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_launch_handle'), ['handle'], unique=True)

    op.create_table('outbox_row',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('identifier_system', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('identifier_value', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('due_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'resource_type', 'identifier_system', 'identifier_value', name='uq_outbox_business_identifier')
    )
    with op.batch_alter_table('outbox_row', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_due', ['status', 'due_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('outbox_row', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_due')

    op.drop_table('outbox_row')
    with op.batch_alter_table('launch', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_launch_handle'))
        batch_op.drop_index(batch_op.f('ix_launch_connection_id'))

    op.drop_table('launch')
    with op.batch_alter_table('local_admin', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_local_admin_username'))

    op.drop_table('local_admin')
    op.drop_table('lease')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_due')

    op.drop_table('job')
    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connection_name'))
        batch_op.drop_index(batch_op.f('ix_connection_iss'))

    op.drop_table('connection')
    with op.batch_alter_table('audit_record', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_record_occurred_at'))
        batch_op.drop_index(batch_op.f('ix_audit_record_connection_id'))
        batch_op.drop_index('ix_audit_patient_time')

    op.drop_table('audit_record')
