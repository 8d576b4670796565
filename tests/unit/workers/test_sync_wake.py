"""A stream the EHR wakes while it runs goes again at once: the change may have come after its queries."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlmodel import col, select

from prm import connections, jobs, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.models import Job
from tests.support.dispatch import RecordingDispatcher
from workers import sync
from workers.runtime import WorkerContext, build
from workers.sync_run import StreamRun


@pytest.mark.parametrize("woken_mid_run", [True, False])
def test_the_next_run_is_due_now_only_when_woken_during_this_one(
        database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch, woken_mid_run: bool) -> None:
    ctx: WorkerContext = dataclasses.replace(build(settings), dispatcher=RecordingDispatcher())
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
        stream = next(s for s in streams.ensure(session, row.id or 0) if s.resource_type == "Encounter")
        stream_id, connection_id, interval = stream.id or 0, row.id or 0, stream.interval_s
        jobs.plan(session, sync.SYNC_STREAM, stream_id, settings.clock())
    with database.session() as session:
        job = jobs.claim(session, session.exec(select(Job.id)).one() or 0, "w", settings.clock(), 60)
    assert job is not None

    def caught_up_run(ctx: WorkerContext, stream_id: int, time_budget_s: float) -> StreamRun:
        if woken_mid_run:  # the hook's request, while this run reads the EHR
            with ctx.db.session() as session:
                sync.wake_streams(ctx, session, connection_id, ["Encounter"])
        return StreamRun("Encounter", caught_up=True)

    monkeypatch.setattr(sync, "run_stream", caught_up_run)
    sync.sync_stream(ctx, job)
    with database.session() as session:
        following = session.exec(select(Job).where(col(Job.id) != job.id)).one()
    expected = settings.clock() + (timedelta(0) if woken_mid_run else timedelta(seconds=interval))
    assert following.due_at is not None
    assert abs((following.due_at - expected).total_seconds()) < 1
    assert ctx.dispatcher.sent == []  # type: ignore[attr-defined]  # the job was running: no second wake-up
