"""The sidebar's overview of a patient from the snapshot (prm.patient_overview), on SQLite and PostgreSQL: the
data set's Jessica Green (pat-000276, Hudson Skin, New York) as the sync maps her, then changed the ways an EHR
changes things: a visit entered in error, one deleted, a merged duplicate record, a booking without an offset."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import col, func, select

from fhir_mappings.appointment import booking_from_appointment
from fhir_mappings.directory import site_from_location
from fhir_mappings.encounter import visit_from_encounter
from fhir_mappings.patient import patient_record_from_patient
from prm import connections, snapshots, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database, json_list_has_any
from prm.models import Connection
from prm.patient_overview import overview
from prm.snapshot_models import Booking
from smart_app.overview_present import when_text

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"
NOW = datetime.fromisoformat("2026-11-20T12:00:00+00:00")  # the data set's "now"
PATIENT = "pat-000276"


def of_patient(resource_type: str) -> list[dict[str, Any]]:
    with (DATA / f"{resource_type}.ndjson").open() as lines:
        return [r for r in map(json.loads, lines) if PATIENT in json.dumps(r.get("subject") or r.get("participant"))
                or r.get("id") == PATIENT]


def locations() -> dict[str, dict[str, Any]]:
    with (DATA / "Location.ndjson").open() as lines:
        return {r["id"]: r for r in map(json.loads, lines)}


def came(encounter: dict[str, Any]) -> bool:
    return encounter["status"] in ("arrived", "triaged", "in-progress", "onleave", "finished")


def start(resource: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(resource.get("start") or resource["period"]["start"])


def place(resource: dict[str, Any]) -> str:
    reference = (resource.get("location") or [{}])[0].get("location", {}).get("reference") or next(
        p["actor"]["reference"] for p in resource["participant"] if p["actor"]["reference"].startswith("Location/"))
    return str(locations()[reference.removeprefix("Location/")]["name"])


def stored(database: Database, settings: Settings, encounters: list[dict[str, Any]],
           appointments: list[dict[str, Any]], patients: list[dict[str, Any]], *, places: bool = True) -> Connection:
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
        connection_id = row.id or 0
        if places:
            snapshots.upsert_page(session, connection_id, "Location",
                                  [site_from_location(r) for r in locations().values()])
        snapshots.upsert_page(session, connection_id, "Patient", [patient_record_from_patient(p) for p in patients])
        snapshots.upsert_page(session, connection_id, "Encounter", [visit_from_encounter(e) for e in encounters])
        snapshots.upsert_page(session, connection_id, "Appointment",
                              [booking_from_appointment(a) for a in appointments])
        session.expunge(row)
        return row


def test_the_last_visit_the_next_booking_and_the_past_year_as_the_ehr_has_them(database: Database,
                                                                                settings: Settings) -> None:
    encounters, appointments = of_patient("Encounter"), of_patient("Appointment")
    connection = stored(database, settings, encounters, appointments, of_patient("Patient"))
    last = max((e for e in encounters if came(e) and start(e) <= NOW), key=start)
    upcoming = min((a for a in appointments if a["status"] in ("booked", "pending") and start(a) > NOW), key=start)
    with database.session() as session:
        seen = overview(session, connection, PATIENT, NOW)
    assert seen is not None and seen.header.display_name == "Jessica Green" and seen.header.birth_date == "1970-08-20"
    assert seen.last_visit is not None and seen.next_booking is not None
    assert (seen.last_visit.fhir_id, seen.last_visit.at, seen.last_visit.place, seen.last_visit.what) == (
        last["id"], start(last), place(last), last["type"][0]["text"])
    assert seen.last_visit.at.utcoffset() == start(last).utcoffset(), "New York time, as the EHR wrote it"
    assert (seen.next_booking.fhir_id, seen.next_booking.at, seen.next_booking.status, seen.next_booking.what) == (
        upcoming["id"], start(upcoming), upcoming["status"], upcoming["appointmentType"]["text"])
    year_ago = NOW - timedelta(days=365)
    assert seen.visits_past_year == sum(1 for e in encounters if came(e) and year_ago < start(e) <= NOW) > 0
    assert seen.missed_past_year == sum(1 for a in appointments
                                        if a["status"] == "noshow" and year_ago < start(a) <= NOW) > 0
    assert seen.merged_into is None and seen.as_of is None, "no stream has caught up: the first sync runs"


def test_what_did_not_happen_is_not_shown_and_a_merged_record_s_visits_are(database: Database,
                                                                           settings: Settings) -> None:
    """A visit yesterday entered in error, one the EHR deleted, a cancelled booking tomorrow: none shown. A
    duplicate record merged into hers brings its missed booking; a booking the EHR wrote in UTC is shown in
    the zone of its Location."""
    encounters, appointments = of_patient("Encounter"), of_patient("Appointment")
    template_visit, template_booking = copy.deepcopy(encounters[-1]), copy.deepcopy(appointments[-1])
    yesterday = {"start": "2026-11-19T10:00:00-05:00", "end": "2026-11-19T10:30:00-05:00"}
    in_error = {**template_visit, "id": "enc-in-error", "status": "entered-in-error", "period": yesterday}
    deleted = {**template_visit, "id": "enc-deleted", "status": "finished", "period": yesterday}
    cancelled = {**template_booking, "id": "appt-cancelled", "status": "cancelled",
                 "start": "2026-11-21T09:00:00-05:00", "end": "2026-11-21T09:30:00-05:00"}
    unzoned = {**template_booking, "id": "appt-unzoned", "status": "booked",
               "start": "2026-11-23T14:00:00Z", "end": "2026-11-23T14:30:00Z"}
    duplicate_patient = {**of_patient("Patient")[0], "id": "pat-dup", "link": [
        {"other": {"reference": f"Patient/{PATIENT}"}, "type": "replaced-by"}]}
    missed = copy.deepcopy(template_booking)
    missed.update(id="appt-dup-missed", status="noshow", start="2026-10-01T09:00:00-04:00",
                  end="2026-10-01T09:30:00-04:00")
    for participant in missed["participant"]:
        if participant["actor"]["reference"] == f"Patient/{PATIENT}":
            participant["actor"]["reference"] = "Patient/pat-dup"
    connection = stored(database, settings, [*encounters, in_error, deleted],
                        [*appointments, cancelled, unzoned, missed], [*of_patient("Patient"), duplicate_patient])
    with database.session() as session:
        snapshots.mark_deleted(session, connection.id or 0, "Encounter", ["enc-deleted"])
    with database.session() as session:
        before = overview(session, connection, PATIENT, NOW)
        assert before is not None and before.last_visit is not None and before.next_booking is not None
        assert before.last_visit.fhir_id not in ("enc-in-error", "enc-deleted")
        assert before.next_booking.fhir_id == "appt-unzoned"
        assert before.next_booking.at == datetime(2026, 11, 23, 9, 0, tzinfo=ZoneInfo("America/New_York"))
        own_missed = sum(1 for a in appointments if a["status"] == "noshow"
                         and NOW - timedelta(days=365) < start(a) <= NOW)
        assert before.missed_past_year == own_missed + 1, "the merged duplicate's missed booking counts"
        duplicate = overview(session, connection, "pat-dup", NOW)
        assert duplicate is not None and duplicate.merged_into == PATIENT
        assert duplicate.next_booking == before.next_booking, "opened on the old record: the same person's picture"
        assert overview(session, connection, "pat-nobody", NOW) is None


def test_where_no_zone_is_known_the_ehr_s_own_offset_is_used(database: Database, settings: Settings) -> None:
    """Locations not synced (their stream is off) and no clinic setting: the visit is shown at the offset the
    EHR wrote, not in UTC, which would move a New York evening visit to the next day."""
    encounters = of_patient("Encounter")
    connection = stored(database, settings, encounters, of_patient("Appointment"), of_patient("Patient"), places=False)
    last = max((e for e in encounters if came(e) and start(e) <= NOW), key=start)
    with database.session() as session:
        seen = overview(session, connection, PATIENT, NOW)
    assert seen is not None and seen.last_visit is not None and seen.last_visit.place is None
    assert seen.last_visit.at.utcoffset() == start(last).utcoffset() == timedelta(hours=-4)
    assert seen.last_visit.at.isoformat() == last["period"]["start"]


def test_a_newer_version_the_edge_check_refused_is_said(database: Database, settings: Settings) -> None:
    """The EHR's version 2 of her record failed the check and was quarantined: the sync kept version 1, and the
    overview says a newer one exists until the EHR sends one that passes (the quarantine is then resolved)."""
    connection = stored(database, settings, of_patient("Encounter"), of_patient("Appointment"), of_patient("Patient"))
    refused = {**of_patient("Patient")[0], "meta": {"versionId": "2"}, "birthDate": "20 August 1970"}
    with database.session() as session:
        before = overview(session, connection, PATIENT, NOW)
        assert before is not None and before.newer_refused is False
        streams.quarantine(session, settings.clock, connection.id or 0, "Patient", refused, "birthDate: not a date")
    with database.session() as session:
        seen = overview(session, connection, PATIENT, NOW)
        assert seen is not None and seen.newer_refused and seen.header.birth_date == "1970-08-20"
        streams.resolve_quarantined(session, settings.clock, connection.id or 0, "Patient", [PATIENT])
    with database.session() as session:
        mended = overview(session, connection, PATIENT, NOW)
        assert mended is not None and mended.newer_refused is False


def test_the_overview_is_as_fresh_as_its_three_streams(database: Database, settings: Settings) -> None:
    connection = stored(database, settings, of_patient("Encounter"), of_patient("Appointment"), of_patient("Patient"))
    caught_up = {"Patient": NOW - timedelta(minutes=2), "Encounter": NOW - timedelta(minutes=7),
                 "Appointment": NOW - timedelta(minutes=1), "Location": NOW - timedelta(days=3)}
    with database.session() as session:
        streams.ensure(session, connection.id or 0)
        for stream in streams.of_connection(session, connection.id or 0):
            stream.caught_up_at = caught_up.get(stream.resource_type)
            session.add(stream)
    with database.session() as session:
        seen = overview(session, connection, PATIENT, NOW)
        assert seen is not None and seen.as_of == NOW - timedelta(minutes=7)
        appointment_stream = next(s for s in streams.of_connection(session, connection.id or 0)
                                  if s.resource_type == "Appointment")
        appointment_stream.enabled, appointment_stream.caught_up_at = False, NOW - timedelta(days=2)
        session.add(appointment_stream)
    with database.session() as session:
        switched_off = overview(session, connection, PATIENT, NOW)
        assert switched_off is not None and switched_off.as_of == NOW - timedelta(days=2), "its bookings are old"
        encounter_stream = next(s for s in streams.of_connection(session, connection.id or 0)
                                if s.resource_type == "Encounter")
        encounter_stream.caught_up_at = None  # not caught up yet: a first load still under way
        session.add(encounter_stream)
    with database.session() as session:
        again = overview(session, connection, PATIENT, NOW)
        assert again is not None and again.as_of is None


def test_a_group_session_she_is_booked_on_shows_whoever_is_named_first(database: Database,
                                                                       settings: Settings) -> None:
    """Her clinic's group sessions name another patient first: the one tomorrow is her next booking, one she
    missed counts, one later today whose place she declined does not; the other patient sees each of them. One
    naming first a duplicate record of hers (merged into hers) counts once."""
    appointments = of_patient("Appointment")
    template = copy.deepcopy(appointments[-1])
    own = [p for p in template["participant"] if not p["actor"]["reference"].startswith("Patient/")]

    def session_of(fhir_id: str, status: str, day: str, hers: str, first: str = "pat-000275") -> dict[str, Any]:
        return {**template, "id": fhir_id, "status": status, "start": f"{day}T09:00:00-05:00",
                "end": f"{day}T10:00:00-05:00", "participant": [
                    {"actor": {"reference": f"Patient/{first}"}, "status": "accepted"},
                    {"actor": {"reference": f"Patient/{PATIENT}"}, "status": hers}, *own]}

    group = [session_of("appt-group-tomorrow", "booked", "2026-11-21", "accepted"),
             session_of("appt-group-missed", "noshow", "2026-10-05", "accepted"),
             session_of("appt-group-declined", "booked", "2026-11-20", "declined"),
             session_of("appt-both-records", "noshow", "2026-09-01", "accepted", first="pat-dup")]
    alone = stored(database, settings, of_patient("Encounter"), appointments, of_patient("Patient"))
    with database.session() as session:
        before = overview(session, alone, PATIENT, NOW)
    with database.session() as session:
        with_group = snapshots.upsert_page(session, alone.id or 0, "Appointment",
                                           [booking_from_appointment(a) for a in group])
        other = {**of_patient("Patient")[0], "id": "pat-000275"}
        duplicate = {**of_patient("Patient")[0], "id": "pat-dup", "link": [
            {"other": {"reference": f"Patient/{PATIENT}"}, "type": "replaced-by"}]}
        snapshots.upsert_page(session, alone.id or 0, "Patient", [patient_record_from_patient(p)
                                                                  for p in (other, duplicate)])
    assert with_group == 4
    with database.session() as session:
        seen = overview(session, alone, PATIENT, NOW)
        theirs = overview(session, alone, "pat-000275", NOW)
    assert before is not None and before.next_booking is not None
    assert before.next_booking.at > datetime.fromisoformat("2026-11-21T09:00:00-05:00"), "tomorrow's comes first"
    assert seen is not None and seen.next_booking is not None and seen.next_booking.fhir_id == "appt-group-tomorrow"
    assert seen.missed_past_year == before.missed_past_year + 2, "a session naming both her records counts once"
    assert theirs is not None and theirs.next_booking is not None
    assert (theirs.next_booking.fhir_id, theirs.missed_past_year) == ("appt-group-declined", 1)


def test_asking_whether_a_shared_booking_names_nobody_finds_none(database: Database, settings: Settings) -> None:
    """The helper the overview asks with, given no ids: no booking (PostgreSQL refuses an empty ARRAY[])."""
    connection = stored(database, settings, [], of_patient("Appointment"), of_patient("Patient"))
    with database.session() as session:
        none = session.exec(select(func.count()).select_from(Booking).where(
            col(Booking.connection_id) == connection.id,
            json_list_has_any(session, Booking.other_patients, []))).one()
        every = session.exec(select(func.count()).select_from(Booking).where(
            col(Booking.connection_id) == connection.id)).one()
    assert (none, every) == (0, len(of_patient("Appointment")))


def test_a_booking_nobody_is_booked_on_is_no_ones(database: Database, settings: Settings) -> None:
    """Her appointment tomorrow morning, whose one place she declined (the EHR left it booked), is not her next
    booking; a group session both its patients declined, marked noshow, is a missed booking for neither."""
    appointments = of_patient("Appointment")
    template = copy.deepcopy(appointments[-1])
    own = [p for p in template["participant"] if not p["actor"]["reference"].startswith("Patient/")]

    def declined(fhir_id: str, status: str, day: str, *patients: str) -> dict[str, Any]:
        return {**template, "id": fhir_id, "status": status, "start": f"{day}T08:00:00-05:00",
                "end": f"{day}T08:30:00-05:00", "participant": [
                    *({"actor": {"reference": f"Patient/{p}"}, "status": "declined"} for p in patients), *own]}

    connection = stored(database, settings, of_patient("Encounter"), appointments,
                        [*of_patient("Patient"), {**of_patient("Patient")[0], "id": "pat-000275"}])
    with database.session() as session:
        before = overview(session, connection, PATIENT, NOW)
        snapshots.upsert_page(session, connection.id or 0, "Appointment", [booking_from_appointment(a) for a in (
            declined("appt-declined-alone", "booked", "2026-11-21", PATIENT),
            declined("appt-declined-group", "noshow", "2026-10-05", "pat-000275", PATIENT))])
    with database.session() as session:
        after = overview(session, connection, PATIENT, NOW)
        theirs = overview(session, connection, "pat-000275", NOW)
    assert before is not None and after is not None and theirs is not None
    assert after.next_booking == before.next_booking and after.next_booking is not None
    assert after.next_booking.fhir_id != "appt-declined-alone"
    assert after.missed_past_year == before.missed_past_year and theirs.missed_past_year == 0


def test_a_record_merged_twice_over_shows_on_the_survivors_sidebar(database: Database, settings: Settings) -> None:
    """pat-old was merged into pat-dup, then pat-dup into hers: the missed booking filed under pat-old counts on
    her sidebar, and each of the three records shows the same picture."""
    patient = of_patient("Patient")[0]
    dup = {**patient, "id": "pat-dup", "link": [{"other": {"reference": f"Patient/{PATIENT}"}, "type": "replaced-by"}]}
    old = {**patient, "id": "pat-old", "link": [{"other": {"reference": "Patient/pat-dup"}, "type": "replaced-by"}]}
    missed = copy.deepcopy(of_patient("Appointment")[-1])
    missed.update(id="appt-old-missed", status="noshow", start="2026-10-01T09:00:00-04:00",
                  end="2026-10-01T09:30:00-04:00")
    for participant in missed["participant"]:
        if participant["actor"]["reference"] == f"Patient/{PATIENT}":
            participant["actor"]["reference"] = "Patient/pat-old"
    alone = stored(database, settings, of_patient("Encounter"), of_patient("Appointment"), of_patient("Patient"))
    with database.session() as session:
        before = overview(session, alone, PATIENT, NOW)
        snapshots.upsert_page(session, alone.id or 0, "Patient", [patient_record_from_patient(p) for p in (dup, old)])
        snapshots.upsert_page(session, alone.id or 0, "Appointment", [booking_from_appointment(missed)])
    with database.session() as session:
        seen = {fhir_id: overview(session, alone, fhir_id, NOW) for fhir_id in (PATIENT, "pat-dup", "pat-old")}
    assert before is not None and all(s is not None for s in seen.values())
    assert {fhir_id: s.missed_past_year for fhir_id, s in seen.items() if s} == {
        fhir_id: before.missed_past_year + 1 for fhir_id in seen}
    assert len({(s.last_visit, s.next_booking) for s in seen.values() if s}) == 1


def test_a_visit_the_ehr_dated_without_a_time_is_shown_on_its_day(database: Database, settings: Settings) -> None:
    """An EHR that sends `period.start` as a date: shown on that day, with no time, not moved to the evening
    before by New York's offset from UTC."""
    encounters = of_patient("Encounter")
    dated = {**copy.deepcopy(encounters[-1]), "id": "enc-date-only", "status": "finished",
             "period": {"start": "2026-11-19"}}
    connection = stored(database, settings, [*encounters, dated], of_patient("Appointment"), of_patient("Patient"))
    with database.session() as session:
        seen = overview(session, connection, PATIENT, NOW)
    assert seen is not None and seen.last_visit is not None and seen.last_visit.fhir_id == "enc-date-only"
    assert seen.last_visit.day_only and seen.last_visit.at == datetime(2026, 11, 19,
                                                                       tzinfo=ZoneInfo("America/New_York"))
    assert when_text(seen.last_visit) == "Thu 19 Nov 2026"
