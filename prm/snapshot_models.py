"""The synced picture of each EHR (the snapshot): patients, visits, bookings, contacts, places, staff roles.

Keyed by (connection, FHIR id); `version_id` and `last_updated` make upserts version-aware; `deleted`
keeps a tombstone so a deletion in the EHR removes the row from every PRM query. Mappers in
fhir_mappings build the `...Create` models; prm.snapshots writes them a page at a time.
Times are stored in UTC with the source's UTC offset in minutes beside them (FHIR keeps local time).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from prm.db import UTCDateTime


def _dt() -> Any:
    # sa_type, not sa_column: these fields are inherited by several tables, and a Column belongs to one.
    return Field(default=None, sa_type=UTCDateTime)


def _json_list() -> Any:
    return Field(default_factory=list, sa_type=JSON, nullable=False)


class SnapshotBase(SQLModel):
    fhir_id: str = Field(max_length=64)
    version_id: str | None = Field(default=None, max_length=64)
    last_updated: datetime | None = _dt()
    deleted: bool = False


class PatientRecordBase(SnapshotBase):
    active: bool = True
    deceased: bool = False
    display_name: str = Field(default="", max_length=300)
    birth_date: str | None = Field(default=None, max_length=10)  # FHIR precision: YYYY[-MM[-DD]]
    gender: str | None = Field(default=None, max_length=20)
    postcode: str | None = Field(default=None, max_length=20)
    managing_organization: str | None = Field(default=None, max_length=100)
    replaced_by: str | None = Field(default=None, max_length=64)  # Patient.link replaced-by (merged)
    telecom: list[dict[str, Any]] = _json_list()  # [{system, value, use, rank}] best first
    languages: list[dict[str, Any]] = _json_list()  # [{code, preferred}]
    general_practitioners: list[str] = _json_list()  # references
    links: list[dict[str, str]] = _json_list()  # [{type, other}]


class PatientRecord(PatientRecordBase, table=True):
    """A Patient as the PRM knows it."""

    __tablename__ = "patient_record"
    __table_args__ = (UniqueConstraint("connection_id", "fhir_id", name="uq_patient_record"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")


class PatientRecordCreate(PatientRecordBase):
    pass


class VisitBase(SnapshotBase):
    patient_id: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=30)
    class_code: str | None = Field(default=None, max_length=20)
    type_codes: list[str] = _json_list()  # "system|code"
    service_type_codes: list[str] = _json_list()
    start_at: datetime | None = _dt()
    start_offset_min: int | None = None
    end_at: datetime | None = _dt()
    end_offset_min: int | None = None
    location_ids: list[str] = _json_list()
    service_provider: str | None = Field(default=None, max_length=100)
    appointment_ids: list[str] = _json_list()
    practitioners: list[str] = _json_list()


class Visit(VisitBase, table=True):
    """An Encounter: who came, when, for what, where."""

    __table_args__ = (
        UniqueConstraint("connection_id", "fhir_id", name="uq_visit"),
        Index("ix_visit_patient", "connection_id", "patient_id", "start_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")


class VisitCreate(VisitBase):
    pass


class BookingBase(SnapshotBase):
    patient_id: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=30)
    start_at: datetime | None = _dt()
    start_offset_min: int | None = None
    end_at: datetime | None = _dt()
    end_offset_min: int | None = None
    minutes_duration: int | None = None
    service_type_codes: list[str] = _json_list()
    appointment_type_codes: list[str] = _json_list()
    cancelation_reason: str | None = Field(default=None, max_length=60)
    location_ids: list[str] = _json_list()
    practitioners: list[str] = _json_list()
    related_people: list[str] = _json_list()


class Booking(BookingBase, table=True):
    """An Appointment: who is booked, when, for what."""

    __table_args__ = (
        UniqueConstraint("connection_id", "fhir_id", name="uq_booking"),
        Index("ix_booking_patient", "connection_id", "patient_id", "start_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")


class BookingCreate(BookingBase):
    pass
