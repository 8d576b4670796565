"""Snapshot rows as the database driver takes them, made wherever a page is prepared, and stored in one
set-based, version-aware upsert (prm.snapshots builds on this).

Why encode apart from storing: a bulk first load prepares pages in a helper process and stores them in the
worker. As field dicts, a row cost ~17 µs to pickle across and back, and the worker then spent ~26 µs turning
it into driver values before the database saw it. Encoded where it is prepared, a row crosses as a tuple of
plain values (~3 µs) and the worker only executes. The values are the ones SQLAlchemy binds: its own bind
processors make them (SQLite), or the JSON serializer the engine uses (PostgreSQL's COPY), so what is stored
is the same either way; tests/unit/prm/test_driver_rows.py holds the two paths to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, or_
from sqlalchemy.engine import Dialect
from sqlmodel import Session, SQLModel

from prm.db import json_text
from prm.driver_rows import DriverStatement, driver_statement
from prm.pg_copy import copy_insert, copy_upsert
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


@dataclass
class EncodedRows:
    """Rows of one type as driver values, each a tuple in `columns` order, ids unique; plain data, so it
    crosses a pipe cheaply."""

    dialect: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def key_columns(table: type[SQLModel]) -> list[str]:
    return ["connection_id", "resource_type", "fhir_id"] if table is WrittenResource else ["connection_id", "fhir_id"]


def newest_by_id(rows: Sequence[SQLModel | dict[str, Any]]) -> list[dict[str, Any]]:
    """Each resource once, its newest version (a page can carry the same one twice: ties re-read), as plain
    field dicts (model_dump cost 30 µs a row; the fields are already what the database wants)."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        fields = row if isinstance(row, dict) else row.__dict__
        previous = by_id.get(fields["fhir_id"])
        if previous is None or _stamp(fields) >= _stamp(previous):
            by_id[fields["fhir_id"]] = fields
    return list(by_id.values())


def _stamp(values: dict[str, Any]) -> datetime:
    return values.get("last_updated") or datetime.min.replace(tzinfo=UTC)


def upsert_statement(resource_type: str, dialect_name: str) -> Any:
    """INSERT ... ON CONFLICT DO UPDATE, replacing a row only by a version at least as new."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    table_model = TABLES[resource_type]
    table: Any = table_model.__table__  # type: ignore[attr-defined]
    stmt = insert(table)
    key = key_columns(table_model)
    updated = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in ("id", *key)}
    newer = or_(table.c.last_updated.is_(None), stmt.excluded.last_updated.is_(None),
                stmt.excluded.last_updated >= table.c.last_updated)
    return stmt.on_conflict_do_update(index_elements=key, set_=updated, where=newer)


def encode_rows(dialect: Dialect, connection_id: int, resource_type: str,
                rows: Sequence[SQLModel | dict[str, Any]]) -> EncodedRows:
    """The page's rows (models or their field values), newest per id, as `dialect`'s driver takes them.
    Needs no database: a helper process passes an offline dialect (prm.db.offline_dialect)."""
    unique = newest_by_id(rows)
    if dialect.name == "sqlite":
        statement = _sqlite_upsert(resource_type, dialect)
        values = [{**fields, "connection_id": connection_id} for fields in unique]
        return EncodedRows("sqlite", statement.keys, statement.parameters(values))
    if dialect.name == "postgresql":
        table: Any = TABLES[resource_type].__table__  # type: ignore[attr-defined]
        columns = tuple(c.name for c in table.columns if c.name != "id")
        json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
        encoded = [tuple(connection_id if name == "connection_id"
                         else json_text(fields[name]) if name in json_columns and fields[name] is not None
                         else fields[name] for name in columns) for fields in unique]
        return EncodedRows("postgresql", columns, encoded)
    raise TypeError(f"{dialect.name}: no encoding for snapshot rows")


def store_encoded(session: Session, resource_type: str, encoded: EncodedRows) -> int:
    """Upsert encoded rows (newer-or-equal wins); returns how many the page held."""
    if not encoded.rows:
        return 0
    dialect = session.get_bind().dialect
    if encoded.dialect != dialect.name:
        raise TypeError(f"rows encoded for {encoded.dialect} cannot be stored in {dialect.name}")
    if dialect.name == "sqlite":
        statement = _sqlite_upsert(resource_type, dialect)
        if encoded.columns != statement.keys:
            raise TypeError(f"{resource_type} rows encoded as {encoded.columns}, the upsert takes {statement.keys}")
        session.connection().exec_driver_sql(statement.sql, encoded.rows)
    else:
        table: Any = TABLES[resource_type].__table__  # type: ignore[attr-defined]
        copy_upsert(session, table, encoded.columns, encoded.rows, key_columns(TABLES[resource_type]))
    return len(encoded.rows)


def store_new(session: Session, resource_type: str, encoded: EncodedRows) -> bool:
    """Store a first load's page, whose rows are expected to be new, the cheapest way the database has (on
    PostgreSQL, COPY straight into the table): True when stored; False, with nothing written, when a row was
    already there, and the page must go through `store_encoded`."""
    if not encoded.rows:
        return True
    if encoded.dialect != "postgresql" or session.get_bind().dialect.name != "postgresql":
        store_encoded(session, resource_type, encoded)  # SQLite: its upsert costs about what an insert does
        return True
    table: Any = TABLES[resource_type].__table__  # type: ignore[attr-defined]
    return copy_insert(session, table, encoded.columns, encoded.rows)


_SQLITE_UPSERTS: dict[str, DriverStatement] = {}


def _sqlite_upsert(resource_type: str, dialect: Dialect) -> DriverStatement:
    """The SQLite upsert for every column but `id`, compiled once per type (see prm.driver_rows): every SQLite
    dialect here binds alike (prm.db builds each with the same JSON serializer). Compiled once, not per page:
    a multi-row VALUES literal compiled afresh cost more than the database work."""
    found = _SQLITE_UPSERTS.get(resource_type)
    if found is None:
        table: Any = TABLES[resource_type].__table__  # type: ignore[attr-defined]
        columns = [c.name for c in table.columns if c.name != "id"]
        compiled = driver_statement(upsert_statement(resource_type, "sqlite"), dialect, columns)
        if compiled is None:
            raise TypeError(f"{dialect.name}: positional parameters expected for the driver upsert")
        found = _SQLITE_UPSERTS[resource_type] = compiled
    return found
