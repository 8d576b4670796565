"""The sync job family: keep one due job per enabled stream, run it, plan the next one."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial

from sqlalchemy import func
from sqlmodel import Session, col, select

from prm import jobs, streams
from prm.db import enqueue_after_commit
from prm.models import Connection, Job
from prm.snapshot_models import SyncStream
from workers.runtime import WorkerContext
from workers.sync_engine import run_stream

log = logging.getLogger(__name__)
SYNC_STREAM = "sync.stream"


def plan(ctx: WorkerContext, session: Session) -> None:
    """Every enabled connection with a backend client has its streams, and every enabled stream a job."""
    now = ctx.settings.clock()
    syncing = session.exec(
        select(Connection.id, func.count(col(SyncStream.id)))
        .outerjoin(SyncStream, col(SyncStream.connection_id) == Connection.id)
        .where(col(Connection.enabled).is_(True), col(Connection.backend_client_id).is_not(None))
        .group_by(col(Connection.id)))
    for connection_id, stream_count in syncing:  # the sweeper runs every few seconds: only fill what is missing
        if connection_id is not None and stream_count < len(streams.SYNC_TYPES):
            streams.ensure(session, connection_id)
    stream_ids = [i for i in session.exec(
        select(SyncStream.id).join(Connection, col(Connection.id) == SyncStream.connection_id).where(
            col(SyncStream.enabled).is_(True), col(Connection.enabled).is_(True),
            col(Connection.backend_client_id).is_not(None))) if i is not None]
    jobs.ensure_planned(session, SYNC_STREAM, stream_ids, now)


def wake_streams(ctx: WorkerContext, session: Session, connection_id: int, resource_types: list[str]) -> int:
    """After this session commits, bring the connection's streams of these types forward to now (an EHR told
    us they have news). A stream running at this moment is marked woken, so it runs once more when it ends:
    the change may have come after its queries. Returns how many streams were woken."""
    now = ctx.settings.clock()
    woken = list(session.exec(select(SyncStream).join(Connection, col(Connection.id) == SyncStream.connection_id).where(
        SyncStream.connection_id == connection_id, col(SyncStream.resource_type).in_(resource_types),
        col(SyncStream.enabled).is_(True), col(Connection.enabled).is_(True))))  # a disabled EHR is not heard
    for stream in woken:
        stream.woken_at = now
        session.add(stream)
        job_id = jobs.wake(session, SYNC_STREAM, stream.id or 0, now)
        if job_id is not None:
            enqueue_after_commit(session, partial(ctx.dispatcher.enqueue, "prm.run_job", job_id))
    return len(woken)


def apply_intervals(ctx: WorkerContext, session: Session, changed: list[SyncStream]) -> int:
    """After IT set new intervals (prm.streams.set_interval): a stream whose pending run is due later than its
    last run plus the new interval runs then (now, if that is past); a longer interval applies from the run
    after the pending one. Returns how many runs were brought forward."""
    now = ctx.settings.clock()
    moved = 0
    for stream in changed:
        if stream.id is None or not stream.enabled:
            continue
        due = (stream.last_run_at or now) + timedelta(seconds=stream.interval_s)
        moved += jobs.bring_forward(session, SYNC_STREAM, stream.id, max(due, now))
    return moved


def sync_stream(ctx: WorkerContext, job: Job) -> None:
    """Run the stream, then plan the next run: an interval away when caught up, straight away when time ran
    out or the EHR woke the stream while it ran, and one lease period away when another worker held the stream
    (a dead holder's lease lapses by then; it runs again itself if woken)."""
    started = ctx.settings.clock()
    run = run_stream(ctx, job.subject_id, time_budget_s=min(120.0, ctx.settings.job_lease_s / 2))
    with ctx.db.session() as session:
        stream = session.get(SyncStream, job.subject_id)
        if stream is None or not stream.enabled:
            return
        now = ctx.settings.clock()
        if run.busy:
            due = now + timedelta(seconds=ctx.settings.job_lease_s)
        elif run.caught_up and not (stream.woken_at is not None and stream.woken_at >= started):
            due = now + timedelta(seconds=stream.interval_s)
        else:
            due = now
        if due <= (job.due_at or now):
            due = (job.due_at or now) + timedelta(milliseconds=1)  # a slot is unique per (kind, subject, due)
        jobs.plan(session, SYNC_STREAM, job.subject_id, due)
    log.info("stream %s (%s): %d stored, %d deleted, %d quarantined%s", job.subject_id, run.resource_type,
             run.stored, run.deleted, run.quarantined, "" if run.caught_up else " (more to do)")
