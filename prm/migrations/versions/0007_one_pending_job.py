"""at most one pending job per (kind, subject)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24

Two planners that met could leave two pending jobs for one subject (a stream synced by two periodic chains).
Such duplicates are removed first, keeping the one due soonest, so the unique partial index can be built on
a database that already has them.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.execute(
        "DELETE FROM job WHERE status = 'pending' AND EXISTS (SELECT 1 FROM job AS sooner"
        " WHERE sooner.kind = job.kind AND sooner.subject_id = job.subject_id AND sooner.status = 'pending'"
        " AND (sooner.due_at < job.due_at OR (sooner.due_at = job.due_at AND sooner.id < job.id)))")
    op.create_index('uq_job_one_pending', 'job', ['kind', 'subject_id'], unique=True,
                    sqlite_where=PENDING, postgresql_where=PENDING)


def downgrade() -> None:
    op.drop_index('uq_job_one_pending', table_name='job')
