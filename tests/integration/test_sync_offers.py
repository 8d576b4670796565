"""A type the EHR does not hold (profile no-related-person: RelatedPerson unlisted, and 404 when asked): its
stream pauses itself with why, rather than fail every run and keep the connection failing; the rest syncs; a
check that finds the type offered resumes it; IT's word replaces the sync's."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from prm import audit, streams
from prm.models import AuditRecord, Job
from prm.snapshot_models import SyncStream
from smart_app.admin_present import sync_summary
from tests.integration.sync_env import SyncEnv, sync_env
from tests.support.processes import run_prm
from tests.support.settings import env_for
from workers.connection_check import check_connection
from workers.sync import SYNC_STREAM

SYNCED = ("Organization", "Location", "PractitionerRole", "Patient", "RelatedPerson", "Encounter", "Appointment")
IT = audit.Actor(kind="admin", name="it", role="it_admin")
PAUSED = ("the EHR refused RelatedPerson (HTTP 404) and its CapabilityStatement lists no RelatedPerson; a check of "
          "the connection that finds it offered resumes it")


def stream_of(env: SyncEnv, resource_type: str) -> SyncStream:
    with env.ctx.db.session() as session:
        [stream] = [s for s in streams.of_connection(session, env.connection_id) if s.resource_type == resource_type]
    return stream


def test_a_type_the_ehr_does_not_hold_pauses_itself_and_the_rest_syncs(tmp_path: Path) -> None:
    with sync_env(tmp_path, profile="no-related-person", patients=70) as fresh:
        profile = check_connection(fresh.ctx, fresh.connection_id)
        assert profile["ok"] and profile["resources"]["RelatedPerson"]["listed"] is False
        assert any(w.startswith("the CapabilityStatement lists no read and search for RelatedPerson")
                   for w in profile["warnings"])
        runs = fresh.run_all(SYNCED)
        assert runs["RelatedPerson"].notes == [PAUSED]
        [exporting] = [run for run in runs.values() if run.companions]
        exported = {exporting.resource_type, *(c.resource_type for c in exporting.companions)}
        assert {"Patient", "Encounter", "Appointment"} <= exported and "RelatedPerson" not in exported, \
            "the export leaves out a type the EHR does not list"
        for resource_type in SYNCED:
            if resource_type != "RelatedPerson":
                assert fresh.snapshot(resource_type) == fresh.server(resource_type), resource_type
        paused = stream_of(fresh, "RelatedPerson")
        assert (paused.enabled, paused.pause_note) == (False, PAUSED)
        assert paused.last_error and "HTTP 404" in paused.last_error, "what the EHR said stays for IT"
        with fresh.ctx.db.session() as session:
            summary = sync_summary(streams.of_connection(session, fresh.connection_id), fresh.ctx.settings.clock(), {})
            [pause] = session.exec(select(AuditRecord).where(AuditRecord.action == "sync.pause")).all()
        assert (summary.failing, summary.streams_paused) == (0, 1), "not failing: nothing to alert on"
        assert (pause.actor, pause.entity, pause.detail) == ("sync", "RelatedPerson",
                                                             "the EHR refused a type it does not offer")
        settings = env_for(fresh.ctx.settings.database_url, fresh.ctx.settings.instance_dir)
        status = run_prm("sync", "status", env=settings, cwd=tmp_path)
        assert status.returncode == 0 and f"[paused: {PAUSED}]" in status.stdout, status.stderr
        again = fresh.run_all(("RelatedPerson",))
        assert again["RelatedPerson"].notes == ["connection or stream disabled"], "it stops asking"

        check_connection(fresh.ctx, fresh.connection_id)  # still not offered: it stays paused
        assert stream_of(fresh, "RelatedPerson").enabled is False
        with fresh.ctx.db.session() as session:  # IT resumes it: IT's word replaces the sync's note
            streams.set_enabled(session, fresh.ctx.settings.clock, IT, fresh.connection_id, True, ["RelatedPerson"])
        assert stream_of(fresh, "RelatedPerson").pause_note is None
        assert fresh.run_all(("RelatedPerson",))["RelatedPerson"].notes == [PAUSED], "refused again: paused again"
        with fresh.ctx.db.session() as session:  # IT pauses it itself: IT's pause now, which no check resumes
            taken = streams.set_enabled(session, fresh.ctx.settings.clock, IT, fresh.connection_id, False,
                                        ["RelatedPerson"])
        assert [s.resource_type for s in taken] == ["RelatedPerson"]
        held = stream_of(fresh, "RelatedPerson")
        assert (held.enabled, held.pause_note) == (False, None)


def test_a_check_that_finds_the_type_offered_resumes_the_stream_the_sync_paused(tmp_path: Path) -> None:
    """The EHR gained the type (an upgrade, a new grant): IT checks the connection, and the stream the sync
    paused runs again from where it stopped, at once; one IT paused stays paused."""
    with sync_env(tmp_path, patients=70) as fresh:
        check_connection(fresh.ctx, fresh.connection_id)
        clock = fresh.ctx.settings.clock
        with fresh.ctx.db.session() as session:
            by_type = {s.resource_type: s for s in streams.ensure(session, fresh.connection_id)}
            streams.pause_refused(session, clock, audit.Actor("system", "sync"), by_type["RelatedPerson"], PAUSED)
            streams.set_enabled(session, clock, IT, fresh.connection_id, False, ["Location"])
        check_connection(fresh.ctx, fresh.connection_id, IT)
        resumed, held = stream_of(fresh, "RelatedPerson"), stream_of(fresh, "Location")
        assert (resumed.enabled, resumed.pause_note, held.enabled) == (True, None, False)
        with fresh.ctx.db.session() as session:
            due = session.exec(select(Job).where(Job.kind == SYNC_STREAM, Job.subject_id == resumed.id,
                                                 Job.status == "pending")).one()
            [resume] = session.exec(select(AuditRecord).where(AuditRecord.action == "sync.resume")).all()
            assert due.due_at is not None and due.due_at <= clock()
        assert (resume.actor, resume.entity) == ("it", "RelatedPerson")
        assert fresh.run_all(("RelatedPerson",))["RelatedPerson"].caught_up
        assert fresh.snapshot("RelatedPerson") == fresh.server("RelatedPerson")
