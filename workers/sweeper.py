"""The sweeper: plan periodic work, then wake up every due job. Run by beat or the embedded runner.

It is safe to run twice at once or to crash halfway: planning is idempotent and claiming is atomic.
"""

from __future__ import annotations

import logging

from sqlmodel import col, select

from prm import jobs
from prm.models import Connection
from workers import subscriptions, sync, writeback
from workers.runtime import WorkerContext

log = logging.getLogger(__name__)


def plan_periodic(ctx: WorkerContext) -> None:
    """Every enabled connection always has one health check planned, every sync stream one run, every
    connection with due outbox rows a drain, and every one that takes our Subscriptions a check of them."""
    now = ctx.settings.clock()
    with ctx.db.session() as session:
        enabled = list(session.exec(select(Connection.id).where(col(Connection.enabled).is_(True))))
        jobs.ensure_planned(session, jobs.HEALTH_CHECK, [i for i in enabled if i is not None], now)
        sync.plan(ctx, session)
        writeback.plan(ctx, session)
        subscriptions.plan(ctx, session)


def sweep(ctx: WorkerContext) -> int:
    """Enqueue a wake-up per due job; returns how many were handed to the queue."""
    plan_periodic(ctx)
    now = ctx.settings.clock()
    with ctx.db.session() as session:
        due_ids = [job.id for job in jobs.due(session, now, resend_after_s=ctx.settings.job_lease_s)
                   if job.id is not None]
    sent: list[int] = []
    for job_id in due_ids:
        try:
            ctx.dispatcher.enqueue("prm.run_job", job_id)
        except Exception as exc:
            # The queue is down: the rows stay due and the next sweep tries again. Nothing is lost.
            log.warning("queue unavailable, %d due job(s) left for the next sweep: %s",
                        len(due_ids) - len(sent), type(exc).__name__)
            break
        sent.append(job_id)
    if sent:
        with ctx.db.session() as session:
            jobs.mark_enqueued(session, sent, now)
    return len(sent)
