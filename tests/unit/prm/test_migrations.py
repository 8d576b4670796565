"""Each migration applies on a database that already holds rows of the revision before it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from prm import connections
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.migrate import pending_revisions, upgrade
from prm.snapshot_models import (
    TOMBSTONE_KEEPS,
    Booking,
    PatientRecord,
    QuarantinedResource,
    StaffRole,
    SyncStream,
    Visit,
    tombstone_values,
)
from tests.support.settings import make_settings
from workers.runtime import MODEL_MODULES  # noqa: F401 - imports every model module: the metadata is whole


def test_0002_upgrades_a_database_with_connections_and_launches(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, tmp_path)
    database = Database(settings.database_url)
    upgrade(database, "0001")
    with database.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO connection (name, iss, client_id, client_auth, scopes, default_role, enabled, frame_origins,"
            " role_mapping, health_status, health_detail, created_at, updated_at) VALUES ('a', 'https://a/fhir', 'c',"
            " 'public', '', 'clinician', true, '[]', '{}', 'unknown', '{}', '2026-11-20 12:00:00+00',"
            " '2026-11-20 12:00:00+00')"))
    upgrade(database)
    assert pending_revisions(database) == []
    with database.engine.connect() as conn:
        row = conn.execute(text("SELECT signing_alg, backend_scopes FROM connection")).one()
    assert tuple(row) == ("RS384", "")
    database.dispose()


def test_0007_keeps_the_soonest_of_a_subjects_pending_jobs(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Planners that met before 0007 could leave a stream two pending jobs; the soonest is kept, finished jobs
    and other subjects' are untouched, and a third pending job is then refused by the database."""
    database = Database(make_settings(db_url, tmp_path).database_url)
    upgrade(database, "0006")
    rows = [("sync.stream", 1, "12:05", "pending"), ("sync.stream", 1, "12:00", "pending"),
            ("sync.stream", 1, "11:55", "done"), ("sync.stream", 2, "12:09", "pending"),
            ("connection.health", 1, "12:07", "pending")]
    with database.engine.begin() as conn:
        for kind, subject, due, status in rows:
            conn.execute(text("INSERT INTO job (kind, subject_id, due_at, status, attempts, runs) VALUES "
                              "(:kind, :subject, :due, :status, 0, 0)"),
                         {"kind": kind, "subject": subject, "due": f"2026-11-20 {due}:00+00", "status": status})
    upgrade(database)
    with database.engine.connect() as conn:
        kept = conn.execute(text("SELECT id FROM job ORDER BY id")).scalars().all()
    assert kept == [2, 3, 4, 5]  # the stream's 12:05 job (id 1) went; its 12:00 one stays
    with pytest.raises(IntegrityError), database.engine.begin() as conn:
        conn.execute(text("INSERT INTO job (kind, subject_id, due_at, status, attempts, runs) VALUES "
                          "('sync.stream', 2, '2026-11-20 13:00:00+00', 'pending', 0, 0)"))
    database.dispose()


def test_0010_takes_a_synced_streams_last_success_as_its_caught_up_time(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, tmp_path)
    database = Database(settings.database_url)
    upgrade(database, "0009")
    with database.session() as session:  # the connection table is as at head already
        connection_id = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                           connections.ConnectionSpec(name="c", iss="https://c.example/fhir",
                                                                      client_id="c")).id
    with database.engine.begin() as conn:
        for resource_type, phase, success in (("Patient", "incremental", "2026-11-20 11:00:00+00"),
                                              ("Encounter", "initial", "2026-11-20 11:30:00+00")):
            conn.execute(text("INSERT INTO sync_stream (connection_id, resource_type, enabled, strategy, phase, "
                              "interval_s, cursor_ids, pages, resources_synced, deleted_synced, quarantined, "
                              "last_success_at) VALUES (:c, :t, true, 'auto', :p, 300, '[]', 0, 0, 0, 0, :s)"),
                         {"c": connection_id, "t": resource_type, "p": phase, "s": success})
    upgrade(database)
    with database.session() as session:
        caught_up = {s.resource_type: s.caught_up_at for s in session.exec(select(SyncStream))}
    database.dispose()
    assert caught_up == {"Patient": datetime(2026, 11, 20, 11, tzinfo=UTC), "Encounter": None}


def two_connections(database: Database, settings: Settings) -> tuple[int, int]:
    """Two connections' ids: one whose streams have loaded, one whose streams still load."""
    with database.session() as session:
        first, second = (connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                            connections.ConnectionSpec(name=name, iss=f"https://{name}.example/fhir",
                                                                       client_id=name)).id or 0 for name in ("c", "d"))
    return first, second


