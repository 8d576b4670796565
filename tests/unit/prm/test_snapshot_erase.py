"""Erasing a disabled connection's synced copy, on SQLite and PostgreSQL: all of it and only it, never while a
worker syncs one of its streams, IT's settings kept, audited."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select

from fhir_mappings.appointment import booking_from_appointment
from fhir_mappings.common import patients_named
from fhir_mappings.encounter import visit_from_encounter
from fhir_mappings.patient import patient_record_from_patient
from prm import audit, connections, leases, snapshots, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.errors import ValidationError
from prm.models import AuditRecord
from prm.snapshot_erase import erase_patients, erase_snapshot
from prm.snapshot_models import QuarantinedResource, StreamPatient, SyncStream
from prm.snapshot_rows import TABLES

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"
T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)
IT = audit.Actor(kind="admin", name="it", role="it_admin")
STAYING = frozenset({"pat-000003"})  # the population once pat-000002 has left


def first(resource_type: str, n: int) -> list[dict]:  # type: ignore[type-arg]
    with (DATA / f"{resource_type}.ndjson").open() as lines:
        return [json.loads(next(lines)) for _ in range(n)]


def synced_connection(database: Database, settings: Settings, name: str) -> int:
    """A connection whose streams have synced: patients (one since deleted), visits, a quarantined resource,
    a patient-scoped stream's list, cursors and counters; IT set the Encounter stream's strategy and interval."""
    with database.session() as session:
        cid = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name=name, iss=f"https://{name}.example/fhir",
                                                            client_id=name)).id or 0
        patients = [patient_record_from_patient(p) for p in first("Patient", 3)]
        snapshots.upsert_page(session, cid, "Patient", patients)
        snapshots.upsert_page(session, cid, "Encounter", [visit_from_encounter(e) for e in first("Encounter", 5)])
        snapshots.mark_deleted(session, cid, "Patient", [patients[0].fhir_id])
        streams.quarantine(session, settings.clock, cid, "Encounter", {"resourceType": "Encounter", "id": "bad"}, "x")
        for stream in streams.ensure(session, cid):
            stream.phase, stream.cursor, stream.pages, stream.resources_synced = "incremental", T0, 2, 5
            stream.last_success_at = stream.caught_up_at = stream.initial_done_at = T0
            if stream.resource_type == "Encounter":
                stream.strategy, stream.interval_s, stream.cursor_ids = "patient", 900, ["enc-1"]
                stream.pass_kind, stream.pass_position = "patient", "pat-000002"
                session.add(StreamPatient(stream_id=stream.id or 0, patient_id=patients[1].fhir_id))
            session.add(stream)
    return cid


def disable(database: Database, settings: Settings, name: str) -> None:
    with database.session() as session:
        connections.set_enabled(session, settings.clock, IT, name, False)


def counts(session: Session, connection_id: int) -> dict[str, int]:
    found = {t: session.exec(select(func.count()).select_from(TABLES[t]).where(
        TABLES[t].connection_id == connection_id)).one() for t in ("Patient", "Encounter")}  # type: ignore[attr-defined]
    found["quarantined"] = session.exec(select(func.count()).select_from(QuarantinedResource).where(
        QuarantinedResource.connection_id == connection_id)).one()
    stream_ids = [s.id for s in streams.of_connection(session, connection_id)]
    found["stream patients"] = session.exec(select(func.count()).select_from(StreamPatient).where(
        col(StreamPatient.stream_id).in_(stream_ids))).one()
    return found


def test_erasing_a_disabled_connection_leaves_nothing_of_its_copy_and_keeps_its_settings(
        database: Database, settings: Settings) -> None:
    leaving, staying = (synced_connection(database, settings, name) for name in ("leaving", "staying"))
    disable(database, settings, "leaving")
    with database.session() as session:
        before = counts(session, staying)
        erased = erase_snapshot(session, settings.clock, IT, leaving)
    assert (erased.rows["Patient"], erased.rows["Encounter"], erased.quarantined) == (3, 5, 1), "tombstones too"
    assert erased.total == 9 and erased.words() == "Patient 3, Encounter 5; 1 quarantined"
    with database.session() as session:
        assert counts(session, leaving) == {"Patient": 0, "Encounter": 0, "quarantined": 0, "stream patients": 0}
        assert counts(session, staying) == before == {"Patient": 3, "Encounter": 5, "quarantined": 1,
                                                      "stream patients": 1}
        fresh = {s.resource_type: s for s in streams.of_connection(session, leaving)}
        kept = {s.resource_type: s for s in streams.of_connection(session, staying)}
        [record] = session.exec(select(AuditRecord).where(AuditRecord.action == "sync.erase")).all()
    encounter = fresh["Encounter"]
    assert (encounter.phase, encounter.cursor, encounter.cursor_ids, encounter.pages, encounter.resources_synced,
            encounter.last_success_at, encounter.caught_up_at, encounter.pass_kind, encounter.pass_position) == (
        "initial", None, [], 0, 0, None, None, None, None), "it starts again with a first load"
    assert (encounter.strategy, encounter.interval_s, encounter.enabled) == ("patient", 900, True), "IT's settings"
    assert all(s.phase == "initial" and s.cursor is None for s in fresh.values())
    assert all(s.phase == "incremental" and s.cursor == T0 for s in kept.values()), "the other connection's stay"
    assert (record.connection_id, record.entity, record.count, record.detail, record.actor) == (
        leaving, "Connection/leaving", 9, "Patient 3, Encounter 5; 1 quarantined", "it")
    with database.session() as session:
        assert leases.acquire(session, streams.lease_name(encounter), "a-worker", T0, 60), "its leases are free"


def test_an_enabled_connection_is_not_erased(database: Database, settings: Settings) -> None:
    cid = synced_connection(database, settings, "live")
    with pytest.raises(ValidationError, match="is enabled: disable it first"), database.session() as session:
        erase_snapshot(session, settings.clock, IT, cid)
    with database.session() as session:
        assert counts(session, cid) == {"Patient": 3, "Encounter": 5, "quarantined": 1, "stream patients": 1}


def test_a_stream_a_worker_is_syncing_stops_the_erasure_and_nothing_goes(database: Database,
                                                                         settings: Settings) -> None:
    """A run begun before IT disabled the connection holds its stream's lease until it ends: the erasure waits
    for it (by refusing), rather than delete rows that run is about to write beside."""
    cid = synced_connection(database, settings, "busy")
    disable(database, settings, "busy")
    with database.session() as session:
        [patient_stream] = [s for s in streams.of_connection(session, cid) if s.resource_type == "Patient"]
        assert leases.acquire(session, streams.lease_name(patient_stream), "worker-1", settings.clock(), 120)
    with pytest.raises(ValidationError, match="a worker is syncing busy's Patient now"), \
            database.session() as session:
        erase_snapshot(session, settings.clock, IT, cid)
    with database.session() as session:
        assert counts(session, cid) == {"Patient": 3, "Encounter": 5, "quarantined": 1, "stream patients": 1}
        assert session.exec(select(SyncStream).where(SyncStream.connection_id == cid,
                                                     SyncStream.phase == "initial")).first() is None
        assert not session.exec(select(AuditRecord).where(AuditRecord.action == "sync.erase")).all()
        leases.release(session, streams.lease_name(patient_stream), "worker-1")  # the run ended
    with database.session() as session:
        assert erase_snapshot(session, settings.clock, IT, cid).total == 9
    with database.session() as session:
        again = erase_snapshot(session, settings.clock, IT, cid)
    assert (again.total, again.words()) == (0, "no snapshot rows; 0 quarantined"), "erasing twice erases nothing"


def visits_of(patient_id: str) -> list[dict]:  # type: ignore[type-arg]
    with (DATA / "Encounter.ndjson").open() as lines:
        found = [json.loads(line) for line in lines]
    return [e for e in found if e["subject"]["reference"] == f"Patient/{patient_id}"]


def with_a_leaver(database: Database, settings: Settings) -> tuple[int, SyncStream]:
    """The synced connection, plus pat-000002's visits and a quarantined visit of theirs and one of pat-000003."""
    cid = synced_connection(database, settings, "grouped")
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", [visit_from_encounter(e) for e in visits_of("pat-000002")])
        for n, patient in enumerate(("pat-000002", "pat-000003")):
            streams.quarantine(session, settings.clock, cid, "Encounter", {
                "resourceType": "Encounter", "id": f"bad-{n}", "subject": {"reference": f"Patient/{patient}"}}, "x")
        by_type = {s.resource_type: s for s in streams.of_connection(session, cid)}
        session.add(StreamPatient(stream_id=by_type["Task"].id or 0, patient_id="pat-000002"))  # ours, searched
    return cid, by_type["Patient"]


