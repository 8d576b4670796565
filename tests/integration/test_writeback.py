"""The write-back drain against the real sandbox EHR: exactly one resource per outbox row, by identifier."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_mappings.task import care_ticket_to_task
from prm import care_tickets, connections, outbox
from prm.followup_models import CareTicketCreate
from tests.integration.sync_env import SyncEnv, sync_env
from tests.integration.writeback_env import (
    CLINICIAN,
    checked,
    drain,
    on_server,
    open_tickets,
    outbox_rows,
    record_messages,
)


def task_for(env: SyncEnv, ticket_id: int) -> dict[str, Any]:
    with env.ctx.db.session() as session:
        return care_ticket_to_task(care_tickets.get(session, ticket_id))


def test_tickets_and_messages_are_written_once_each(tmp_path: Path) -> None:
    with sync_env(tmp_path, patients=80) as env:
        checked(env)
        open_tickets(env, 7)
        record_messages(env, 5)
        run = drain(env)
        assert run.written == 12 and run.failed == 0, run
        rows = outbox_rows(env)
        assert {r.status for r in rows} == {"done"}
        assert all(r.fhir_id and r.version_id for r in rows)
        assert on_server(env, "Task") == {f"care-ticket/test-{n}": 1 for n in range(7)}
        assert on_server(env, "Communication") == {f"outreach/test-{n}": 1 for n in range(5)}
        assert drain(env).claimed == 0  # nothing left: draining again writes nothing


def test_task_refused_falls_back_to_communication_and_then_kept(tmp_path: Path) -> None:
    with sync_env(tmp_path, profile="task-writes-refused", patients=80) as env:
        open_tickets(env, 3)
        run = drain(env)  # no capability check yet: the EHR's 403 teaches the drain, which falls back
        assert run.degraded == 3 and run.written == 3, run
        assert on_server(env, "Task") == {}
        assert on_server(env, "Communication") == {f"care-ticket/test-{n}": 1 for n in range(3)}
        rows = outbox_rows(env)
        assert all(r.status == "done" and r.written_type == "Communication" for r in rows)
        assert all(r.degraded_reason and r.degraded_reason.startswith("Task:") for r in rows)

        checked(env)  # now the profile says Task writes are refused: the next ticket goes straight to Communication
        open_tickets(env, 1, start=3)
        run = drain(env)
        assert run.written == 1 and run.degraded == 0
        assert on_server(env, "Communication")["care-ticket/test-3"] == 1

    with sync_env(tmp_path / "kept", profile="task-writes-refused", patients=80) as env:
        env.ctx.settings = replace(env.ctx.settings, writeback_fallbacks="")  # IT configured no fallback
        open_tickets(env, 2)
        run = drain(env)
        assert run.kept == 2 and on_server(env, "Task") == {} and on_server(env, "Communication") == {}
        rows = outbox_rows(env)
        assert {r.status for r in rows} == {"kept"} and all("403" in (r.degraded_reason or "") for r in rows)


def test_copies_made_by_a_racing_ehr_are_reconciled(tmp_path: Path) -> None:
    with sync_env(tmp_path, patients=80) as env:
        checked(env)
        [ticket] = open_tickets(env, 1)
        for _ in range(2):  # what eight racing conditional creates left behind on a real EHR
            resource = task_for(env, ticket.id or 0)
            requests.post(f"{env.stack.fhir_internal_url}/Task", json=resource, timeout=30).raise_for_status()
        run = drain(env)
        assert run.duplicates == 1 and run.written == 1, run
        [row] = outbox_rows(env)
        assert row.status == "done" and len(row.duplicates) == 1
        assert on_server(env, "Task") == {"care-ticket/test-0": 1}
        assert on_server(env, "Task", live_only=False) == {"care-ticket/test-0": 2}  # the other: entered-in-error
        kept = env.read("Task", row.fhir_id or "")
        assert kept["status"] == "ready" and row.duplicates[0] != f"Task/{row.fhir_id}"


def test_the_ehr_completing_a_task_closes_the_ticket_and_edits_are_merged(tmp_path: Path) -> None:
    with sync_env(tmp_path, patients=80) as env:
        checked(env)
        first, second = open_tickets(env, 2)
        drain(env)
        rows = {r.source: r for r in outbox_rows(env)}
        task_one = env.read("Task", rows[f"care_ticket:{first.id}"].fhir_id or "")
        task_two = env.read("Task", rows[f"care_ticket:{second.id}"].fhir_id or "")
        # In the EHR a nurse completes the first Task, and adds a note to the second.
        env.put(task_one | {"status": "completed"})
        env.put(task_two | {"note": [{"text": "Left a voicemail"}]})

        env.run_all(("Task",))  # status back through the sync
        with env.ctx.db.session() as session:
            assert care_tickets.get(session, first.id or 0).status == "done"
            assert care_tickets.get(session, second.id or 0).status == "open"
            care_tickets.set_status(session, env.ctx.settings.clock, care_tickets.get(session, second.id or 0),
                                    "in_progress", CLINICIAN)
        run = drain(env)  # If-Match on the version we wrote -> 412 -> re-read, merge, write
        assert run.written == 1 and run.failed == 0, run
        merged = env.read("Task", task_two["id"])
        assert merged["status"] == "in-progress" and merged["note"] == [{"text": "Left a voicemail"}]
        assert on_server(env, "Task") == {"care-ticket/test-0": 1, "care-ticket/test-1": 1}


@pytest.mark.parametrize(("profile", "written"), [("default", "Task"), ("task-writes-refused", "Communication")])
def test_what_the_ehr_withdrew_is_never_written_again(profile: str, written: str, tmp_path: Path) -> None:
    """In the EHR a clerk marks two of our resources entered-in-error: Tasks, or the Communications tickets fall
    back to where the EHR refuses Tasks. Staff then edit both tickets in fhir-prm: one the sync saw withdrawn
    before the edit, one it had not (the update meets a 412 and reads the withdrawn copy). Neither write lays our
    status over the EHR's word: each row is dead with the reason, for IT, the resources stay entered-in-error,
    and the tickets stay in fhir-prm."""
    with sync_env(tmp_path, profile=profile, patients=80) as env:
        checked(env)
        seen, unseen = open_tickets(env, 2)
        drain(env)
        rows = {r.source: r for r in outbox_rows(env)}
        assert {r.written_type for r in rows.values()} == {written}
        sent = {ticket.id: rows[f"care_ticket:{ticket.id}"].fhir_id or "" for ticket in (seen, unseen)}
        env.put(env.read(written, sent[seen.id]) | {"status": "entered-in-error"})
        env.run_all((written,))  # the sync brings the first back withdrawn
        env.put(env.read(written, sent[unseen.id]) | {"status": "entered-in-error"})
        with env.ctx.db.session() as session:
            for ticket in (seen, unseen):
                care_tickets.set_status(session, env.ctx.settings.clock, care_tickets.get(session, ticket.id or 0),
                                        "in_progress", CLINICIAN)
        run = drain(env)
        assert run.written == 0 and run.dead == 2, run
        for row in outbox_rows(env):
            assert row.status == "dead" and f"withdrew this item's {written}/{row.fhir_id}" in (row.last_error or "")
        assert {env.read(written, fhir_id)["status"] for fhir_id in sent.values()} == {"entered-in-error"}
        with env.ctx.db.session() as session:
            assert {(care_tickets.get(session, t.id or 0).status, care_tickets.get(session, t.id or 0).ehr_status)
                    for t in (seen, unseen)} == {("in_progress", "entered-in-error")}
        assert drain(env).claimed == 0, "not tried again"


def test_a_fallback_communication_dates_the_due_day_where_the_visit_was(tmp_path: Path) -> None:
    """A ticket on a Pune visit due at 20:00 UTC is due the next day in Pune (01:30 IST): the Communication
    that stands in for its Task says that day, with the zone read from the synced Location's extension."""
    with sync_env(tmp_path, profile="task-writes-refused", patients=80) as env:
        env.run_all(("Organization", "Location", "Encounter"))
        with env.ctx.db.session() as session:
            row = connections.get(session, env.connection_id)
            assert row is not None
            spec = CareTicketCreate(patient_id="pat-000010", encounter_id="enc-000010-016", reason="callback-request",
                                    description="Call back about the physiotherapy course",
                                    due_at=datetime(2026, 11, 20, 20, 0, tzinfo=UTC), business_key="care-ticket/pune")
            care_tickets.open_ticket(session, env.ctx.settings.clock, row, spec, CLINICIAN)
        assert drain(env).written == 1
        found = requests.get(f"{env.stack.fhir_internal_url}/Communication",
                             params={"identifier": f"{outbox.IDENTIFIER_SYSTEM}|care-ticket/pune"}, timeout=30).json()
        [entry] = found["entry"]
        assert ", due 2026-11-21)" in entry["resource"]["payload"][0]["contentString"]
