"""snapshot and sync streams

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import prm.db

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('booking',
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_updated', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('start_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('start_offset_min', sa.Integer(), nullable=True),
    sa.Column('end_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('end_offset_min', sa.Integer(), nullable=True),
    sa.Column('minutes_duration', sa.Integer(), nullable=True),
    sa.Column('service_type_codes', sa.JSON(), nullable=False),
    sa.Column('appointment_type_codes', sa.JSON(), nullable=False),
    sa.Column('cancelation_reason', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True),
    sa.Column('location_ids', sa.JSON(), nullable=False),
    sa.Column('practitioners', sa.JSON(), nullable=False),
    sa.Column('related_people', sa.JSON(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'fhir_id', name='uq_booking')
    )
    with op.batch_alter_table('booking', schema=None) as batch_op:
        batch_op.create_index('ix_booking_patient', ['connection_id', 'patient_id', 'start_at'], unique=False)

    op.create_table('organization_record',
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_updated', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('part_of', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('timezone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'fhir_id', name='uq_organization_record')
    )
    op.create_table('patient_record',
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_updated', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('deceased', sa.Boolean(), nullable=False),
    sa.Column('display_name', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('birth_date', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
    sa.Column('gender', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('postcode', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('managing_organization', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('replaced_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('telecom', sa.JSON(), nullable=False),
    sa.Column('languages', sa.JSON(), nullable=False),
    sa.Column('general_practitioners', sa.JSON(), nullable=False),
    sa.Column('links', sa.JSON(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'fhir_id', name='uq_patient_record')
    )
    op.create_table('quarantined_resource',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('received_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'resource_type', 'fhir_id', 'version_id', name='uq_quarantine')
    )
    with op.batch_alter_table('quarantined_resource', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quarantined_resource_connection_id'), ['connection_id'], unique=False)

    op.create_table('related_contact',
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_updated', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('display_name', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('relationship_codes', sa.JSON(), nullable=False),
    sa.Column('telecom', sa.JSON(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'fhir_id', name='uq_related_contact')
    )
    op.create_table('site',
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_updated', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('part_of', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('organization_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('timezone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'fhir_id', name='uq_site')
    )
    op.create_table('staff_role',
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_updated', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('practitioner_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('organization_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('location_ids', sa.JSON(), nullable=False),
    sa.Column('codes', sa.JSON(), nullable=False),
    sa.Column('specialty_codes', sa.JSON(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'fhir_id', name='uq_staff_role')
    )
    op.create_table('sync_stream',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('strategy', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('phase', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('interval_s', sa.Integer(), nullable=False),
    sa.Column('cursor', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('cursor_ids', sa.JSON(), nullable=False),
    sa.Column('initial_done_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_run_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_success_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('last_error_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('pages', sa.Integer(), nullable=False),
    sa.Column('resources_synced', sa.Integer(), nullable=False),
    sa.Column('deleted_synced', sa.Integer(), nullable=False),
    sa.Column('quarantined', sa.Integer(), nullable=False),
    sa.Column('reconciled_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('history_mark', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'resource_type', name='uq_sync_stream')
    )
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_stream_connection_id'), ['connection_id'], unique=False)

    op.create_table('visit',
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_updated', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('class_code', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('type_codes', sa.JSON(), nullable=False),
    sa.Column('service_type_codes', sa.JSON(), nullable=False),
    sa.Column('start_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('start_offset_min', sa.Integer(), nullable=True),
    sa.Column('end_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('end_offset_min', sa.Integer(), nullable=True),
    sa.Column('location_ids', sa.JSON(), nullable=False),
    sa.Column('service_provider', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('appointment_ids', sa.JSON(), nullable=False),
    sa.Column('practitioners', sa.JSON(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'fhir_id', name='uq_visit')
    )
    with op.batch_alter_table('visit', schema=None) as batch_op:
        batch_op.create_index('ix_visit_patient', ['connection_id', 'patient_id', 'start_at'], unique=False)

    op.create_table('written_resource',
    sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('last_updated', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('identifier_value', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True),
    sa.Column('business_status', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'resource_type', 'fhir_id', name='uq_written_resource')
    )
    with op.batch_alter_table('written_resource', schema=None) as batch_op:
        batch_op.create_index('ix_written_identifier', ['connection_id', 'resource_type', 'identifier_value'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('written_resource', schema=None) as batch_op:
        batch_op.drop_index('ix_written_identifier')

    op.drop_table('written_resource')
    with op.batch_alter_table('visit', schema=None) as batch_op:
        batch_op.drop_index('ix_visit_patient')

    op.drop_table('visit')
    with op.batch_alter_table('sync_stream', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sync_stream_connection_id'))

    op.drop_table('sync_stream')
    op.drop_table('staff_role')
    op.drop_table('site')
    op.drop_table('related_contact')
    with op.batch_alter_table('quarantined_resource', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quarantined_resource_connection_id'))

    op.drop_table('quarantined_resource')
    op.drop_table('patient_record')
    op.drop_table('organization_record')
    with op.batch_alter_table('booking', schema=None) as batch_op:
        batch_op.drop_index('ix_booking_patient')

    op.drop_table('booking')
