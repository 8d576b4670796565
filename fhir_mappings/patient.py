"""FHIR R4 Patient -> PRM patient words. Pure functions; the R4 schema checks structure at the edge."""

from __future__ import annotations

from typing import Any

from fhir_mappings.common import meta, ref_id
from fhir_mappings.r4_schema import check_resource
from prm.patients import PatientHeader
from prm.snapshot_models import PatientRecordCreate

_NAME_USE_ORDER = ("usual", "official", None, "nickname", "temp", "anonymous", "maiden", "old")


def _display_name(resource: dict[str, Any]) -> str:
    """The name a receptionist would say: `usual` before `official`, Latin script before others."""
    names = [n for n in resource.get("name", []) if n.get("use") != "old"]
    if not names:
        return "(no name recorded)"

    def rank(name: dict[str, Any]) -> tuple[int, int]:
        use = name.get("use") if name.get("use") in _NAME_USE_ORDER else None
        script_rank = 1 if any(
            str(ext.get("url", "")).endswith("iso21090-EN-representation") for ext in name.get("extension", [])
        ) else 0
        return (script_rank, _NAME_USE_ORDER.index(use))

    best = sorted(names, key=rank)[0]
    if best.get("text"):
        return str(best["text"])
    parts = [*best.get("prefix", []), *best.get("given", []), best.get("family") or ""]
    return " ".join(p for p in parts if p).strip() or "(no name recorded)"


def patient_header_from_fhir(resource: dict[str, Any]) -> PatientHeader:
    """Check the Patient against the R4 schema and pick the banner fields; ValidationError names what is wrong."""
    check_resource("Patient", resource)
    deceased = bool(resource.get("deceasedBoolean")) or resource.get("deceasedDateTime") is not None
    return PatientHeader(
        fhir_id=str(resource["id"]),
        display_name=_display_name(resource),
        birth_date=resource.get("birthDate"),
        gender=resource.get("gender"),
        deceased=deceased,
    )


_TELECOM_USE_ORDER = ("mobile", "home", "work", None, "temp", "old")


def _telecom(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Contact points best first: by rank, then mobile before home before work; `old` ones dropped."""
    points = [
        {"system": t.get("system"), "value": t.get("value"), "use": t.get("use"), "rank": t.get("rank")}
        for t in resource.get("telecom", []) if t.get("value") and t.get("use") != "old"
    ]
    return sorted(points, key=lambda t: (t["rank"] or 999, _TELECOM_USE_ORDER.index(
        t["use"] if t["use"] in _TELECOM_USE_ORDER else None)))


def _postcode(resource: dict[str, Any]) -> str | None:
    current = [a for a in resource.get("address", [])
               if a.get("use") != "old" and not (a.get("period") or {}).get("end")]
    return next((a["postalCode"] for a in current if a.get("postalCode")), None)


def patient_record_from_patient(resource: dict[str, Any]) -> PatientRecordCreate:
    """The Patient as the PRM keeps it: contactability, language, practice, merge links."""
    header = patient_header_from_fhir(resource)
    links = [{"type": link.get("type", ""), "other": ref_id(link.get("other"), "Patient") or ""}
             for link in resource.get("link", [])]
    replaced_by = next((link["other"] for link in links if link["type"] == "replaced-by" and link["other"]), None)
    return PatientRecordCreate(
        **meta(resource),
        active=resource.get("active", True),
        deceased=header.deceased,
        display_name=header.display_name,
        birth_date=header.birth_date,
        gender=header.gender,
        postcode=_postcode(resource),
        managing_organization=ref_id(resource.get("managingOrganization"), "Organization"),
        replaced_by=replaced_by,
        telecom=_telecom(resource),
        languages=[
            {"code": c["language"]["coding"][0].get("code"), "preferred": bool(c.get("preferred"))}
            for c in resource.get("communication", []) if (c.get("language") or {}).get("coding")
        ],
        general_practitioners=[r["reference"] for r in resource.get("generalPractitioner", []) if r.get("reference")],
        links=links,
    )
