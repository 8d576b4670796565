"""Small pieces every inbound mapper needs: the R4B check at the edge, instants with offsets, references, codes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from prm.errors import ValidationError


def check_r4(model: type[BaseModel], resource: dict[str, Any], what: str | None = None) -> None:
    """Structure and formats against the fhir.resources R4B model; ValidationError names the first problem.
    `what` names the resource in the message (default `Type/id`; an outbound resource has no id yet)."""
    expected = model.__name__
    if resource.get("resourceType") != expected:
        raise ValidationError(f"expected a {expected}, got {resource.get('resourceType')!r}")
    try:
        model.model_validate(resource)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        label = what or f"{expected}/{resource.get('id')}"
        raise ValidationError(f"{label} is not a valid R4 {expected}: {where}: {first.get('msg')}") from exc


def instant(value: str | None) -> tuple[datetime | None, int | None]:
    """A FHIR dateTime as (UTC instant, source UTC offset in minutes); dates without a time keep None offset."""
    if not value:
        return None, None
    if len(value) < len("YYYY-MM-DD"):  # FHIR allows a year, or a year and month: no day, so no time to sort by
        raise ValueError("a dateTime of a year or a month alone is not a point in time the PRM can place")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:  # a date or a dateTime without zone: FHIR says the zone is unknown; read as UTC
        return parsed.replace(tzinfo=UTC), None
    offset = parsed.utcoffset()
    return parsed.astimezone(UTC), int(offset.total_seconds() // 60) if offset is not None else None


def ref_id(reference: dict[str, Any] | None, resource_type: str) -> str | None:
    """The id of a `Type/id` reference (relative or absolute) if it points to `resource_type`."""
    text = (reference or {}).get("reference") or ""
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def patients_named(resource_type: str, resource: dict[str, Any]) -> list[str]:
    """The patients a resource of the Patient compartment names, each once, in order, read defensively (a
    refused resource may be malformed): a Patient its own id, an Appointment every patient among its
    participants (declined or not), a RelatedPerson its `patient`, a Task its `for`, the others their
    `subject`; none where it names none readably."""
    if resource_type == "Patient":
        return [resource["id"]] if isinstance(resource.get("id"), str) else []
    if resource_type == "Appointment":
        holders = [p.get("actor") for p in resource.get("participant") or [] if isinstance(p, dict)]
    else:
        holders = [resource.get({"RelatedPerson": "patient", "Task": "for"}.get(resource_type, "subject"))]
    patients = [ref_id(h, "Patient") for h in holders if isinstance(h, dict) and isinstance(h.get("reference"), str)]
    return list(dict.fromkeys(p for p in patients if p))


def ref_ids(references: list[dict[str, Any]], resource_type: str) -> list[str]:
    return [i for i in (ref_id(r, resource_type) for r in references) if i]


def codes(concepts: list[dict[str, Any]] | dict[str, Any] | None) -> list[str]:
    """`system|code` of every coding of one or more CodeableConcepts, in order, without repeats."""
    if not concepts:
        return []
    items = concepts if isinstance(concepts, list) else [concepts]
    found = [f"{c.get('system', '')}|{c.get('code', '')}" for cc in items for c in cc.get("coding", [])
             if c.get("code")]
    return list(dict.fromkeys(found))


TEXT_MAX = 200  # the column's width: an EHR's wording longer than this is cut, never refused


def concept_text(*concepts: list[dict[str, Any]] | dict[str, Any] | None) -> str | None:
    """How the EHR words the first of these CodeableConcepts (or lists of them) that says anything: its `text`,
    else its first coding's `display`. The codes say what a thing is to a machine; a clinic's own code system
    names its codes only in the EHR, so the words are kept beside them for people."""
    for concept in concepts:
        for cc in concept if isinstance(concept, list) else [concept] if concept else []:
            said = words(cc.get("text")) or next(filter(None, (words(c.get("display")) for c in cc.get("coding", []))),
                                                 None)
            if said:
                return said
    return None


def words(text: Any) -> str | None:
    """An EHR's free text for display: spaces made single, cut at TEXT_MAX; None where it says nothing."""
    return " ".join(text.split())[:TEXT_MAX] or None if isinstance(text, str) else None


def meta(resource: dict[str, Any]) -> dict[str, Any]:
    """fhir_id, version_id and last_updated, which every snapshot row carries."""
    m = resource.get("meta") or {}
    updated, _ = instant(m.get("lastUpdated"))
    return {"fhir_id": resource["id"], "version_id": m.get("versionId"), "last_updated": updated}
