"""FHIR R4 Patient -> PRM patient words. Pure functions; the R4B models check structure at the edge."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import patient as fhir_patient
from pydantic import ValidationError as PydanticValidationError

from prm.errors import ValidationError
from prm.patients import PatientHeader

_NAME_USE_ORDER = ("usual", "official", None, "nickname", "temp", "anonymous", "maiden", "old")


def _display_name(model: fhir_patient.Patient) -> str:
    """The name a receptionist would say: `usual` before `official`, Latin script before others."""
    names = [n for n in (model.name or []) if n.use != "old"]
    if not names:
        return "(no name recorded)"

    def rank(name: Any) -> tuple[int, int]:
        use = name.use if name.use in _NAME_USE_ORDER else None
        script_rank = 1 if any(
            (ext.url or "").endswith("iso21090-EN-representation") for ext in (name.extension or [])
        ) else 0
        return (script_rank, _NAME_USE_ORDER.index(use))

    best = sorted(names, key=rank)[0]
    if best.text:
        return str(best.text)
    parts = [*(best.prefix or []), *(best.given or []), best.family or ""]
    return " ".join(p for p in parts if p).strip() or "(no name recorded)"


def patient_header_from_fhir(resource: dict[str, Any]) -> PatientHeader:
    """Check the Patient against R4B and pick the banner fields; ValidationError names what is wrong."""
    if resource.get("resourceType") != "Patient":
        raise ValidationError(f"expected a Patient, got {resource.get('resourceType')!r}")
    try:
        model = fhir_patient.Patient.model_validate(resource)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValidationError(f"Patient/{resource.get('id')} is not valid R4: {where}: {first.get('msg')}") from exc
    deceased = bool(model.deceasedBoolean) or model.deceasedDateTime is not None
    return PatientHeader(
        fhir_id=str(model.id),
        display_name=_display_name(model),
        birth_date=model.birthDate,
        gender=model.gender,
        deceased=deceased,
    )
