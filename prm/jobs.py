"""Due background work kept in the database: plan, find due, claim once, finish, plan the next slot.

The queue only carries wake-ups (a job id). Claiming is one conditional UPDATE, so a job enqueued
twice, or by two schedulers, still runs once; a worker that dies mid-job lets its lease lapse and
the job becomes claimable again. Losing Redis therefore loses nothing: the sweeper re-enqueues.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from prm.db import insert_ignore
from prm.models import Job

HEALTH_CHECK = "connection.health"
WRITEBACK_DRAIN = "writeback.drain"


def plan(session: Session, kind: str, subject_id: int, due_at: datetime) -> bool:
    """Plan one slot; planning the same (kind, subject, due_at) again is a no-op."""
    values = {"kind": kind, "subject_id": subject_id, "due_at": due_at, "status": "pending",
              "attempts": 0, "runs": 0}
    return insert_ignore(session, Job.__table__, values, ["kind", "subject_id", "due_at"])  # type: ignore[attr-defined]


def ensure_planned(session: Session, kind: str, subject_ids: list[int], now: datetime) -> int:
    """Give every subject without an open job of `kind` a slot due now; returns how many were planned."""
    if not subject_ids:
        return 0
    open_subjects = set(session.exec(
        select(Job.subject_id).where(Job.kind == kind, col(Job.status).in_(("pending", "running")))
    ))
    planned = 0
    for subject_id in subject_ids:
        if subject_id not in open_subjects and plan(session, kind, subject_id, now):
            planned += 1
    return planned


def wake(session: Session, kind: str, subject_id: int, now: datetime) -> int | None:
    """Have a job of `kind` for the subject due now; returns its id (None while one is running: whatever it
    misses, its next run or the sweeper picks up).

    A pending job due later is brought forward. A slot at exactly `now` that already ran (a frozen clock,
    or two wake-ups in one microsecond) is opened again rather than planned beside, since the slot is unique.
    """
    open_jobs = list(session.exec(select(Job).where(Job.kind == kind, Job.subject_id == subject_id,
                                                    col(Job.status).in_(("pending", "running")))))
    if any(job.status == "running" for job in open_jobs):
        return None
    due_now = [job for job in open_jobs if job.due_at is not None and job.due_at <= now]
    if due_now:
        return due_now[0].id
    taken = session.exec(select(Job).where(Job.kind == kind, Job.subject_id == subject_id, Job.due_at == now)).first()
    if taken is None:
        for job in open_jobs:  # one pending job due later: bring it forward
            job.due_at, job.enqueued_at = now, None
            session.add(job)
            return job.id
    return plan_now(session, kind, subject_id, now)


def plan_now(session: Session, kind: str, subject_id: int, now: datetime) -> int | None:
    """A slot due at `now`: planned, or the finished one already there opened again; returns its id."""
    taken = session.exec(select(Job).where(Job.kind == kind, Job.subject_id == subject_id, Job.due_at == now)).first()
    if taken is None:
        plan(session, kind, subject_id, now)
        session.flush()
        return session.exec(select(Job.id).where(Job.kind == kind, Job.subject_id == subject_id,
                                                 Job.due_at == now)).first()
    if taken.status in ("done", "failed"):
        taken.status, taken.attempts, taken.enqueued_at, taken.lease_until = "pending", 0, None, None
        taken.claimed_by, taken.last_error = None, None
        session.add(taken)
    return taken.id


def due(session: Session, now: datetime, resend_after_s: float, limit: int = 500) -> list[Job]:
    """Jobs to wake up: pending and due, not woken recently; or running with a lapsed lease."""
    resend_before = now - timedelta(seconds=resend_after_s)
    query = (
        select(Job)
        .where(
            or_(
                and_(col(Job.status) == "pending", col(Job.due_at) <= now,
                     or_(col(Job.enqueued_at).is_(None), col(Job.enqueued_at) < resend_before)),
                and_(col(Job.status) == "running", col(Job.lease_until) < now),
            )
        )
        .order_by(col(Job.due_at))
        .limit(limit)
    )
    return list(session.exec(query))


def mark_enqueued(session: Session, job_ids: list[int], now: datetime) -> None:
    if job_ids:
        session.execute(update(Job).where(col(Job.id).in_(job_ids)).values(enqueued_at=now))


def claim(session: Session, job_id: int, worker: str, now: datetime, lease_s: float) -> Job | None:
    """Atomically take the job if it is due and free; None when someone else has it or it is done."""
    result = session.execute(
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.due_at) <= now,
            or_(col(Job.status) == "pending", and_(col(Job.status) == "running", col(Job.lease_until) < now)),
        )
        .values(status="running", claimed_by=worker, lease_until=now + timedelta(seconds=lease_s),
                started_at=now, attempts=Job.attempts + 1)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    session.flush()
    job = session.get(Job, job_id, populate_existing=True)
    return job


def finish(session: Session, job: Job, worker: str, now: datetime) -> bool:
    """Mark the job done if `worker` still holds it; False when its lease was lost meanwhile."""
    result = session.execute(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.status) == "running", col(Job.claimed_by) == worker)
        .values(status="done", finished_at=now, runs=Job.runs + 1, last_error=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail(session: Session, job: Job, worker: str, now: datetime, error: str, retry_in_s: float,
         max_attempts: int) -> None:
    """Give the job back for a later retry, or mark it failed after `max_attempts`."""
    final = job.attempts >= max_attempts
    session.execute(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.claimed_by) == worker)
        .values(status="failed" if final else "pending", last_error=error[:2000], finished_at=now,
                due_at=job.due_at if final else now + timedelta(seconds=retry_in_s),
                enqueued_at=None)
    )


def next_slot(previous_due: datetime, interval_s: float, now: datetime) -> datetime:
    """The next periodic slot: one interval on, or one interval from now if slots were missed.

    Missed slots are skipped, not replayed: a health check for a past instant tells nobody anything.
    """
    candidate = previous_due + timedelta(seconds=interval_s)
    return candidate if candidate > now else now + timedelta(seconds=interval_s)
