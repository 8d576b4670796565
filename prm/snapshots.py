"""Writing the snapshot a page at a time: one set-based, version-aware upsert per page.

A row is replaced only by a version at least as new (`last_updated`), so a late bulk file can never
overwrite what an incremental sync already brought. Upserting the same page twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import Session, SQLModel, col, select

from prm.db import in_chunks
from prm.fhir_names import is_id
from prm.pg_copy import COPY_FROM_ROWS
from prm.snapshot_models import Booking, PatientRecord, RelatedContact, Visit, WrittenResource, tombstone_values
from prm.snapshot_rows import TABLES, encode_rows, newest_by_id, store_encoded, store_new, upsert_statement

__all__ = [
    "TABLES", "live_ids", "mark_deleted", "merge_survivors", "stamps_of", "store_encoded", "store_new", "upsert_page",
    "versions",
]


def upsert_page(session: Session, connection_id: int, resource_type: str,
                rows: Sequence[SQLModel | dict[str, Any]]) -> int:
    """Insert or (if newer or equal) update each row (a model, or its field values); returns how many distinct
    resources the page held."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql" and len(rows) < COPY_FROM_ROWS:  # a short page: one ordinary statement
        values = [{**fields, "connection_id": connection_id} for fields in newest_by_id(rows)]
        session.execute(upsert_statement(resource_type, "postgresql"), values)
        return len(values)
    return store_encoded(session, resource_type, encode_rows(dialect, connection_id, resource_type, rows))


def mark_deleted(session: Session, connection_id: int, resource_type: str, fhir_ids: list[str]) -> int:
    """Tombstone rows deleted in the EHR, so no PRM query finds them; each keeps its key and stamps, and
    nothing of the person (`tombstone_values`)."""
    if not fhir_ids:
        return 0
    table = TABLES[resource_type]
    emptied = tombstone_values(table)
    marked = 0
    for chunk in in_chunks(fhir_ids):
        conditions = [col(table.connection_id) == connection_id, col(table.fhir_id).in_(chunk)]  # type: ignore[attr-defined]
        if table is WrittenResource:
            conditions.append(col(WrittenResource.resource_type) == resource_type)
        result = session.execute(update(table).where(*conditions).values(deleted=True, **emptied))
        marked += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return marked


def remove(session: Session, connection_id: int, resource_type: str, fhir_ids: Sequence[str]) -> int:
    """Delete these rows outright, not tombstoned: rows no longer the PRM's to hold (their record left the
    population a connection is kept to), which the EHR still has and may bring back if they return to it."""
    table = TABLES[resource_type]
    removed = 0
    for chunk in in_chunks(fhir_ids):
        conditions = [col(table.connection_id) == connection_id, col(table.fhir_id).in_(chunk)]  # type: ignore[attr-defined]
        if table is WrittenResource:
            conditions.append(col(WrittenResource.resource_type) == resource_type)
        removed += int(session.execute(delete(table).where(*conditions)).rowcount or 0)  # type: ignore[attr-defined]
    return removed


def merge_survivors(session: Session, connection_id: int) -> set[str]:
    """The records live patients were merged into (`Patient.link` replaced-by), to follow: where the EHR lists
    patients only by a Group, a survivor outside it would otherwise never be read, nor its visits."""
    return set(merge_links(session, connection_id).values())


def patients_named(session: Session, connection_id: int) -> set[str]:
    """Every patient a live row of the Patient compartment names: the Patients held, and the patients of the
    visits, bookings and contacts held (one stored without its patient's record is named too). A shared
    booking names none here: it is kept while any patient it names is kept (`shared_bookings_outside`)."""
    named = live_ids(session, connection_id, "Patient")
    for table in (Visit, Booking, RelatedContact):
        query = select(table.patient_id).distinct().where(
            col(table.connection_id) == connection_id, col(table.deleted).is_(False),
            col(table.patient_id).is_not(None))
        if table is Booking:
            query = query.where(col(Booking.shared).is_(False))
        named.update(p for p in session.exec(query) if p)
    return named


def shared_bookings_outside(session: Session, connection_id: int, patients: Collection[str]) -> list[Booking]:
    """Live shared bookings (a group session, a family's appointment) that name none of these patients (a
    population): nobody's to keep. Shared bookings are few."""
    kept = set(patients)
    rows = session.exec(select(Booking).where(
        col(Booking.connection_id) == connection_id, col(Booking.shared).is_(True), col(Booking.deleted).is_(False)))
    return [row for row in rows if kept.isdisjoint(row.patients)]


def merge_links(session: Session, connection_id: int) -> dict[str, str]:
    """Live patient id -> the record it was merged into (`Patient.link` replaced-by), for those merged."""
    query = select(PatientRecord.fhir_id, PatientRecord.replaced_by).where(
        col(PatientRecord.connection_id) == connection_id, col(PatientRecord.deleted).is_(False),
        col(PatientRecord.replaced_by).is_not(None))
    return {merged: survivor for merged, survivor in session.exec(query) if survivor and is_id(survivor)}


def live_ids(session: Session, connection_id: int, resource_type: str) -> set[str]:
    """FHIR ids of rows not tombstoned (reconciliation compares them with the EHR's)."""
    table = TABLES[resource_type]
    query = select(table.fhir_id).where(  # type: ignore[attr-defined]
        col(table.connection_id) == connection_id, col(table.deleted).is_(False))  # type: ignore[attr-defined]
    if table is WrittenResource:
        query = query.where(col(WrittenResource.resource_type) == resource_type)
    return set(session.exec(query))


def stamps_of(session: Session, connection_id: int, resource_type: str,
              fhir_ids: Sequence[str]) -> dict[str, datetime | None]:
    """`last_updated` of the live rows among `fhir_ids`: what the snapshot already holds of them (asked in
    chunks, `prm.db.in_chunks`)."""
    table = TABLES[resource_type]
    found: dict[str, datetime | None] = {}
    for chunk in in_chunks(fhir_ids):
        query = select(table.fhir_id, table.last_updated).where(  # type: ignore[attr-defined]
            col(table.connection_id) == connection_id, col(table.deleted).is_(False),  # type: ignore[attr-defined]
            col(table.fhir_id).in_(chunk))  # type: ignore[attr-defined]
        if table is WrittenResource:
            query = query.where(col(WrittenResource.resource_type) == resource_type)
        found.update(session.exec(query).all())
    return found


def held(session: Session, connection_id: int, resource_type: str) -> int:
    """How many resources of the type the snapshot holds now (not tombstoned): what IT compares with the EHR.
    A stream's `resources_synced` counts writes, and a change or a reload writes a resource again."""
    table = TABLES[resource_type]
    query = select(func.count()).select_from(table).where(
        col(table.connection_id) == connection_id, col(table.deleted).is_(False))  # type: ignore[attr-defined]
    if table is WrittenResource:
        query = query.where(col(WrittenResource.resource_type) == resource_type)
    return int(session.exec(query).one())


def versions(session: Session, connection_id: int, resource_type: str) -> set[tuple[str, str | None]]:
    """(id, versionId) of live rows: what the fault tests compare with the server."""
    table = TABLES[resource_type]
    query = select(table.fhir_id, table.version_id).where(  # type: ignore[attr-defined]
        col(table.connection_id) == connection_id, col(table.deleted).is_(False))  # type: ignore[attr-defined]
    if table is WrittenResource:
        query = query.where(col(WrittenResource.resource_type) == resource_type)
    return {(i, v) for i, v in session.exec(query)}