def test_erasing_a_patient_takes_their_records_and_only_theirs(database: Database, settings: Settings) -> None:
    """A patient who left the connection's Group: their record, visits, quarantined resources and the note
    that a stream read them whole go; the rest of the copy, the connection and its streams' state stay."""
    cid, patient_stream = with_a_leaver(database, settings)
    their_visits = len(visits_of("pat-000002"))
    with database.session() as session:
        before = counts(session, cid)
        assert leases.acquire(session, streams.lease_name(patient_stream), "the-worker", settings.clock(), 120)
        erased = erase_patients(session, settings.clock, IT, cid, ["pat-000002", "pat-000002"], patients_named,
                                keeping=STAYING, caller_stream_id=patient_stream.id)
    assert (erased.rows["Patient"], erased.rows["Encounter"], erased.quarantined) == (1, their_visits, 1)
    with database.session() as session:
        assert before["stream patients"] == 2, "the Encounter stream's note and the Task stream's"
        assert counts(session, cid) == {"Patient": before["Patient"] - 1,
                                        "Encounter": before["Encounter"] - their_visits,
                                        "quarantined": before["quarantined"] - 1, "stream patients": 0}
        assert {q.fhir_id for q in session.exec(select(QuarantinedResource))} == {"bad", "bad-1"}
        assert snapshots.live_ids(session, cid, "Patient") == {"pat-000003"}
        assert all(s.phase == "incremental" for s in streams.of_connection(session, cid)), "its sync goes on"
        [record] = session.exec(select(AuditRecord).where(AuditRecord.action == "sync.erase_patients")).all()
        assert (record.count, record.detail) == (erased.total, f"1 patient(s): {erased.words()}")
        assert not leases.acquire(session, streams.lease_name(patient_stream), "another", settings.clock(), 60), \
            "the caller's own lease is the caller's to release"
        again = erase_patients(session, settings.clock, IT, cid, ["pat-000002"], patients_named,
                               keeping=STAYING, caller_stream_id=patient_stream.id)
    assert again.total == 0, "erasing twice erases nothing"


