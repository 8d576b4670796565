"""FHIR R4 Organization, Location, PractitionerRole and RelatedPerson -> PRM directory rows (pure)."""

from __future__ import annotations

from typing import Any

from fhir_mappings.common import codes, meta, ref_id, ref_ids
from fhir_mappings.r4_schema import check_resource
from prm.snapshot_models import OrganizationRecordCreate, RelatedContactCreate, SiteCreate, StaffRoleCreate

TIMEZONE_URLS = (
    "http://hl7.org/fhir/StructureDefinition/timezone",  # extensions pack, usable in R4
    "http://hl7.org/fhir/StructureDefinition/tz-code",  # R4 core's older spelling of the same idea
)


def timezone_of(resource: dict[str, Any]) -> str | None:
    """The IANA zone a clinic or site declares, if it declares one."""
    for extension in resource.get("extension", []):
        if extension.get("url") in TIMEZONE_URLS and extension.get("valueCode"):
            return str(extension["valueCode"])
    return None


def organization_record_from_organization(resource: dict[str, Any]) -> OrganizationRecordCreate:
    check_resource("Organization", resource)
    return OrganizationRecordCreate(
        **meta(resource), name=resource.get("name", ""), active=resource.get("active", True),
        part_of=ref_id(resource.get("partOf"), "Organization"), timezone=timezone_of(resource),
    )


def site_from_location(resource: dict[str, Any]) -> SiteCreate:
    check_resource("Location", resource)
    return SiteCreate(
        **meta(resource), name=resource.get("name", ""), status=resource.get("status"),
        part_of=ref_id(resource.get("partOf"), "Location"),
        organization_id=ref_id(resource.get("managingOrganization"), "Organization"), timezone=timezone_of(resource),
    )


def staff_role_from_practitioner_role(resource: dict[str, Any]) -> StaffRoleCreate:
    check_resource("PractitionerRole", resource)
    return StaffRoleCreate(
        **meta(resource), active=resource.get("active", True),
        practitioner_id=ref_id(resource.get("practitioner"), "Practitioner"),
        organization_id=ref_id(resource.get("organization"), "Organization"),
        location_ids=ref_ids(resource.get("location", []), "Location"),
        codes=codes(resource.get("code")), specialty_codes=codes(resource.get("specialty")),
        timezone=timezone_of(resource),
    )


def related_contact_from_related_person(resource: dict[str, Any]) -> RelatedContactCreate:
    check_resource("RelatedPerson", resource)
    names = [n for n in resource.get("name", []) if n.get("use") != "old"]
    name = names[0] if names else {}
    display = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
    return RelatedContactCreate(
        **meta(resource), patient_id=ref_id(resource.get("patient"), "Patient"),
        active=resource.get("active", True), display_name=display,
        relationship_codes=codes(resource.get("relationship")),
        telecom=[{"system": t.get("system"), "value": t.get("value"), "use": t.get("use"), "rank": t.get("rank")}
                 for t in resource.get("telecom", []) if t.get("value")],
    )
