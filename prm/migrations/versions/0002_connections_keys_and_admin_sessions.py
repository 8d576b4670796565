"""connections keys and admin sessions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import prm.db

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('admin_session',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('admin_id', sa.Integer(), nullable=False),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['admin_id'], ['local_admin.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('admin_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_admin_session_admin_id'), ['admin_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_admin_session_token_hash'), ['token_hash'], unique=True)

    op.create_table('signing_key',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('kid', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('alg', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('private_key_enc', sqlmodel.sql.sqltypes.AutoString(length=8000), nullable=False),
    sa.Column('public_jwk', sa.JSON(), nullable=False),
    sa.Column('created_at', prm.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('retired_at', prm.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connection.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('signing_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signing_key_connection_id'), ['connection_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_signing_key_kid'), ['kid'], unique=True)

    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.add_column(sa.Column('clinics', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('signing_alg', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False, server_default='RS384'))
        batch_op.add_column(sa.Column('backend_client_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column('backend_auth', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True))
        batch_op.add_column(sa.Column('backend_client_secret_enc', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True))
        batch_op.add_column(sa.Column('backend_scopes', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('capability_profile', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('capability_checked_at', prm.db.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('launch', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refreshing_until', prm.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('ended_at', prm.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('launch', schema=None) as batch_op:
        batch_op.drop_column('ended_at')
        batch_op.drop_column('refreshing_until')

    with op.batch_alter_table('connection', schema=None) as batch_op:
        batch_op.drop_column('capability_checked_at')
        batch_op.drop_column('capability_profile')
        batch_op.drop_column('backend_scopes')
        batch_op.drop_column('backend_client_secret_enc')
        batch_op.drop_column('backend_auth')
        batch_op.drop_column('backend_client_id')
        batch_op.drop_column('signing_alg')
        batch_op.drop_column('clinics')

    with op.batch_alter_table('signing_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signing_key_kid'))
        batch_op.drop_index(batch_op.f('ix_signing_key_connection_id'))

    op.drop_table('signing_key')
    with op.batch_alter_table('admin_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_admin_session_token_hash'))
        batch_op.drop_index(batch_op.f('ix_admin_session_admin_id'))

    op.drop_table('admin_session')
