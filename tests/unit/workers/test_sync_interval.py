"""IT's interval for a stream: a shorter one brings the pending run forward to the last run plus the new
interval (now, if that is past); a longer one waits for the run after; a disabled stream stays put."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest
from sqlmodel import col, select

from prm import audit, connections, jobs, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.errors import ValidationError
from prm.models import AuditRecord, Job
from tests.support.dispatch import RecordingDispatcher
from workers import sync
from workers.runtime import WorkerContext, build


def test_a_shorter_interval_brings_runs_forward_a_longer_one_waits(database: Database, settings: Settings) -> None:
    ctx: WorkerContext = dataclasses.replace(build(settings), dispatcher=RecordingDispatcher())
    now = settings.clock()
    last_run = {"Encounter": now - timedelta(seconds=30), "Patient": now - timedelta(hours=1),
                "Appointment": now - timedelta(minutes=2), "Location": now - timedelta(hours=1)}
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
        ids = {}
        for stream in streams.ensure(session, row.id or 0):
            if stream.resource_type in last_run:
                stream.last_run_at = last_run[stream.resource_type]
                stream.enabled = stream.resource_type != "Location"
                session.add(stream)
                ids[stream.resource_type] = stream.id or 0
                jobs.plan(session, sync.SYNC_STREAM, stream.id or 0, now + timedelta(minutes=5))
        actor = audit.command_line_actor(row.id)
        shorter = streams.set_interval(session, settings.clock, actor, row.id or 0, 60,
                                       ["Encounter", "Patient", "Location"])
        longer = streams.set_interval(session, settings.clock, actor, row.id or 0, 3600, ["Appointment"])
        assert sync.apply_intervals(ctx, session, shorter + longer) == 2
        with pytest.raises(ValidationError, match="30 s to 24 h"):
            streams.set_interval(session, settings.clock, actor, row.id or 0, 10, ["Encounter"])
        assert streams.set_interval(session, settings.clock, actor, row.id or 0, 60, ["Encounter"]) == []

    def due(resource_type: str) -> datetime | None:
        with database.session() as session:
            return session.exec(select(Job.due_at).where(Job.subject_id == ids[resource_type],
                                                         col(Job.status) == "pending")).one()

    assert due("Encounter") == last_run["Encounter"] + timedelta(minutes=1), "its last run plus the new interval"
    assert due("Patient") == now, "that time is past: now"
    assert due("Appointment") == now + timedelta(minutes=5), "a longer interval applies from the run after"
    assert due("Location") == now + timedelta(minutes=5), "a disabled stream does not run"
    with database.session() as session:
        said = sorted((r.entity, r.detail) for r in session.exec(
            select(AuditRecord).where(AuditRecord.action == "sync.interval")))
    assert said == [("Appointment", "3600s"), ("Encounter", "60s"), ("Location", "60s"), ("Patient", "60s")]
