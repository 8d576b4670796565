"""A stream IT paused gets no run planned, and a run already due ends without asking the EHR; resumed, the
sweeper plans it at once. Both audited."""

from __future__ import annotations

import dataclasses

from sqlmodel import col, select

from prm import audit, connections, jobs, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.models import AuditRecord, Job
from prm.snapshot_models import SyncStream
from tests.support.dispatch import RecordingDispatcher
from workers import sync
from workers.runtime import WorkerContext, build


def planned_types(database: Database) -> set[str]:
    with database.session() as session:
        pending = select(Job.subject_id).where(Job.kind == sync.SYNC_STREAM, col(Job.status) == "pending")
        return set(session.exec(select(SyncStream.resource_type).where(col(SyncStream.id).in_(pending))))


def test_a_paused_stream_is_not_planned_nor_run_and_resumes_at_once(database: Database, settings: Settings) -> None:
    ctx: WorkerContext = dataclasses.replace(build(settings), dispatcher=RecordingDispatcher())
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c",
                                                            backend_client_id="prm-backend",
                                                            backend_auth="private_key_jwt"))
        connection_id = row.id or 0
        actor = audit.command_line_actor(connection_id)
        sync.plan(ctx, session)  # every stream has a run due: the RelatedPerson one is due already
        [paused] = streams.set_enabled(session, settings.clock, actor, connection_id, False, ["RelatedPerson"])
        assert streams.set_enabled(session, settings.clock, actor, connection_id, False, ["RelatedPerson"]) == []
    with database.session() as session:
        due = next(j for j in jobs.due(session, settings.clock(), 60) if j.subject_id == paused.id)
        job = jobs.claim(session, due.id or 0, "w", settings.clock(), 60)
    assert job is not None
    sync.sync_stream(ctx, job)  # the run due before the pause ends at once: no EHR was asked (none exists here)
    with database.session() as session:
        assert jobs.finish(session, job, "w", settings.clock())
        stream = session.get(SyncStream, paused.id)
        assert stream is not None and stream.last_run_at is None and stream.last_error is None
        sync.plan(ctx, session)
    assert "RelatedPerson" not in planned_types(database) and "Patient" in planned_types(database)

    with database.session() as session:  # as the page and the CLI resume it: its run due now
        streams.set_enabled(session, settings.clock, actor, connection_id, True, ["RelatedPerson"])
        assert sync.wake_streams(ctx, session, connection_id, ["RelatedPerson"]) == 1
    assert "RelatedPerson" in planned_types(database)
    with database.session() as session:
        said = [(r.action, r.entity) for r in session.exec(
            select(AuditRecord).where(col(AuditRecord.action).startswith("sync.")).order_by(col(AuditRecord.id)))]
    assert said == [("sync.pause", "RelatedPerson"), ("sync.resume", "RelatedPerson")]