def test_a_group_session_stays_while_a_patient_booked_on_it_stays(database: Database, settings: Settings) -> None:
    """pat-000002 leaves; pat-000003 and pat-000050 (a member the copy holds no record of yet) stay. pat-000002's
    own booking goes; group sessions shared with one who stays stay, whoever is named first, as does a refused
    one; one shared only with a non-member goes, and so does one of two non-members, though nobody is erased."""
    cid, patient_stream = with_a_leaver(database, settings)
    with (DATA / "Appointment.ndjson").open() as lines:
        own = next(a for a in map(json.loads, lines) if a["participant"][0]["actor"]["reference"] ==
                   "Patient/pat-000002")
    others = own["participant"][1:]

    def group(fhir_id: str, *patients: str) -> dict:  # type: ignore[type-arg]
        return {**own, "id": fhir_id, "participant": [
            *({"actor": {"reference": f"Patient/{p}"}, "status": "accepted"} for p in patients), *others]}

    appointments = [own, group("appt-g1", "pat-000002", "pat-000003"), group("appt-g2", "pat-000003", "pat-000002"),
                    group("appt-g3", "pat-000002", "pat-000099"), group("appt-g4", "pat-000002", "pat-000050")]
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Appointment", [booking_from_appointment(a) for a in appointments])
        for refused in (group("bad-g1", "pat-000002", "pat-000003"), group("bad-g3", "pat-000002", "pat-000099")):
            streams.quarantine(session, settings.clock, cid, "Appointment", {**refused, "status": "x"}, "status")
        erased = erase_patients(session, settings.clock, IT, cid, ["pat-000002"], patients_named,
                                keeping=STAYING | {"pat-000050"}, caller_stream_id=patient_stream.id)
    assert (erased.rows["Appointment"], erased.quarantined) == (2, 2), "own and g3; bad-g3 and bad-0 (a visit)"
    with database.session() as session:
        assert snapshots.live_ids(session, cid, "Appointment") == {"appt-g1", "appt-g2", "appt-g4"}
        assert {q.fhir_id for q in session.exec(select(QuarantinedResource))} == {"bad", "bad-1", "bad-g1"}
        assert "pat-000002" not in snapshots.patients_named(session, cid), \
            "named first on a group session kept for another: not a leaver again next run"
        snapshots.upsert_page(session, cid, "Appointment",
                              [booking_from_appointment(group("appt-g5", "pat-000098", "pat-000099"))])
        orphans = erase_patients(session, settings.clock, IT, cid, [], patients_named, keeping=STAYING)
    assert orphans.rows["Appointment"] == 2, "g4 (pat-000050 no longer kept) and g5: nobody's"
    with database.session() as session:
        assert snapshots.live_ids(session, cid, "Appointment") == {"appt-g1", "appt-g2"}
        nothing = erase_patients(session, settings.clock, IT, cid, [], patients_named, keeping=STAYING)
        last = erase_patients(session, settings.clock, IT, cid, ["pat-000003"], patients_named, keeping=set())
    assert (nothing.total, last.rows["Appointment"]) == (0, 2)
    with database.session() as session:
        assert snapshots.live_ids(session, cid, "Appointment") == set()


@pytest.mark.parametrize("busy", ["Encounter", "Task"])
def test_a_worker_syncing_a_patients_type_postpones_their_erasure(database: Database, settings: Settings,
                                                                  busy: str) -> None:
    """Encounter stores their visits; Task, searched patient by patient, notes them read whole."""
    cid, _ = with_a_leaver(database, settings)
    with database.session() as session:
        before = counts(session, cid)
        [syncing] = [s for s in streams.of_connection(session, cid) if s.resource_type == busy]
        assert leases.acquire(session, streams.lease_name(syncing), "worker-2", settings.clock(), 120)
    with pytest.raises(ValidationError, match=f"a worker is syncing grouped's {busy} now"), \
            database.session() as session:
        erase_patients(session, settings.clock, IT, cid, ["pat-000002"], patients_named, keeping=STAYING)
    with database.session() as session:
        assert counts(session, cid) == before
        assert not session.exec(select(AuditRecord).where(AuditRecord.action == "sync.erase_patients")).all()
