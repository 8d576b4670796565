"""FHIR R4 Encounter -> Visit (pure; the R4 schema check at the edge)."""

from __future__ import annotations

from typing import Any

from fhir_mappings.common import codes, concept_text, instant, meta, ref_id, ref_ids
from fhir_mappings.r4_schema import check_resource
from prm.snapshot_models import VisitCreate


def visit_from_encounter(resource: dict[str, Any]) -> VisitCreate:
    check_resource("Encounter", resource)
    period = resource.get("period") or {}
    start_at, start_offset = instant(period.get("start"))
    end_at, end_offset = instant(period.get("end"))
    participants = [p.get("individual") for p in resource.get("participant", []) if p.get("individual")]
    return VisitCreate(
        **meta(resource),
        patient_id=ref_id(resource.get("subject"), "Patient"),
        status=resource["status"],
        class_code=(resource.get("class") or {}).get("code"),
        type_codes=codes(resource.get("type")),
        service_type_codes=codes(resource.get("serviceType")),
        type_text=concept_text(resource.get("type"), resource.get("serviceType")),
        start_at=start_at, start_offset_min=start_offset, end_at=end_at, end_offset_min=end_offset,
        location_ids=ref_ids([loc.get("location") or {} for loc in resource.get("location", [])], "Location"),
        service_provider=ref_id(resource.get("serviceProvider"), "Organization"),
        appointment_ids=ref_ids(resource.get("appointment", []), "Appointment"),
        practitioners=ref_ids(participants, "Practitioner"),
    )
