"""The write-back job family: one drain job per connection with due outbox rows; wake it after a commit."""

from __future__ import annotations

import logging

from sqlmodel import Session, col, select

from prm import jobs, outbox
from prm.db import enqueue_after_commit
from prm.models import Connection, Job
from workers.ehr_access import access_for
from workers.runtime import WorkerContext
from workers.writeback_engine import Drain, DrainRun

log = logging.getLogger(__name__)
WRITEBACK_DRAIN = jobs.WRITEBACK_DRAIN


def plan(ctx: WorkerContext, session: Session) -> None:
    """Every enabled connection with a backend client and due outbox rows has a drain job (a wake-up lost with
    Redis is found here). Without a backend client nothing can be written: the rows wait, listed for IT."""
    now = ctx.settings.clock()
    due = set(outbox.connections_with_due_rows(session, now))
    if not due:
        return
    open_jobs = set(session.exec(select(Job.subject_id).where(
        Job.kind == WRITEBACK_DRAIN, col(Job.status).in_(("pending", "running")))))
    for connection_id in session.exec(select(Connection.id).where(
            col(Connection.enabled).is_(True), col(Connection.backend_client_id).is_not(None),
            col(Connection.id).in_(due - open_jobs))):
        if connection_id is not None:
            jobs.plan_now(session, WRITEBACK_DRAIN, connection_id, now)


def wake(ctx: WorkerContext, session: Session, connection_id: int) -> None:
    """After this session commits, wake a worker for the connection's drain (the sweeper would, a bit later)."""
    job_id = jobs.wake(session, WRITEBACK_DRAIN, connection_id, ctx.settings.clock())
    if job_id is not None:
        enqueue_after_commit(session, lambda: ctx.dispatcher.enqueue("prm.run_job", job_id))


def drain_connection(ctx: WorkerContext, connection_id: int, time_budget_s: float) -> DrainRun | None:
    """Drain the connection's due rows; None when it is gone or disabled (its rows wait, nothing is lost)."""
    with ctx.db.session() as session:
        row = session.get(Connection, connection_id)
    if row is None or not row.enabled:
        return None
    access = access_for(ctx, row)
    return Drain(ctx, row, access.writer, access.client_name).run(time_budget_s)


def drain(ctx: WorkerContext, job: Job) -> None:
    """Drain for a while, then plan the next run: now if rows are left, else when the next retry falls due."""
    run = drain_connection(ctx, job.subject_id, time_budget_s=min(120.0, ctx.settings.job_lease_s / 2))
    if run is None:
        log.info("write-back for connection %s skipped: disabled or gone", job.subject_id)
        return
    with ctx.db.session() as session:
        now = ctx.settings.clock()
        next_due = now if run.more else outbox.next_due(session, job.subject_id)
        if next_due is not None and next_due > now:
            jobs.plan(session, WRITEBACK_DRAIN, job.subject_id, next_due)  # the next retry, not before
        elif next_due is not None:  # rows came due while it ran; with a frozen clock "now" may be this very
            jobs.plan_now(session, WRITEBACK_DRAIN, job.subject_id, now)  # slot, which the sweeper reopens
    log.info("write-back for connection %s: %d written, %d degraded, %d kept, %d failed, %d dead, "
             "%d duplicate(s) reconciled%s", job.subject_id, run.written, run.degraded, run.kept, run.failed,
             run.dead, run.duplicates, " (more to do)" if run.more else "")


__all__ = ["WRITEBACK_DRAIN", "drain", "drain_connection", "plan", "wake"]
