"""Care tickets, outreach messages and their outbox rows, on SQLite and PostgreSQL: one commit per action,
idempotent by business key, owner and due date from routing and SLA, claims that never overlap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from prm import care_tickets, connections, jobs, outbox, outreach, snapshots
from prm.audit import Actor
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.errors import ConflictError, ValidationError
from prm.followup_models import CareTicketCreate, OutreachMessageCreate
from prm.models import AuditRecord, Connection, Job, OutboxRow
from prm.same_person import same_person
from prm.snapshot_models import PatientRecordCreate
from smart_app.api_views import ticket_json

CLINICIAN = Actor(kind="user", name="Practitioner/prac-rdc-01", role="clinician", connection_id=None)
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def add_connection(database: Database, settings: Settings, **routing: str) -> Connection:
    spec = connections.ConnectionSpec(
        name="riverside", iss="https://ehr.example/fhir", client_id="fhir-prm",
        clinics=({"organization": "Organization/org-riverside-dental", "name": "Riverside Dental",
                  "timezone": "Europe/London"},), ticket_routing=dict(routing))
    with database.session() as session:
        return connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys), spec)


def ticket_spec(**changes: object) -> CareTicketCreate:
    values: dict[str, object] = {"patient_id": "pat-000037", "reason": "negative-feedback",
                                 "description": "Call the patient about the long wait at her last visit"}
    values.update(changes)
    return CareTicketCreate(**values)  # type: ignore[arg-type]


def test_opening_a_ticket_commits_ticket_outbox_row_job_and_audit_together(database: Database,
                                                                           settings: Settings) -> None:
    connection = add_connection(database, settings, **{"negative-feedback": "PractitionerRole/prole-rdc-03"})
    with database.session() as session:
        ticket, created = care_tickets.open_ticket(session, settings.clock, connection,
                                                   ticket_spec(priority="urgent"), CLINICIAN)
    assert created
    assert ticket.owner == "PractitionerRole/prole-rdc-03"  # the routing rule for the reason
    assert ticket.requester == "Practitioner/prac-rdc-01"  # the launched user who asked
    assert ticket.due_at == NOW + care_tickets.SLA["urgent"]
    with database.session() as session:
        rows = list(session.exec(select(OutboxRow)))
        assert [(r.resource_type, r.identifier_value, r.source, r.status) for r in rows] == [
            ("Task", ticket.business_key, f"care_ticket:{ticket.id}", "pending")]
        assert rows[0].identifier_system == outbox.IDENTIFIER_SYSTEM
        assert [j.kind for j in session.exec(select(Job))] == [jobs.WRITEBACK_DRAIN]
        assert [a.action for a in session.exec(select(AuditRecord))] == ["care_ticket.open"]


def test_the_same_business_key_opens_one_ticket(database: Database, settings: Settings) -> None:
    connection = add_connection(database, settings)
    with database.session() as session:
        first, _ = care_tickets.open_ticket(session, settings.clock, connection, ticket_spec(business_key="k-1"),
                                            CLINICIAN)
        again, created = care_tickets.open_ticket(session, settings.clock, connection,
                                                  ticket_spec(business_key="k-1"), CLINICIAN)
    assert first.id == again.id and not created
    assert first.owner == "Organization/org-riverside-dental"  # no route: the clinic
    with database.session() as session:
        assert len(list(session.exec(select(OutboxRow)))) == 1
        assert len(list(session.exec(select(AuditRecord)))) == 1


@pytest.mark.parametrize("changes, message", [
    ({"reason": "gossip"}, "reason must be one of"),
    ({"priority": "asap"}, "priority must be one of"),
    ({"description": "   "}, "description"),
    ({"patient_id": "pat 37"}, "FHIR id"),
    ({"owner": "https://elsewhere/Practitioner/1"}, "FHIR reference"),
    ({"business_key": "key with spaces"}, "business key"),
])
def test_bad_ticket_input_is_refused_and_nothing_is_written(database: Database, settings: Settings,
                                                           changes: dict[str, object], message: str) -> None:
    connection = add_connection(database, settings)
    with pytest.raises(ValidationError, match=message), database.session() as session:
        care_tickets.open_ticket(session, settings.clock, connection, ticket_spec(**changes), CLINICIAN)
    with database.session() as session:
        assert list(session.exec(select(OutboxRow))) == []


def test_a_status_change_rearms_the_same_outbox_row(database: Database, settings: Settings) -> None:
    connection = add_connection(database, settings)
    with database.session() as session:
        ticket, _ = care_tickets.open_ticket(session, settings.clock, connection, ticket_spec(), CLINICIAN)
        row = session.exec(select(OutboxRow)).one()
        outbox.settle_written(row, NOW, fhir_id="task-1", version_id="1", written_type="Task", revision=row.revision)
        session.add(row)
    with database.session() as session:
        ticket = care_tickets.get(session, ticket.id or 0)
        care_tickets.set_status(session, settings.clock, ticket, "done", CLINICIAN)
    with database.session() as session:
        row = session.exec(select(OutboxRow)).one()
        assert (row.status, row.revision, row.sent_revision, row.fhir_id) == ("pending", 2, 1, "task-1")
        assert care_tickets.get(session, ticket.id or 0).closed_at == NOW


def test_following_the_ehr_moves_the_ticket_without_a_write(database: Database, settings: Settings) -> None:
    connection = add_connection(database, settings)
    with database.session() as session:
        ticket, _ = care_tickets.open_ticket(session, settings.clock, connection, ticket_spec(), CLINICIAN)
    with database.session() as session:
        ticket = care_tickets.get(session, ticket.id or 0)
        assert care_tickets.follow_ehr(session, settings.clock, ticket, "done", "completed")
        assert not care_tickets.follow_ehr(session, settings.clock, ticket, "done", "completed")
    with database.session() as session:
        assert care_tickets.get(session, ticket.id or 0).status == "done"
        assert session.exec(select(OutboxRow)).one().revision == 1  # no new write for a change that came from it


def test_outreach_messages_are_recorded_once_with_a_ledger(database: Database, settings: Settings) -> None:
    connection = add_connection(database, settings)
    spec = OutreachMessageCreate(patient_id="pat-000037", channel="sms", purpose="reminder",
                                 text="Reminder: check-up tomorrow 09:30", business_key="outreach/r-1")
    with database.session() as session:
        message, created = outreach.record_message(session, settings.clock, connection, spec, CLINICIAN)
        again, repeated = outreach.record_message(session, settings.clock, connection, spec, CLINICIAN)
    assert created and not repeated and message.id == again.id
    assert message.recipient == "Patient/pat-000037" and message.sender == "Organization/org-riverside-dental"
    assert message.sent_at == NOW and [e["status"] for e in message.ledger] == ["sent"]
    with database.session() as session:
        assert [r.resource_type for r in session.exec(select(OutboxRow))] == ["Communication"]


@pytest.mark.parametrize("changes, message", [
    ({"channel": "pigeon"}, "channel"),
    ({"purpose": "spam"}, "purpose"),
    ({"status": "planned"}, "status"),
    ({"status": "failed"}, "reason it was not sent"),
    ({"recipient": "Practitioner/prac-1"}, "Patient or a RelatedPerson"),
])
def test_bad_outreach_input_is_refused(database: Database, settings: Settings, changes: dict[str, object],
                                       message: str) -> None:
    connection = add_connection(database, settings)
    values: dict[str, object] = {"patient_id": "pat-000037", "channel": "sms", "purpose": "reminder", "text": "Hi"}
    values.update(changes)
    with pytest.raises(ValidationError, match=message), database.session() as session:
        outreach.record_message(session, settings.clock, connection, OutreachMessageCreate(**values),  # type: ignore[arg-type]
                                CLINICIAN)


def test_claims_never_overlap_and_a_lapsed_claim_is_taken_over_as_unknown(database: Database,
                                                                         settings: Settings) -> None:
    connection = add_connection(database, settings)
    clock = settings.clock
    with database.session() as session:
        for n in range(5):
            outbox.add(session, clock, connection_id=connection.id or 0, resource_type="Communication",
                       identifier_value=f"k-{n}", source=f"outreach_message:{n}")
    with database.session() as session:
        token_a, first = outbox.claim(session, clock, connection_id=connection.id or 0, holder="a", limit=3,
                                      lease_s=60)
    with database.session() as session:
        token_b, second = outbox.claim(session, clock, connection_id=connection.id or 0, holder="b", limit=10,
                                       lease_s=60)
    assert len(first) == 3 and len(second) == 2
    assert not {r.id for r in first} & {r.id for r in second}
    with database.session() as session:
        assert outbox.held(session, first[0].id or 0, token_b) is None
        assert outbox.held(session, first[0].id or 0, token_a) is not None
    def later() -> datetime:
        return NOW + timedelta(seconds=61)

    with database.session() as session:
        _, lapsed = outbox.claim(session, later, connection_id=connection.id or 0, holder="c", limit=10,
                                       lease_s=60)
    assert len(lapsed) == 5 and all(r.outcome_unknown for r in lapsed)  # the first drains may have written them
    with database.session() as session:
        assert outbox.held(session, first[0].id or 0, token_a) is None  # a's late answer is not recorded


def test_failures_back_off_then_die_and_it_can_retry_or_discard(database: Database, settings: Settings) -> None:
    connection = add_connection(database, settings)
    with database.session() as session:
        row = outbox.add(session, settings.clock, connection_id=connection.id or 0, resource_type="Task",
                         identifier_value="k", source="care_ticket:1")
        outbox.settle_failed(row, NOW, "HTTP 503", retry_in_s=30, max_attempts=2, outcome_unknown=True)
        assert (row.status, row.due_at, row.outcome_unknown) == ("pending", NOW + timedelta(seconds=30), True)
        outbox.settle_failed(row, NOW, "HTTP 503", retry_in_s=60, max_attempts=2, outcome_unknown=False)
        assert row.status == "dead" and row.outcome_unknown  # a lost answer stays unknown until looked up
        session.add(row)
    with database.session() as session:
        assert [r.id for r in outbox.needing_attention(session)] == [row.id]
        retried = outbox.retry(session, settings.clock, row.id or 0)
        assert (retried.status, retried.attempts) == ("pending", 0)
        with pytest.raises(ValidationError, match="only dead or kept"):
            outbox.discard(session, settings.clock, row.id or 0)  # pending: nothing to give up on
        outbox.settle_kept(retried, NOW, "Task: 403; Communication: 403")
        assert outbox.discard(session, settings.clock, row.id or 0).status == "discarded"
    with database.session() as session:
        assert outbox.needing_attention(session) == []  # discarded rows are kept on record, not shown


def test_waking_the_drain_moves_a_later_job_forward(database: Database, settings: Settings) -> None:
    with database.session() as session:
        jobs.plan(session, jobs.WRITEBACK_DRAIN, 7, NOW + timedelta(minutes=30))
    with database.session() as session:
        job_id = jobs.wake(session, jobs.WRITEBACK_DRAIN, 7, NOW)
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.due_at == NOW
        job.status = "done"
        session.add(job)
    with database.session() as session:  # a frozen clock: the slot at "now" already ran, so it is opened again
        again = jobs.wake(session, jobs.WRITEBACK_DRAIN, 7, NOW)
        job = session.get(Job, again)
        assert again == job_id and job is not None and (job.status, job.due_at) == ("pending", NOW)
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = "running"
        session.add(job)
    with database.session() as session:  # a drain is running: it, or the sweeper after it, finds the new rows
        assert jobs.wake(session, jobs.WRITEBACK_DRAIN, 7, NOW) is None


def test_a_persons_tickets_and_messages_are_found_under_each_of_their_records(database: Database,
                                                                                settings: Settings) -> None:
    """Tickets and messages fhir-prm made under a duplicate record stay there when the EHR merges it (p3 into
    p2, later p2 into p1): opened on any of the three, the sidebar lists the person's all; another's none."""
    connection = add_connection(database, settings)
    links = {"pat-old": "pat-dup", "pat-dup": "pat-000037", "pat-000037": None, "pat-000038": None}
    with database.session() as session:
        snapshots.upsert_page(session, connection.id or 0, "Patient", [
            PatientRecordCreate(fhir_id=fhir_id, version_id="1", replaced_by=survivor)
            for fhir_id, survivor in links.items()])
        for fhir_id in links:
            care_tickets.open_ticket(session, settings.clock, connection,
                                     ticket_spec(patient_id=fhir_id, business_key=f"t/{fhir_id}"), CLINICIAN)
            outreach.record_message(session, settings.clock, connection, OutreachMessageCreate(
                patient_id=fhir_id, channel="phone", purpose="follow-up", text="Called", business_key=f"m/{fhir_id}"),
                CLINICIAN)
    with database.session() as session:
        for opened_on in ("pat-old", "pat-dup", "pat-000037"):
            person = same_person(session, connection.id or 0, opened_on)
            assert sorted(person) == ["pat-000037", "pat-dup", "pat-old"] and person[0] == opened_on
            tickets = care_tickets.for_patient(session, connection.id or 0, person)
            messages = outreach.for_patient(session, connection.id or 0, person)
            assert sorted(t.business_key or "" for t in tickets) == ["t/pat-000037", "t/pat-dup", "t/pat-old"]
            assert sorted(m.business_key or "" for m in messages) == ["m/pat-000037", "m/pat-dup", "m/pat-old"]
        other = same_person(session, connection.id or 0, "pat-000038")
        assert other == ["pat-000038"]
        assert [t.business_key for t in care_tickets.for_patient(session, connection.id or 0, other)] == [
            "t/pat-000038"]
        assert same_person(session, connection.id or 0, "pat-unsynced") == ["pat-unsynced"]


def test_the_sidebar_says_a_tickets_due_day_in_the_clinics_zone(database: Database, settings: Settings) -> None:
    """A ticket due at 03:00 UTC on the 26th is due on the 25th in New York (22:00), on the 26th in London: the
    day the EHR's Task says, not the UTC instant's date."""
    due = datetime(2026, 11, 26, 3, tzinfo=UTC)
    shown = {}
    for zone in ("America/New_York", "Europe/London"):
        spec = connections.ConnectionSpec(
            name=zone.split("/")[1].lower(), iss=f"https://{zone.split('/')[1].lower()}.example/fhir", client_id="c",
            clinics=({"organization": "Organization/org-1", "name": "Clinic", "timezone": zone},))
        with database.session() as session:
            connection = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys), spec)
            ticket, _ = care_tickets.open_ticket(session, settings.clock, connection, ticket_spec(due_at=due),
                                                 CLINICIAN)
            shown[zone] = ticket_json(session, ticket)
    assert {zone: (json["due_day"], json["due_at"]) for zone, json in shown.items()} == {
        "America/New_York": ("2026-11-25", due.isoformat()), "Europe/London": ("2026-11-26", due.isoformat())}


def test_a_business_key_another_patients_item_carries_is_refused(database: Database, settings: Settings) -> None:
    """A key replayed in another patient's launch must not hand over the first patient's ticket or message: it
    is refused (409 at the API), and nothing is opened; the same patient's repeat still returns the first."""
    connection = add_connection(database, settings)
    with database.session() as session:
        first, _ = care_tickets.open_ticket(session, settings.clock, connection,
                                            ticket_spec(business_key="sidebar/k1"), CLINICIAN)
        outreach.record_message(session, settings.clock, connection, OutreachMessageCreate(
            patient_id="pat-000037", channel="phone", purpose="follow-up", text="Called", business_key="m/k1"),
            CLINICIAN)
    with pytest.raises(ConflictError, match="taken by another care ticket"), database.session() as session:
        care_tickets.open_ticket(session, settings.clock, connection,
                                 ticket_spec(patient_id="pat-000038", business_key="sidebar/k1"), CLINICIAN)
    with pytest.raises(ConflictError, match="taken by another outreach message"), database.session() as session:
        outreach.record_message(session, settings.clock, connection, OutreachMessageCreate(
            patient_id="pat-000038", channel="phone", purpose="follow-up", text="Called", business_key="m/k1"),
            CLINICIAN)
    with database.session() as session:
        again, created = care_tickets.open_ticket(session, settings.clock, connection,
                                                  ticket_spec(business_key="sidebar/k1"), CLINICIAN)
        assert (again.id, created) == (first.id, False)
        assert len(care_tickets.for_patient(session, connection.id or 0, ["pat-000038"])) == 0


