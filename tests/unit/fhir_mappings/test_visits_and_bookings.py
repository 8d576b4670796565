"""Encounter -> Visit and Appointment -> Booking against the data set's facts and edge cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_mappings.appointment import booking_from_appointment
from fhir_mappings.encounter import visit_from_encounter
from fhir_mappings.patient import patient_record_from_patient
from prm.errors import ValidationError
from prm.snapshot_models import Booking

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"
MANIFEST = json.loads((DATA / "manifest.json").read_text())


def load(resource_type: str) -> dict[str, dict[str, Any]]:
    with (DATA / f"{resource_type}.ndjson").open(encoding="utf-8") as lines:
        return {r["id"]: r for r in map(json.loads, lines)}


def test_every_encounter_maps_and_statuses_match_the_manifest() -> None:
    visits = [visit_from_encounter(r) for r in load("Encounter").values()]
    counts: dict[str, int] = {}
    for v in visits:
        counts[v.status] = counts.get(v.status, 0) + 1
    assert counts == MANIFEST["encounter_status"]
    assert sum(1 for v in visits if v.appointment_ids) == 770


def test_visit_times_keep_their_offset() -> None:
    visit = visit_from_encounter(load("Encounter")["enc-000001-001"])
    assert visit.start_at == datetime(2024, 9, 9, 11, 40, tzinfo=UTC) and visit.start_offset_min == 60
    assert visit.patient_id == "pat-000001" and visit.location_ids == ["loc-rdc-bankside"]
    assert "https://riverside-dental.example/fhir/CodeSystem/visit-type|DEN-NEWPT" in visit.type_codes
    assert visit.service_provider == "org-riverside-dental" and visit.practitioners == ["prac-rdc-02"]


def test_every_appointment_maps_and_statuses_match_the_manifest() -> None:
    bookings = [booking_from_appointment(r) for r in load("Appointment").values()]
    counts: dict[str, int] = {}
    for b in bookings:
        counts[b.status] = counts.get(b.status, 0) + 1
    assert counts == MANIFEST["appointment_status"]
    cancelled = [b for b in bookings if b.status == "cancelled"]
    assert cancelled and all(b.cancelation_reason for b in cancelled)
    proposed = [b for b in bookings if b.status == "proposed"]
    assert proposed and all(b.start_at is None for b in proposed)  # recall offers carry requestedPeriod only


def test_new_york_offsets_follow_dst() -> None:
    offsets = {b.start_offset_min for b in map(booking_from_appointment, load("Appointment").values())
               if b.start_offset_min is not None and b.start_offset_min < 0}
    assert offsets == {-300, -240}


def test_patients_keep_contactability_language_and_merges() -> None:
    patients = {k: patient_record_from_patient(v) for k, v in load("Patient").items()}
    assert len(patients) == 300
    merged = [p for p in patients.values() if p.replaced_by]
    assert merged and all(m.replaced_by in patients for m in merged)
    assert sum(1 for p in patients.values() if not p.telecom) == 43
    polish = patients["pat-000003"]
    assert any(lang["code"].startswith("pl") for lang in polish.languages)
    ranked = [p for p in patients.values() if len(p.telecom) > 1]
    assert all((p.telecom[0]["rank"] or 999) <= (p.telecom[1]["rank"] or 999) for p in ranked)


def test_invalid_resources_are_refused_with_the_path() -> None:
    broken = dict(load("Encounter")["enc-000001-001"], period={"start": "yesterday"})
    with pytest.raises(ValidationError, match="period"):
        visit_from_encounter(broken)
    with pytest.raises(ValidationError, match="expected a Appointment"):
        booking_from_appointment({"resourceType": "Encounter", "id": "x"})


def test_a_birth_year_alone_keeps_its_precision() -> None:
    assert patient_record_from_patient(load("Patient")["pat-000043"]).birth_date == "1958"


def test_directory_rows_carry_the_clinic_time_zone() -> None:
    from fhir_mappings.directory import (
        organization_record_from_organization,
        related_contact_from_related_person,
        site_from_location,
        staff_role_from_practitioner_role,
    )

    orgs = {k: organization_record_from_organization(v) for k, v in load("Organization").items()}
    assert orgs["org-riverside-dental"].timezone == "Europe/London"
    assert orgs["org-hudson-skin"].timezone == "America/New_York" and "&" in orgs["org-hudson-skin"].name
    sites = {k: site_from_location(v) for k, v in load("Location").items()}
    assert sites["loc-rdc-clapham"].status == "inactive"
    assert sites["loc-smh-opd-a"].part_of == "loc-smh-campus" and sites["loc-smh-opd-a"].timezone == "Asia/Kolkata"
    roles = [staff_role_from_practitioner_role(v) for v in load("PractitionerRole").values()]
    assert len(roles) == 17 and all(r.organization_id for r in roles)
    contacts = [related_contact_from_related_person(v) for v in load("RelatedPerson").values()]
    assert len(contacts) == 76 and all(c.patient_id for c in contacts)
    assert {code.split("|")[1] for c in contacts for code in c.relationship_codes} >= {"MTH", "FTH"}


def test_written_resources_keep_our_identifier_and_status() -> None:
    from fhir_mappings.written import IDENTIFIER_SYSTEM, written_from_resource

    task = {"resourceType": "Task", "id": "t1", "meta": {"versionId": "3"}, "status": "completed",
            "intent": "order", "identifier": [{"system": IDENTIFIER_SYSTEM, "value": "care-ticket:7"}],
            "businessStatus": {"coding": [{"code": "resolved"}]}}
    row = written_from_resource(task)
    assert (row.identifier_value, row.status, row.business_status, row.version_id) == (
        "care-ticket:7", "completed", "resolved", "3")


def test_what_a_visit_or_booking_is_for_is_kept_in_the_ehrs_words() -> None:
    """The type's text, else a coding's display, else the service type (a booking: else its description)."""
    encounter = load("Encounter")["enc-000001-001"]
    assert visit_from_encounter(encounter).type_text == encounter["type"][0]["text"] == "New patient consultation"
    spaced = {"system": "urn:y", "code": "B", "display": "  Dental\n check-up "}
    coded_only = {**encounter, "type": [{"coding": [{"system": "urn:x", "code": "A"}, spaced]}]}
    assert visit_from_encounter(coded_only).type_text == "Dental check-up"
    untyped = {k: v for k, v in encounter.items() if k != "type"}
    assert visit_from_encounter(untyped).type_text == "General Dental"  # its serviceType's display
    assert visit_from_encounter({k: v for k, v in untyped.items() if k != "serviceType"}).type_text is None

    appointment = load("Appointment")["appt-000001-001"]
    assert booking_from_appointment(appointment).type_text == "Check-up (examination)"
    described = {k: v for k, v in appointment.items() if k not in ("appointmentType", "serviceType")}
    assert booking_from_appointment(described).type_text == appointment["description"] == "Dental check-up"
    long = {**appointment, "appointmentType": {"text": "x" * 500}}
    assert booking_from_appointment(long).type_text == "x" * 200


def test_every_visit_and_booking_in_the_data_set_says_what_it_is_for() -> None:
    assert all(visit_from_encounter(r).type_text for r in load("Encounter").values())
    assert all(booking_from_appointment(r).type_text for r in load("Appointment").values())


def test_a_shared_appointment_keeps_every_patient_it_names_and_who_declined() -> None:
    """A data set booking made a group session: two more patients (one named twice), a third who declined,
    a fourth whose first entry declined and second did not. The first booked comes first. The data set books
    one patient an appointment: every one of its bookings is nobody else's."""
    appointment = load("Appointment")["appt-000001-001"]
    assert [b for b in map(booking_from_appointment, load("Appointment").values()) if b.shared] == []
    first = next(p for p in appointment["participant"] if p["actor"]["reference"].startswith("Patient/"))
    theirs = first["actor"]["reference"].removeprefix("Patient/")
    group = {**appointment, "participant": [*appointment["participant"], *(
        {"actor": {"reference": reference}, "required": "required", "status": status}
        for reference, status in (("Patient/pat-000002", "accepted"), ("Patient/pat-000003", "declined"),
                                  ("https://ehr.example/fhir/Patient/pat-000004", "tentative"),
                                  ("Patient/pat-000002", "accepted"), ("Patient/pat-000005", "declined"),
                                  ("Patient/pat-000005", "needs-action")))]}
    booking = booking_from_appointment(group)
    assert (booking.patient_id, booking.other_patients, booking.declined_patients, booking.shared) == (
        theirs, ["pat-000002", "pat-000004", "pat-000005"], ["pat-000003"], True)
    first_declined = {**group, "participant": [{**first, "status": "declined"}, *group["participant"][1:]]}
    booking = booking_from_appointment(first_declined)
    assert (booking.patient_id, booking.other_patients, booking.declined_patients) == (
        "pat-000002", ["pat-000004", "pat-000005"], [theirs, "pat-000003"])
    cancelled = {**group, "status": "cancelled",
                 "participant": [{**p, "status": "declined"} for p in group["participant"]]}
    booking = booking_from_appointment(cancelled)
    assert (booking.patient_id, booking.other_patients, booking.declined_patients, booking.shared) == (
        theirs, [], [theirs, "pat-000002", "pat-000003", "pat-000004", "pat-000005"], True), \
        "still in each one's record; with nobody booked, its patient_id is among those who declined"
    assert Booking(**booking.model_dump()).patients == [
        theirs, "pat-000002", "pat-000003", "pat-000004", "pat-000005"], "each once"
    alone = {**appointment, "participant": [{**p, "status": "declined"} for p in appointment["participant"]]}
    booking = booking_from_appointment(alone)
    assert (booking.patient_id, booking.other_patients, booking.declined_patients, booking.shared) == (
        theirs, [], [theirs], False)
