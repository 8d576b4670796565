"""At most one pending job per (kind, subject), however many planners, wake-ups and failures meet.

A second pending job for a stream would be a second periodic chain: each run plans its own next slot, so the
stream would be synced twice as often for ever (and a third race, three times). These tests interleave the
planners for real, in two sessions and two threads, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlmodel import col, select

from prm import jobs
from prm.db import Database
from prm.models import Job

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
SYNC = "sync.stream"


def pending(database: Database, kind: str = SYNC, subject_id: int = 7) -> list[Job]:
    with database.session() as session:
        return list(session.exec(select(Job).where(Job.kind == kind, Job.subject_id == subject_id,
                                                   col(Job.status) == "pending").order_by(col(Job.due_at))))


def test_two_planners_at_once_plan_one_job(database: Database) -> None:
    """Two sweepers (two beat processes, or beat and an embedded runner) each see no open job and each plan
    one at their own `now`: the second insert must find the first, not sit beside it."""
    errors: list[BaseException] = []

    def second_planner() -> None:
        try:
            with database.session() as session:
                jobs.ensure_planned(session, SYNC, [7], NOW + timedelta(milliseconds=3))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with database.session() as session:
        assert jobs.ensure_planned(session, SYNC, [7], NOW) == 1
        other = threading.Thread(target=second_planner)
        other.start()
        time.sleep(0.5)  # the second planner has looked and found no committed job; it inserts or waits
    other.join(timeout=30)
    assert not other.is_alive() and errors == []
    assert [job.due_at for job in pending(database)] == [NOW]


def test_a_wake_up_where_the_slot_at_now_already_ran_leaves_one_pending_job(database: Database) -> None:
    later = NOW + timedelta(minutes=5)
    with database.session() as session:
        jobs.plan(session, SYNC, 7, NOW)
        job = jobs.claim(session, jobs.due(session, NOW, 60)[0].id or 0, "w1", NOW, lease_s=60)
        assert job is not None and jobs.finish(session, job, "w1", NOW)
        jobs.plan(session, SYNC, 7, later)
    with database.session() as session:  # a frozen clock: the wake-up's `now` is the slot that just ran
        woken = jobs.wake(session, SYNC, 7, NOW)
    assert [(j.id, j.due_at) for j in pending(database)] == [(woken, NOW)]


def test_a_failed_run_with_a_next_run_already_planned_gives_way_to_it(database: Database) -> None:
    """A worker whose lease lapsed mid-job planned the next slot; the worker that took the job over then
    fails. Its retry would be a second pending job: the one already planned runs instead."""
    with database.session() as session:
        jobs.plan(session, SYNC, 7, NOW)
        job = jobs.claim(session, jobs.due(session, NOW, 60)[0].id or 0, "w2", NOW, lease_s=60)
        assert job is not None
        jobs.plan(session, SYNC, 7, NOW + timedelta(minutes=5))  # the first holder's next slot
    with database.session() as session:
        jobs.fail(session, job, "w2", NOW, "TimeoutError: the EHR did not answer", retry_in_s=30, max_attempts=5)
    with database.session() as session:
        failed = session.get(Job, job.id)
    assert failed is not None and failed.status == "failed" and failed.last_error is not None
    assert [j.due_at for j in pending(database)] == [NOW + timedelta(minutes=5)]


def test_a_failed_run_alone_is_retried(database: Database) -> None:
    with database.session() as session:
        jobs.plan(session, SYNC, 7, NOW)
        job = jobs.claim(session, jobs.due(session, NOW, 60)[0].id or 0, "w1", NOW, lease_s=60)
        assert job is not None
    with database.session() as session:
        jobs.fail(session, job, "w1", NOW, "TimeoutError", retry_in_s=30, max_attempts=5)
    assert [(j.id, j.due_at) for j in pending(database)] == [(job.id, NOW + timedelta(seconds=30))]


def test_a_shorter_interval_brings_the_pending_run_forward_never_back(database: Database) -> None:
    later, sooner = NOW + timedelta(hours=6), NOW + timedelta(minutes=1)
    with database.session() as session:
        jobs.plan(session, SYNC, 7, later)
        assert jobs.bring_forward(session, SYNC, 7, sooner)
        assert not jobs.bring_forward(session, SYNC, 7, later), "a longer interval waits for the run after"
        assert not jobs.bring_forward(session, SYNC, 8, sooner), "nothing pending: nothing to move"
    assert [j.due_at for j in pending(database)] == [sooner]
    with database.session() as session:  # that exact slot ran before (a frozen clock): the pending job stays
        job = jobs.claim(session, jobs.due(session, sooner, 60)[0].id or 0, "w1", sooner, lease_s=60)
        assert job is not None and jobs.finish(session, job, "w1", sooner)
        jobs.plan(session, SYNC, 7, later)
        assert not jobs.bring_forward(session, SYNC, 7, sooner)
    assert [j.due_at for j in pending(database)] == [later]
