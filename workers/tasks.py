"""Celery tasks (ids only): load, guard, call the domain. The embedded runner calls the same bodies."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import shared_task

from prm import jobs
from prm.errors import loggable_traceback
from prm.models import Job
from workers import subscriptions, sync, writeback
from workers.health_checks import check_connection
from workers.runtime import WorkerContext, context
from workers.sweeper import sweep

log = logging.getLogger(__name__)

MAX_JOB_ATTEMPTS = 8
HANDLERS: dict[str, Callable[[WorkerContext, Job], None]] = {
    jobs.HEALTH_CHECK: check_connection,
    sync.SYNC_STREAM: sync.sync_stream,
    writeback.WRITEBACK_DRAIN: writeback.drain,
    subscriptions.SUBSCRIPTIONS_ENSURE: subscriptions.ensure_job,
}


@shared_task(name="prm.sweep_due_work", ignore_result=True)
def sweep_due_work() -> int:
    return sweep(context())


@shared_task(name="prm.run_job", acks_late=True, ignore_result=True)
def run_job(job_id: int) -> None:
    """Claim the job (once, whoever else was woken for it), run its handler, record the outcome."""
    ctx = context()
    with ctx.db.session() as session:
        job = jobs.claim(session, job_id, ctx.name, ctx.settings.clock(), ctx.settings.job_lease_s)
    if job is None:
        return  # done already, not due, or another worker has it: running twice is harmless
    handler = HANDLERS.get(job.kind)
    try:
        if handler is None:
            raise LookupError(f"no handler for job kind {job.kind!r}")
        handler(ctx, job)
    except Exception as exc:
        log.error("job %s (%s) failed on attempt %s: %s", job.id, job.kind, job.attempts, loggable_traceback(exc))
        with ctx.db.session() as session:
            jobs.fail(session, job, ctx.name, ctx.settings.clock(), f"{type(exc).__name__}: {exc}",
                      retry_in_s=min(30 * 2 ** job.attempts, 3600), max_attempts=MAX_JOB_ATTEMPTS)
        return
    with ctx.db.session() as session:
        if not jobs.finish(session, job, ctx.name, ctx.settings.clock()):
            log.warning("job %s finished after its lease lapsed; another worker may repeat it", job.id)
