"""Due background work kept in the database: plan, find due, claim once, finish, plan the next slot.

The queue only carries wake-ups (a job id). Claiming is one conditional UPDATE, so a job enqueued
twice, or by two schedulers, still runs once; a worker that dies mid-job lets its lease lapse and
the job becomes claimable again. Losing Redis therefore loses nothing: the sweeper re-enqueues.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from prm.db import insert_ignore
from prm.models import Job

HEALTH_CHECK = "connection.health"
WRITEBACK_DRAIN = "writeback.drain"


def plan(session: Session, kind: str, subject_id: int, due_at: datetime) -> bool:
    """Plan one slot; a no-op when the slot is planned already, or when another job of the subject is pending
    (it runs first and plans the one after itself). True when this call planned it."""
    values = {"kind": kind, "subject_id": subject_id, "due_at": due_at, "status": "pending",
              "attempts": 0, "runs": 0}
    return insert_ignore(session, Job.__table__, values, None)  # type: ignore[attr-defined]


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

    The pending job due later is brought forward. Where the slot at exactly `now` already ran (a frozen clock,
    or two wake-ups in one microsecond), that slot is opened again instead, and the later job gives way to it:
    slots are unique, and so is the subject's pending job.
    """
    open_jobs = list(session.exec(select(Job).where(Job.kind == kind, Job.subject_id == subject_id,
                                                    col(Job.status).in_(("pending", "running")))))
    if any(job.status == "running" for job in open_jobs):
        return None
    waiting = open_jobs[0] if open_jobs else None
    if waiting is not None and waiting.due_at is not None and waiting.due_at <= now:
        return waiting.id
    if waiting is not None:
        if _slot(session, kind, subject_id, now) is None:
            waiting.due_at, waiting.enqueued_at = now, None
            session.add(waiting)
            return waiting.id
        session.execute(delete(Job).where(col(Job.id) == waiting.id, col(Job.status) == "pending"))
    return plan_now(session, kind, subject_id, now)


def bring_forward(session: Session, kind: str, subject_id: int, due_at: datetime) -> bool:
    """Have the subject's pending job due no later than `due_at` (never later than it was): a stream whose
    interval IT shortened. False when nothing moved: no job pending (a running one plans its next slot by then
    itself), it is due sooner already, or that exact slot ran before (slots are unique; the pending job stays)."""
    waiting = session.exec(select(Job).where(Job.kind == kind, Job.subject_id == subject_id,
                                             col(Job.status) == "pending")).first()
    if waiting is None or waiting.due_at is None or waiting.due_at <= due_at:
        return False
    if _slot(session, kind, subject_id, due_at) is not None:
        return False
    waiting.due_at, waiting.enqueued_at = due_at, None
    session.add(waiting)
    return True


def plan_now(session: Session, kind: str, subject_id: int, now: datetime) -> int | None:
    """A slot due at `now`: planned, or the finished one already there opened again. Returns the subject's
    pending job (due later where another planner came first; None where the slot at `now` is running)."""
    taken = _slot(session, kind, subject_id, now)
    if taken is None:
        plan(session, kind, subject_id, now)
    elif taken.status in ("done", "failed"):
        session.execute(
            update(Job)
            .where(col(Job.id) == taken.id, col(Job.status).in_(("done", "failed")), ~_other_pending(Job))
            .values(status="pending", attempts=0, enqueued_at=None, lease_until=None, claimed_by=None,
                    last_error=None)
            .execution_options(synchronize_session=False))
    session.flush()
    return session.exec(select(Job.id).where(Job.kind == kind, Job.subject_id == subject_id,
                                             col(Job.status) == "pending")).first()


def _slot(session: Session, kind: str, subject_id: int, due_at: datetime) -> Job | None:
    return session.exec(select(Job).where(Job.kind == kind, Job.subject_id == subject_id,
                                          Job.due_at == due_at)).first()


def _other_pending(job: Any) -> Any:
    """True where another job of the same (kind, subject) as `job`'s row is pending; for statements that
    would make that row pending (one statement, so SQLite's writer lock makes the check and the change one)."""
    other = aliased(Job)
    return exists().where(other.kind == job.kind, other.subject_id == job.subject_id, col(other.status) == "pending",
                          other.id != job.id)


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


def waiting(session: Session, now: datetime) -> list[tuple[str, int, datetime]]:
    """(kind, jobs, the oldest's due time) of the jobs due by `now` that no worker has taken: for monitoring,
    which sees stopped workers or a scheduler gone here long before any stream's lag grows."""
    query = (select(Job.kind, func.count(), func.min(Job.due_at))
             .where(col(Job.status) == "pending", col(Job.due_at) <= now).group_by(col(Job.kind)))
    return [(str(kind), int(count), oldest) for kind, count, oldest in session.exec(query) if oldest is not None]


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
    """Give the job back for a later retry, or mark it failed after `max_attempts`, or when another job of the
    subject is pending already (a worker whose lease lapsed planned it): that one runs instead of a retry."""
    final = job.attempts >= max_attempts
    retry_due = now + timedelta(seconds=retry_in_s)
    gives_way = _other_pending(Job)
    session.execute(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.claimed_by) == worker)
        .values(status="failed" if final else case((gives_way, "failed"), else_="pending"),
                due_at=job.due_at if final else case((gives_way, job.due_at), else_=retry_due),
                last_error=error[:2000], finished_at=now, enqueued_at=None)
        .execution_options(synchronize_session=False)
    )


def next_slot(previous_due: datetime, interval_s: float, now: datetime) -> datetime:
    """The next periodic slot: one interval on, or one interval from now if slots were missed.

    Missed slots are skipped, not replayed: a health check for a past instant tells nobody anything.
    """
    candidate = previous_due + timedelta(seconds=interval_s)
    return candidate if candidate > now else now + timedelta(seconds=interval_s)
