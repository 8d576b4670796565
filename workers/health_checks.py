"""The periodic connection health check: discovery and metadata reachable, result stored on the row."""

from __future__ import annotations

import logging

from connector import health
from prm import connections, jobs
from prm.models import Job
from workers.runtime import WorkerContext

log = logging.getLogger(__name__)


def check_connection(ctx: WorkerContext, job: Job) -> None:
    """Probe the connection now, store the report, and plan the next slot in the same commit."""
    with ctx.db.session() as session:
        row = connections.get(session, job.subject_id)
        iss = row.iss if row is not None and row.enabled else None
    if iss is None:
        return  # removed or disabled since planning: nothing to check, nothing to plan
    report = health.check(ctx.http, iss, ctx.settings.http_timeout_s)
    log.info("connection %s health: %s", job.subject_id, "ok" if report.ok else "failing")
    with ctx.db.session() as session:
        row = connections.get(session, job.subject_id)
        if row is None:
            return
        connections.record_health(session, ctx.settings.clock, row, report.ok, report.detail)
        previous_due = job.due_at or ctx.settings.clock()
        jobs.plan(session, jobs.HEALTH_CHECK, job.subject_id,
                  jobs.next_slot(previous_due, ctx.settings.health_check_interval_s, ctx.settings.clock()))
