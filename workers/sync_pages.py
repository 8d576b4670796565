"""One page of one stream, committed as a unit: check and map each resource, quarantine the bad ones,
upsert the rest, tombstone deletions, move the cursor, and write one audit record for the page."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import SQLModel

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
from prm import audit, snapshots, streams
from prm.errors import ValidationError
from prm.snapshot_models import SyncStream
from workers.runtime import WorkerContext
from workers.writeback_status import follow_written

log = logging.getLogger(__name__)

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


@dataclass
class PageResult:
    stored: int = 0
    quarantined: int = 0
    deleted: int = 0
    skipped: int = 0


def last_updated(resource: dict[str, Any]) -> datetime | None:
    try:
        return instant((resource.get("meta") or {}).get("lastUpdated"))[0]
    except ValueError:
        return None


def commit_page(ctx: WorkerContext, stream_id: int, resources: list[dict[str, Any]], *,
                deleted_ids: list[str] | None = None, move_cursor: bool = True, client: str = "sync") -> PageResult:
    """Store one page in one transaction; the cursor only moves with the page it covers."""
    result = PageResult()
    with ctx.db.session() as session:
        stream: SyncStream = streams.get(session, stream_id)
        mapper = MAPPERS[stream.resource_type]
        rows: list[SQLModel] = []
        instants: list[tuple[str, datetime | None]] = []
        for resource in resources:
            stamp = last_updated(resource)
            if move_cursor and streams.already_seen(stream, str(resource.get("id")), stamp):
                result.skipped += 1
                continue
            try:
                if resource.get("resourceType") != stream.resource_type:
                    raise ValidationError(f"expected {stream.resource_type}, got {resource.get('resourceType')!r}")
                rows.append(mapper(resource))
            except (ValidationError, ValueError, KeyError, TypeError) as exc:
                if streams.quarantine(session, ctx.settings.clock, stream.connection_id, stream.resource_type,
                                      resource, f"{type(exc).__name__}: {exc}"):
                    result.quarantined += 1
            instants.append((str(resource.get("id")), stamp))
        result.stored = snapshots.upsert_page(session, stream.connection_id, stream.resource_type, rows)
        if stream.resource_type in ("Task", "Communication"):  # status back: the PRM item follows the EHR
            follow_written(session, ctx.settings.clock, stream.connection_id, resources)
        result.deleted = snapshots.mark_deleted(session, stream.connection_id, stream.resource_type,
                                                deleted_ids or [])
        if move_cursor:
            streams.advance(stream, instants)
        stream.quarantined += result.quarantined
        stream.pages += 1
        stream.resources_synced += result.stored
        stream.deleted_synced += result.deleted
        session.add(stream)
        if result.stored or result.deleted or result.quarantined:
            audit.record(session, ctx.settings.clock, audit.Actor("system", client, connection_id=stream.connection_id),
                         "sync.page", entity=stream.resource_type, count=result.stored + result.deleted,
                         outcome="success" if not result.quarantined else "partial",
                         detail=f"quarantined {result.quarantined}" if result.quarantined else None)
    if result.quarantined:
        log.warning("stream %s: %d resource(s) quarantined", stream_id, result.quarantined)
    return result
