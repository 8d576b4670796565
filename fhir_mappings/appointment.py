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
    patients = booked_patients(resource)
    reason = codes(resource.get("cancelationReason"))
    return BookingCreate(
        **meta(resource),
        patient_id=patients[0] if patients else None,
        other_patients=patients[1:],
        shared=len(patients) > 1,
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



def booked_patients(resource: dict[str, Any]) -> list[str]:
    """The patients booked on the appointment, in the order it names them, each once: those whose participation
    is not `declined`, or, where every patient declined (a booking the patient cancelled), the first named.

    Why: a group session, a couple's or a family's appointment names several patients, and each one's sidebar
    shows it; one who declined a place in a group session is not booked on it, while the others still are."""
    named: list[str] = []
    booked: list[str] = []
    for participant in resource.get("participant", []):
        patient = ref_id(participant.get("actor"), "Patient")
        if patient is None or patient in named:
            continue
        named.append(patient)
        if participant.get("status") != "declined":
            booked.append(patient)
    return booked or named[:1]