def add_streams(database: Database, loaded: int, loading: int, *streams: tuple[str, str] | tuple[str, str, int]
                ) -> None:
    """Stream rows as a revision before the one tested stores them: (type, phase[, resources synced]), an
    incremental one on the `loaded` connection, one still in its first load on the `loading` one."""
    with database.engine.begin() as conn:
        for resource_type, phase, *synced in streams:
            conn.execute(text("INSERT INTO sync_stream (connection_id, resource_type, enabled, strategy, phase, "
                              "interval_s, cursor_ids, pages, resources_synced, deleted_synced, quarantined) "
                              "VALUES (:c, :t, true, 'auto', :p, 300, '[]', 0, :n, 0, 0)"),
                         {"c": loaded if phase == "incremental" else loading, "t": resource_type, "p": phase,
                          "n": synced[0] if synced else 0})


def test_0013_asks_loaded_visit_and_booking_streams_to_read_everything_again(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Visits and bookings synced before 0013 have no `type_text`: their streams past a first load are asked to
    read everything again; streams of other types, or still loading (which read everything anyway), are not."""
    settings = make_settings(db_url, tmp_path)
    database = Database(settings.database_url)
    upgrade(database, "0012")
    loaded, loading = two_connections(database, settings)
    add_streams(database, loaded, loading, ("Encounter", "incremental"), ("Appointment", "incremental"),
                ("Patient", "incremental"), ("Encounter", "initial"))
    upgrade(database, "0013")
    with database.engine.connect() as conn:  # as the table stands at 0013 (0017 asks Appointment streams again)
        asked = {(t, p): (a, s, serving) for t, p, a, s, serving in conn.execute(text(
            "SELECT resource_type, phase, reload_asked, reload_served, reload_serving FROM sync_stream"))}
    database.dispose()
    assert asked == {("Encounter", "incremental"): (1, 0, None), ("Appointment", "incremental"): (1, 0, None),
                     ("Patient", "incremental"): (0, 0, None), ("Encounter", "initial"): (0, 0, None)}


def test_0014_empties_stored_tombstones_and_resolved_quarantines(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Rows deleted in the EHR before 0014 kept the person's details; after it they hold what a tombstone made
    now holds (`tombstone_values`). Live rows, and quarantined resources IT has still to look into, keep all;
    no stored quarantine error quotes a value."""
    settings = make_settings(db_url, tmp_path)
    database = Database(settings.database_url)
    upgrade(database, "0013")
    with database.session() as session:
        cid = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c")).id
    person = {"name": "Ada Example", "born": "1980-02-03", "gender": "female", "postcode": "AB1 2CD",
              "org": "Organization/o", "merged": "pat-9", "telecom": '[{"system": "phone", "value": "0700"}]',
              "languages": '[{"code": "en"}]', "gps": '["Practitioner/p"]'}
    with database.engine.begin() as conn:
        for fhir_id, deleted in (("gone", True), ("here", False)):
            conn.execute(text(
                "INSERT INTO patient_record (connection_id, fhir_id, version_id, last_updated, deleted, active, "
                "deceased, display_name, birth_date, gender, postcode, managing_organization, replaced_by, telecom, "
                "languages, general_practitioners, links) VALUES (:c, :f, '2', '2026-11-20 11:00:00+00', :d, true, "
                "false, :name, :born, :gender, :postcode, :org, :merged, :telecom, :languages, :gps, '[]')"),
                {"c": cid, "f": fhir_id, "d": deleted, **person})
            conn.execute(text(
                "INSERT INTO visit (connection_id, fhir_id, version_id, deleted, patient_id, status, type_codes, "
                "service_type_codes, type_text, start_at, location_ids, appointment_ids, practitioners) VALUES "
                "(:c, :f, '1', :d, 'pat-9', 'finished', '[\"s|c\"]', '[]', 'Check-up', '2026-11-19 09:00:00+00', "
                "'[\"l\"]', '[]', '[\"p\"]')"), {"c": cid, "f": fhir_id, "d": deleted})
            conn.execute(text(
                "INSERT INTO quarantined_resource (connection_id, resource_type, fhir_id, version_id, error, payload, "
                "resolved_at) VALUES (:c, 'Patient', :f, '1', :e, '{\"name\": \"Ada\"}', :r)"),
                {"c": cid, "f": fhir_id, "r": "2026-11-20 11:30:00+00" if deleted else None,
                 "e": 'ValidationError: Patient/x is not a valid R4 Patient: birthDate: "1980-02-30" does not match '
                      '"^..$"'})
    upgrade(database)
    with database.session() as session:
        patients = {p.fhir_id: p for p in session.exec(select(PatientRecord))}
        visits = {v.fhir_id: v for v in session.exec(select(Visit))}
        refused = {q.fhir_id: q.payload for q in session.exec(select(QuarantinedResource))}
        errors = {q.error for q in session.exec(select(QuarantinedResource))}
    database.dispose()
    tomb = patients["gone"].model_dump(exclude=TOMBSTONE_KEEPS)
    assert tomb == tombstone_values(PatientRecord)
    assert (patients["gone"].version_id, patients["gone"].last_updated) == ("2", datetime(2026, 11, 20, 11, tzinfo=UTC))
    assert visits["gone"].model_dump(exclude=TOMBSTONE_KEEPS) == {**tombstone_values(Visit), "status": "finished"}
    assert (patients["here"].display_name, patients["here"].telecom) == ("Ada Example", [{"system": "phone",
                                                                                           "value": "0700"}])
    assert (visits["here"].patient_id, visits["here"].type_text) == ("pat-9", "Check-up")
    assert refused == {"gone": {}, "here": {"name": "Ada"}}
    assert errors == {"ValidationError: Patient/x is not a valid R4 Patient: birthDate: '…' does not match '…'"}


def test_0017_keeps_stored_bookings_as_one_patients_and_asks_loaded_booking_streams_to_read_again(
        db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A booking stored before 0017 holds its first patient alone: it stays theirs (not shared), and Appointment
    streams past a first load read everything again, so a shared one gets its other patients; other streams and
    a stream still loading are not asked."""
    settings = make_settings(db_url, tmp_path)
    database = Database(settings.database_url)
    upgrade(database, "0016")
    cid, loading = two_connections(database, settings)
    with database.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO booking (connection_id, fhir_id, version_id, deleted, patient_id, status, start_at, "
            "service_type_codes, appointment_type_codes, location_ids, practitioners, related_people) VALUES "
            "(:c, 'appt-1', '1', false, 'pat-1', 'booked', '2026-11-27 09:00:00+00', '[]', '[]', '[]', '[]', '[]')"),
            {"c": cid})
    add_streams(database, cid, loading, ("Appointment", "incremental"), ("Encounter", "incremental"),
                ("Appointment", "initial"))
    upgrade(database, "0017")
    with database.session() as session:
        booking = session.exec(select(Booking)).one()
        asked = {(s.resource_type, s.phase): s.reload_asked for s in session.exec(select(SyncStream))}
    database.dispose()
    assert (booking.patient_id, booking.other_patients, booking.declined_patients, booking.shared) == (
        "pat-1", [], [], False)
    assert asked == {("Appointment", "incremental"): 1, ("Encounter", "incremental"): 0,
                     ("Appointment", "initial"): 0}


def test_0018_keeps_stored_roles_without_a_zone_and_asks_loaded_role_and_booking_streams_to_read_again(
        db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A PractitionerRole stored before 0018 has no zone of its own (none was read): it keeps where it works,
    and PractitionerRole and Appointment streams past a first load read everything again, so a declared zone
    and a booking's declined patients come in; so does one part-way through its first load that has stored
    rows (it would not read them again); other streams and a load that has stored nothing yet are not asked."""
    settings = make_settings(db_url, tmp_path)
    database = Database(settings.database_url)
    upgrade(database, "0017")
    cid, loading = two_connections(database, settings)
    with database.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO staff_role (connection_id, fhir_id, version_id, deleted, active, organization_id, "
            "location_ids, codes, specialty_codes) VALUES (:c, 'prole-1', '1', false, true, 'org-1', "
            "'[\"loc-1\"]', '[]', '[]')"), {"c": cid})
    add_streams(database, cid, loading, ("PractitionerRole", "incremental"), ("Location", "incremental"),
                ("PractitionerRole", "initial"), ("Appointment", "incremental"), ("Appointment", "initial", 500))
    upgrade(database)
    with database.session() as session:
        role = session.exec(select(StaffRole)).one()
        asked = {(s.resource_type, s.phase): s.reload_asked for s in session.exec(select(SyncStream))}
    database.dispose()
    assert (role.fhir_id, role.location_ids, role.timezone) == ("prole-1", ["loc-1"], None)
    assert asked == {("PractitionerRole", "incremental"): 1, ("Location", "incremental"): 0,
                     ("PractitionerRole", "initial"): 0, ("Appointment", "incremental"): 1,
                     ("Appointment", "initial"): 1}


def test_the_migrations_build_what_the_models_declare(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Alembic's own comparison of the migrated schema with every model: a column, index or table added to
    one and not the other shows here, on both backends, before it shows in production."""
    database = Database(make_settings(db_url, tmp_path).database_url)
    upgrade(database)
    with database.engine.connect() as conn:
        drift = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    database.dispose()
    assert drift == []
