"""Writing the snapshot a page at a time: one set-based, version-aware upsert per page.

A row is replaced only by a version at least as new (`last_updated`), so a late bulk file can never
overwrite what an incremental sync already brought. Upserting the same page twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, SQLModel, col, select

from prm.driver_rows import DriverStatement, driver_statement
from prm.pg_copy import COPY_FROM_ROWS, copy_upsert
from prm.snapshot_models import (
    Booking,
    OrganizationRecord,
    PatientRecord,
    RelatedContact,
    Site,
    StaffRole,
    Visit,
    WrittenResource,
)

TABLES: dict[str, type[SQLModel]] = {
    "Patient": PatientRecord,
    "Encounter": Visit,
    "Appointment": Booking,
    "RelatedPerson": RelatedContact,
    "Organization": OrganizationRecord,
    "Location": Site,
    "PractitionerRole": StaffRole,
    "Task": WrittenResource,
    "Communication": WrittenResource,
}


def _key(table: type[SQLModel]) -> list[str]:
    return ["connection_id", "resource_type", "fhir_id"] if table is WrittenResource else ["connection_id", "fhir_id"]


def _stamp(values: dict[str, Any]) -> datetime:
    return values.get("last_updated") or datetime.min.replace(tzinfo=UTC)


def upsert_page(session: Session, connection_id: int, resource_type: str,
                rows: Sequence[SQLModel | dict[str, Any]]) -> int:
    """Insert or (if newer or equal) update each row (a model, or its field values); returns how many rows the
    page held."""
    if not rows:
        return 0
    table_model = TABLES[resource_type]
    table: Any = table_model.__table__  # type: ignore[attr-defined]
    by_key: dict[str, dict[str, Any]] = {}
    for row in rows:  # a page can carry the same resource twice (ties re-read): keep the newest
        fields = row if isinstance(row, dict) else row.__dict__  # plain fields: model_dump cost 30 µs a row
        values = {**fields, "connection_id": connection_id}
        previous = by_key.get(values["fhir_id"])
        if previous is None or _stamp(values) >= _stamp(previous):
            by_key[values["fhir_id"]] = values
    values_list = list(by_key.values())
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql" and len(values_list) >= COPY_FROM_ROWS:
        copy_upsert(session, table, values_list, _key(table_model))
        return len(values_list)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    # One statement executed for many rows: compiled once and cached (a multi-row VALUES literal would be
    # compiled afresh for every page, which cost more than the database work itself).
    stmt = insert(table)
    updated = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in ("id", *_key(table_model))}
    newer = or_(table.c.last_updated.is_(None), stmt.excluded.last_updated.is_(None),
                stmt.excluded.last_updated >= table.c.last_updated)
    upsert = stmt.on_conflict_do_update(index_elements=_key(table_model), set_=updated, where=newer)
    if dialect == "sqlite":
        _driver_upsert(table_model, upsert, session.get_bind().dialect, tuple(values_list[0])).execute(
            session, values_list)
    else:
        session.execute(upsert, values_list)
    return len(values_list)


_DRIVER_UPSERTS: dict[tuple[type[SQLModel], tuple[str, ...]], DriverStatement] = {}


def _driver_upsert(table_model: type[SQLModel], upsert: Any, dialect: Any, keys: tuple[str, ...]) -> DriverStatement:
    """The SQLite upsert for rows with `keys`, compiled once per table (see prm.driver_rows)."""
    found = _DRIVER_UPSERTS.get((table_model, keys))
    if found is None:
        compiled = driver_statement(upsert, dialect, keys)
        if compiled is None:
            raise TypeError(f"{dialect.name}: positional parameters expected for the driver upsert")
        found = _DRIVER_UPSERTS[(table_model, keys)] = compiled
    return found


def mark_deleted(session: Session, connection_id: int, resource_type: str, fhir_ids: list[str]) -> int:
    """Tombstone rows deleted (or entered in error) in the EHR, so no PRM query finds them."""
    if not fhir_ids:
        return 0
    table = TABLES[resource_type]
    conditions = [col(table.connection_id) == connection_id, col(table.fhir_id).in_(fhir_ids)]  # type: ignore[attr-defined]
    if table is WrittenResource:
        conditions.append(col(WrittenResource.resource_type) == resource_type)
    result = session.execute(update(table).where(*conditions).values(deleted=True))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def live_ids(session: Session, connection_id: int, resource_type: str) -> set[str]:
    """FHIR ids of rows not tombstoned (reconciliation compares them with the EHR's)."""
    table = TABLES[resource_type]
    query = select(table.fhir_id).where(  # type: ignore[attr-defined]
        col(table.connection_id) == connection_id, col(table.deleted).is_(False))  # type: ignore[attr-defined]
    if table is WrittenResource:
        query = query.where(col(WrittenResource.resource_type) == resource_type)
    return set(session.exec(query))


IDS_PER_QUERY = 500


def stamps_of(session: Session, connection_id: int, resource_type: str,
              fhir_ids: Sequence[str]) -> dict[str, datetime | None]:
    """`last_updated` of the live rows among `fhir_ids`: what the snapshot already holds of them. Asked in
    chunks, so a long list stays under the databases' limits on bound parameters."""
    table = TABLES[resource_type]
    found: dict[str, datetime | None] = {}
    for start in range(0, len(fhir_ids), IDS_PER_QUERY):
        query = select(table.fhir_id, table.last_updated).where(  # type: ignore[attr-defined]
            col(table.connection_id) == connection_id, col(table.deleted).is_(False),  # type: ignore[attr-defined]
            col(table.fhir_id).in_(list(fhir_ids[start:start + IDS_PER_QUERY])))  # type: ignore[attr-defined]
        if table is WrittenResource:
            query = query.where(col(WrittenResource.resource_type) == resource_type)
        found.update(session.exec(query).all())
    return found


def versions(session: Session, connection_id: int, resource_type: str) -> set[tuple[str, str | None]]:
    """(id, versionId) of live rows: what the fault tests compare with the server."""
    table = TABLES[resource_type]
    query = select(table.fhir_id, table.version_id).where(  # type: ignore[attr-defined]
        col(table.connection_id) == connection_id, col(table.deleted).is_(False))  # type: ignore[attr-defined]
    if table is WrittenResource:
        query = query.where(col(WrittenResource.resource_type) == resource_type)
    return {(i, v) for i, v in session.exec(query)}
