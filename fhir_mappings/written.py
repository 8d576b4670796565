"""FHIR R4 Task/Communication that fhir-prm wrote -> WrittenResource rows (status comes back from the EHR)."""

from __future__ import annotations

from typing import Any

from fhir_mappings.common import meta
from fhir_mappings.r4_schema import check_resource
from prm.outbox import IDENTIFIER_SYSTEM
from prm.snapshot_models import WrittenResourceCreate

__all__ = ["IDENTIFIER_SYSTEM", "WRITTEN_TYPES", "is_ours", "written_from_resource"]

# The types fhir-prm writes back: synced only where they carry our identifier system, never wholesale.
WRITTEN_TYPES = ("Task", "Communication")


def is_ours(resource: dict[str, Any]) -> bool:
    """Whether fhir-prm wrote it: it carries an identifier in our system (other systems' Tasks never do)."""
    return any(isinstance(i, dict) and i.get("system") == IDENTIFIER_SYSTEM for i in resource.get("identifier") or [])


def written_from_resource(resource: dict[str, Any]) -> WrittenResourceCreate:
    kind = resource.get("resourceType")
    check_resource("Task" if kind == "Task" else "Communication", resource)
    ours = next((i.get("value") for i in resource.get("identifier", []) if i.get("system") == IDENTIFIER_SYSTEM), None)
    business = ((resource.get("businessStatus") or {}).get("coding") or [{}])[0].get("code")
    return WrittenResourceCreate(
        **meta(resource), resource_type=str(kind), identifier_value=ours, status=resource.get("status"),
        business_status=business,
    )