def test_listing_a_quiet_connections_rows_is_not_cut_by_a_busy_ones(database: Database, settings: Settings) -> None:
    """`prm outbox list --connection` filters in the database before the limit: a busy connection's newer rows
    never hide the quiet one's dead row; a status that is no outbox status is refused, not an empty list."""
    quiet = add_connection(database, settings)
    with database.session() as session:
        busy = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                  connections.ConnectionSpec(name="busy", iss="https://busy.example/fhir",
                                                             client_id="c"))
        for n, (connection_id, status) in enumerate([(quiet.id, "dead"), *[(busy.id, "dead")] * 3,
                                                     (busy.id, "done")]):
            at = NOW + timedelta(minutes=n)
            session.add(OutboxRow(connection_id=connection_id or 0, resource_type="Task",
                                  identifier_system=outbox.IDENTIFIER_SYSTEM, identifier_value=f"k{n}",
                                  source=f"care_ticket:{n}", status=status, due_at=at, created_at=at, updated_at=at))
    with database.session() as session:
        assert [r.identifier_value for r in outbox.listed(session, limit=2, connection_id=quiet.id)] == ["k0"]
        assert [r.identifier_value for r in outbox.needing_attention(session, limit=2, connection_id=quiet.id)] == [
            "k0"]
        assert [r.identifier_value for r in outbox.listed(session, limit=2, status="dead")] == ["k3", "k2"]
        assert [r.identifier_value for r in outbox.needing_attention(session, connection_id=busy.id,
                                                                     status="done")] == []
        with pytest.raises(ValidationError, match="status must be one of"):
            outbox.listed(session, status="failed")
