"""Check and map one page of incoming resources, without the database: the pure half of storing a page, so a
helper process can do it for the next page while the worker stores this one (workers/prep_helper.py). Given
where the page will be stored, its rows come out encoded for that database's driver (prm.snapshot_rows).

A resource that fails the edge check (or is not the stream's type) is set aside with its error for
quarantine; it never stops the rest of the page. The error names where and what rule, never the value (see
`quarantine_reason`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Dialect
from sqlmodel import SQLModel

from connector.bulk import parse_line
from fhir_mappings.appointment import booking_from_appointment
from fhir_mappings.common import instant
from fhir_mappings.directory import (
    organization_record_from_organization,
    related_contact_from_related_person,
    site_from_location,
    staff_role_from_practitioner_role,
)
from fhir_mappings.encounter import visit_from_encounter
from fhir_mappings.patient import patient_record_from_patient
from fhir_mappings.written import written_from_resource
from prm.db import offline_dialect
from prm.errors import ValidationError
from prm.snapshot_rows import EncodedRows, encode_rows

MAPPERS: dict[str, Callable[[dict[str, Any]], SQLModel]] = {
    "Patient": patient_record_from_patient,
    "Encounter": visit_from_encounter,
    "Appointment": booking_from_appointment,
    "RelatedPerson": related_contact_from_related_person,
    "Organization": organization_record_from_organization,
    "Location": site_from_location,
    "PractitionerRole": staff_role_from_practitioner_role,
    "Task": written_from_resource,
    "Communication": written_from_resource,
}
Seen = Callable[[str, datetime | None], bool]


@dataclass(frozen=True)
class Target:
    """Where a page's rows will be stored: the database's dialect ("sqlite", "postgresql") and the connection."""

    dialect: str
    connection_id: int


@dataclass
class PreparedPage:
    """Plain data (it crosses a pipe): snapshot rows as field values, or as driver values once encoded for a
    Target; the bad resources; and the cursor's input."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    encoded: EncodedRows | None = None  # the rows, newest per id, ready for the target's driver (rows is empty)
    bad: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (payload, error) to quarantine
    instants: list[tuple[str, datetime | None]] = field(default_factory=list)  # (id, lastUpdated) of each resource
    skipped: int = 0
    left: int = 0  # held rows the page took out: their new version names nobody in the Group's population


def last_updated(resource: dict[str, Any]) -> datetime | None:
    try:
        return instant((resource.get("meta") or {}).get("lastUpdated"))[0]
    except ValueError:
        return None


def prepare_page(resource_type: str, resources: list[dict[str, Any]], seen: Seen | None = None) -> PreparedPage:
    """Check and map each resource; `seen(id, lastUpdated)` skips ties the cursor has already committed."""
    page = PreparedPage()
    mapper = MAPPERS[resource_type]
    for resource in resources:
        stamp = last_updated(resource)
        if seen is not None and seen(str(resource.get("id")), stamp):
            page.skipped += 1
            continue
        try:
            if resource.get("resourceType") != resource_type:
                raise ValidationError(f"expected {resource_type}, got {resource.get('resourceType')!r}")
            page.rows.append(mapper(resource).__dict__)  # the model's fields (model_dump cost 30 µs a row)
        except (ValidationError, ValueError, KeyError, TypeError) as exc:
            page.bad.append((resource, quarantine_reason(exc)))
        page.instants.append((str(resource.get("id")), stamp))
    return page


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def quarantine_reason(exc: Exception) -> str:
    """The error kept with a quarantined resource and shown to IT: never a value of the resource.

    The edge check words its own errors that way (`r4_schema.rule_broken`). A mapper's ValueError may quote
    what it could not read (Python's `Invalid isoformat string: '...'`): its quoted parts are left out.
    A TypeError or KeyError names types and element names, which are not the patient's."""
    text = str(exc)
    if isinstance(exc, ValueError):
        text = _QUOTED.sub("'…'", text)
    return f"{type(exc).__name__}: {text}"


def prepare_lines(resource_type: str, lines: list[tuple[int, bytes]], target: Target | None = None) -> PreparedPage:
    """A page of raw NDJSON lines (line number, bytes): parsed, then prepared, then (given a target) encoded;
    a line that is not a resource object is set aside like an invalid resource."""
    page = prepare_page(resource_type, [parse_line(raw, number) for number, raw in lines])
    if target is not None:
        page.encoded = encode_rows(_dialect(target.dialect), target.connection_id, resource_type, page.rows)
        page.rows = []
    return page


@functools.cache
def _dialect(name: str) -> Dialect:
    return offline_dialect(name)
