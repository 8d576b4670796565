"""The pieces every write-back mapper shares: business identifier, references, codes, instants, the R4B check.

R4B validation checks structure and formats only: it accepts any code, any reference text and any target type.
So the code tables and reference checks live here, and an EHR never sees a resource we could have refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from fhir_mappings.common import check_r4
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.errors import ValidationError
from prm.fhir_names import REFERENCE, is_id

# R4 target types, so a bad reference fails here rather than as a 422 from the EHR in a worker at 3 a.m.
RECIPIENT_TYPES = frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole",
                             "RelatedPerson", "Group", "CareTeam", "HealthcareService"})
SENDER_TYPES = frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson",
                          "HealthcareService"})


def fhir_instant(value: datetime | None, what: str) -> str:
    """ISO-8601 in UTC with an explicit +00:00; a naive datetime is a bug upstream, never guessed at here."""
    if value is None:
        raise ValidationError(f"{what} is missing")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{what} is a naive datetime; fhir-prm keeps aware UTC times")
    return value.astimezone(UTC).isoformat()


def reference(value: str, what: str, allowed: frozenset[str] | None = None) -> dict[str, str]:
    """A relative `Type/id` reference, checked for shape and (where R4 restricts it) target type."""
    match = REFERENCE.fullmatch(value or "")
    if match is None:
        raise ValidationError(f"{what} {value!r} is not a Type/id reference")
    if allowed is not None and match["type"] not in allowed:
        raise ValidationError(f"{what} {value!r}: R4 allows only {', '.join(sorted(allowed))} here")
    return {"reference": value}


def typed_reference(resource_type: str, fhir_id: str | None, what: str) -> dict[str, str]:
    if not fhir_id or not is_id(fhir_id):
        raise ValidationError(f"{what} {fhir_id!r} is not a FHIR id")
    return {"reference": f"{resource_type}/{fhir_id}"}


def coded(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def business_identifier(key: str) -> list[dict[str, str]]:
    if not key:
        raise ValidationError("business_key is missing: every resource we write carries one (exactly-once)")
    return [{"system": IDENTIFIER_SYSTEM, "value": key}]


def checked(model: type[BaseModel], resource: dict[str, Any], what: str) -> dict[str, Any]:
    """The resource itself (our ISO offsets intact), once the R4B model accepts it."""
    check_r4(model, resource, what)
    return resource


def code_in(concepts: list[dict[str, Any]] | dict[str, Any] | None, system: str) -> str | None:
    """The first code from `system` among one or more CodeableConcepts."""
    items = concepts if isinstance(concepts, list) else [concepts or {}]
    return next((c.get("code") for cc in items for c in cc.get("coding", []) if c.get("system") == system), None)


def our_key(resource: dict[str, Any]) -> str | None:
    return next((i.get("value") for i in resource.get("identifier", []) if i.get("system") == IDENTIFIER_SYSTEM),
                None)
