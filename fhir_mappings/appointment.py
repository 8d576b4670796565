"""FHIR R4 Appointment -> Booking (pure; the R4 schema check at the edge)."""

from __future__ import annotations

from typing import Any

from fhir_mappings.common import codes, concept_text, instant, meta, ref_id, ref_ids, words
from fhir_mappings.r4_schema import check_resource
from prm.snapshot_models import BookingCreate


def booking_from_appointment(resource: dict[str, Any]) -> BookingCreate:
    check_resource("Appointment", resource)
    start_at, start_offset = instant(resource.get("start"))
    end_at, end_offset = instant(resource.get("end"))
    actors = [p.get("actor") or {} for p in resource.get("participant", [])]
    booked, declined = appointment_patients(resource)
    reason = codes(resource.get("cancelationReason"))
    return BookingCreate(
        **meta(resource),
        patient_id=next(iter(booked or declined), None),
        other_patients=booked[1:],
        declined_patients=declined,  # with nobody booked, its patient_id too: it is on no one's sidebar
        shared=len(booked) + len(declined) > 1,
        status=resource["status"],
        start_at=start_at, start_offset_min=start_offset, end_at=end_at, end_offset_min=end_offset,
        minutes_duration=resource.get("minutesDuration"),
        service_type_codes=codes(resource.get("serviceType")),
        appointment_type_codes=codes(resource.get("appointmentType")),
        type_text=concept_text(resource.get("appointmentType"), resource.get("serviceType"))
        or words(resource.get("description")),  # the EHR's own line for it
        cancelation_reason=reason[0].split("|", 1)[1] if reason else None,
        location_ids=ref_ids(actors, "Location"),
        practitioners=ref_ids(actors, "Practitioner"),
        related_people=ref_ids(actors, "RelatedPerson"),
    )


def appointment_patients(resource: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The patients the appointment names, each once, in the order it first names them: those booked on it
    (their participation is not `declined`; one named twice is booked where any entry is not), and those who
    declined.

    Why: a group session, a couple's or a family's appointment names several patients. Each one booked sees
    it on their sidebar; one who declined a place does not, but the appointment still names them in the EHR
    (a `patient` search finds it), so the snapshot keeps it with their records, as it keeps every record of
    theirs."""
    named: dict[str, bool] = {}  # patient -> booked (some entry of theirs not declined)
    for participant in resource.get("participant", []):
        patient = ref_id(participant.get("actor"), "Patient")
        if patient is not None:
            named[patient] = named.get(patient, False) or participant.get("status") != "declined"
    return [p for p, booked in named.items() if booked], [p for p, booked in named.items() if not booked]
