"""The synced picture of each EHR (the snapshot): patients, visits, bookings, contacts, places, staff roles.

Keyed by (connection, FHIR id); `version_id` and `last_updated` make upserts version-aware; `deleted`
keeps a tombstone so a deletion in the EHR removes the row from every PRM query; a tombstone keeps its key
and stamps and nothing of the person (`tombstone_values`). Mappers in
fhir_mappings build the `...Create` models; prm.snapshots writes them a page at a time.
Times are stored in UTC with the source's UTC offset in minutes beside them (FHIR keeps local time).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Text, UniqueConstraint, text
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


# What a tombstone keeps: its key, and the stamps that let no older copy of the resource bring it back.
TOMBSTONE_KEEPS = frozenset({"id", "connection_id", "resource_type", "fhir_id", "version_id", "last_updated",
                             "deleted"})


def tombstone_values(model: type[SQLModel]) -> dict[str, Any]:
    """The values every other column of a deleted row takes: its default (None, "", [], the usual flag).

    Why: the EHR deleted the resource (or an erasure removed it there), so the PRM has no reason left to hold
    the person's name, birth date, contacts or visits. A field without a default (a visit's status) is not
    personal and stays, as the NOT NULL column needs a value."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in TOMBSTONE_KEEPS or info.is_required():
            continue
        values[name] = info.get_default(call_default_factory=True)
    return values


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
    __table_args__ = (
        UniqueConstraint("connection_id", "fhir_id", name="uq_patient_record"),
        Index("ix_patient_record_merged", "connection_id", "replaced_by",  # few rows: merged records only
              sqlite_where=text("replaced_by IS NOT NULL"), postgresql_where=text("replaced_by IS NOT NULL")),
    )

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
    type_text: str | None = Field(default=None, max_length=200)  # what it was for, as the EHR words it
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
    patient_id: str | None = Field(default=None, max_length=64)  # the first booked on it (else the first named)
    # The others booked on it (a group session, a couple's or a family's appointment): their sidebars show it too.
    other_patients: list[str] = _json_list()
    declined_patients: list[str] = _json_list()  # named on it, their place declined: it is still in their record
    # (where nobody is booked on it, `patient_id` is one of them: it shows on nobody's sidebar)
    shared: bool = False  # it names more than one patient: the few rows whose lists are looked into
    status: str = Field(max_length=30)
    start_at: datetime | None = _dt()
    start_offset_min: int | None = None
    end_at: datetime | None = _dt()
    end_offset_min: int | None = None
    minutes_duration: int | None = None
    service_type_codes: list[str] = _json_list()
    appointment_type_codes: list[str] = _json_list()
    type_text: str | None = Field(default=None, max_length=200)  # what it is for, as the EHR words it
    cancelation_reason: str | None = Field(default=None, max_length=60)
    location_ids: list[str] = _json_list()
    practitioners: list[str] = _json_list()
    related_people: list[str] = _json_list()


class Booking(BookingBase, table=True):
    """An Appointment: who is booked, when, for what. Found by its first patient through an index; a shared
    one by any patient booked on it (`prm.patient_overview`)."""

    __table_args__ = (
        UniqueConstraint("connection_id", "fhir_id", name="uq_booking"),
        Index("ix_booking_patient", "connection_id", "patient_id", "start_at"),
        Index("ix_booking_shared", "connection_id", "shared", "start_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")

    @property
    def patients(self) -> list[str]:
        """Every patient it names, booked or not, each once: whose records it belongs to."""
        return list(dict.fromkeys(p for p in (self.patient_id, *self.other_patients, *self.declined_patients) if p))


class BookingCreate(BookingBase):
    pass


class RelatedContactBase(SnapshotBase):
    patient_id: str | None = Field(default=None, max_length=64)
    active: bool = True
    display_name: str = Field(default="", max_length=300)
    relationship_codes: list[str] = _json_list()
    telecom: list[dict[str, Any]] = _json_list()


class RelatedContact(RelatedContactBase, table=True):
    """A RelatedPerson: the parent or carer who is reached instead of, or as well as, the patient."""

    __tablename__ = "related_contact"
    __table_args__ = (UniqueConstraint("connection_id", "fhir_id", name="uq_related_contact"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")


class RelatedContactCreate(RelatedContactBase):
    pass


class OrganizationRecordBase(SnapshotBase):
    name: str = Field(default="", max_length=300)
    active: bool = True
    part_of: str | None = Field(default=None, max_length=64)
    timezone: str | None = Field(default=None, max_length=64)  # IANA, from the timezone extension


class OrganizationRecord(OrganizationRecordBase, table=True):
    __tablename__ = "organization_record"
    __table_args__ = (UniqueConstraint("connection_id", "fhir_id", name="uq_organization_record"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")


class OrganizationRecordCreate(OrganizationRecordBase):
    pass


class SiteBase(SnapshotBase):
    name: str = Field(default="", max_length=300)
    status: str | None = Field(default=None, max_length=20)
    part_of: str | None = Field(default=None, max_length=64)
    organization_id: str | None = Field(default=None, max_length=64)
    timezone: str | None = Field(default=None, max_length=64)


class Site(SiteBase, table=True):
    """A Location where visits happen."""

    __table_args__ = (UniqueConstraint("connection_id", "fhir_id", name="uq_site"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")


class SiteCreate(SiteBase):
    pass


class StaffRoleBase(SnapshotBase):
    active: bool = True
    practitioner_id: str | None = Field(default=None, max_length=64)
    organization_id: str | None = Field(default=None, max_length=64)
    location_ids: list[str] = _json_list()
    codes: list[str] = _json_list()
    specialty_codes: list[str] = _json_list()
    timezone: str | None = Field(default=None, max_length=64)  # the `timezone` extension, where the role declares one


class StaffRole(StaffRoleBase, table=True):
    """A PractitionerRole: who works for which clinic, where."""

    __tablename__ = "staff_role"
    __table_args__ = (UniqueConstraint("connection_id", "fhir_id", name="uq_staff_role"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")


class StaffRoleCreate(StaffRoleBase):
    pass


class WrittenResourceBase(SnapshotBase):
    resource_type: str = Field(max_length=30)  # Task | Communication
    identifier_value: str | None = Field(default=None, max_length=300)  # our business identifier
    status: str | None = Field(default=None, max_length=30)
    business_status: str | None = Field(default=None, max_length=100)


class WrittenResource(WrittenResourceBase, table=True):
    """A Task or Communication fhir-prm wrote, as the EHR now has it (status changes made there come back)."""

    __tablename__ = "written_resource"
    __table_args__ = (
        UniqueConstraint("connection_id", "resource_type", "fhir_id", name="uq_written_resource"),
        Index("ix_written_identifier", "connection_id", "resource_type", "identifier_value"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")


class WrittenResourceCreate(WrittenResourceBase):
    pass


class SyncStream(SQLModel, table=True):
    """One (connection, resource type) sync: strategy, cursor, counters, errors, lag."""

    __tablename__ = "sync_stream"
    __table_args__ = (UniqueConstraint("connection_id", "resource_type", name="uq_sync_stream"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id", index=True)
    resource_type: str = Field(max_length=30)
    enabled: bool = True
    # Why the sync paused the stream itself (the EHR refused a type its check found unlisted or not granted);
    # None when IT paused it, or it runs. IT's pause or resume clears it; a check finding the type resumes it.
    pause_note: str | None = Field(default=None, max_length=500)
    # Whether the EHR answers a search of this type naming several patients in full (workers.patient_lists):
    # None until the sync asks; a check of the connection clears it.
    patient_lists: dict[str, Any] | None = Field(default=None, sa_type=JSON, nullable=True)
    strategy: str = Field(default="auto", max_length=20)  # auto | bulk | search | patient (IT may override)
    phase: str = Field(default="initial", max_length=20)  # initial | incremental
    interval_s: int = 300
    cursor: datetime | None = _dt()  # highest meta.lastUpdated committed
    cursor_ids: list[str] = _json_list()  # ids committed at exactly `cursor` (ties are re-read, then skipped)
    initial_done_at: datetime | None = _dt()
    last_run_at: datetime | None = _dt()
    last_success_at: datetime | None = _dt()
    # The last run that read all there was (product clock): the snapshot trails the EHR by no more than the time
    # since. A run that ends well midway through a long pass or first load does not move it.
    caught_up_at: datetime | None = _dt()
    last_error: str | None = Field(default=None, max_length=2000)
    last_error_at: datetime | None = _dt()
    pages: int = 0
    resources_synced: int = 0
    deleted_synced: int = 0
    quarantined: int = 0
    reconciled_at: datetime | None = _dt()  # last full id reconciliation (product clock)
    history_mark: datetime | None = _dt()  # deletions are read from `_history` since here (server clock)
    woken_at: datetime | None = _dt()  # an EHR notification asked for a run (a run started before it goes again)
    # A pass longer than one run goes on where the last run stopped: which kind of pass (`reread`, `patient`), where
    # it goes on (the EHR's link to the next page; the last patient done), and the EHR's clock when the pass began
    # (what the snapshot is as of once it ends). None between passes; another kind of pass starts afresh.
    pass_kind: str | None = Field(default=None, max_length=20)
    pass_position: str | None = Field(default=None, sa_type=Text)
    pass_started: datetime | None = _dt()
    # IT (or an upgrade that keeps a new field) asks for every resource of the type to be read again: each ask
    # counts up `reload_asked`; a run that finds more asked than served starts a pass that reads everything
    # (`reload_serving`: the ask it serves), and its end marks that ask served. Counts, not times: an ask made
    # while a pass is under way gets a pass of its own, whatever the clocks say.
    reload_asked: int = 0
    reload_served: int = 0
    reload_serving: int | None = None


class EhrSubscription(SQLModel, table=True):
    """Our rest-hook Subscription to one topic on one EHR (R4 Backport IG), or to one search where the EHR has
    only plain R4 Subscriptions (`kind` criteria), which wakes the streams it covers.

    The EHR posts to `/fhir/hooks/<hook_key>` with `Authorization: Bearer <secret>`; only the secret's SHA-256
    is kept, and a new secret is made whenever the EHR's copy is (re)activated. Polling goes on regardless:
    a notification only brings a stream's next run forward.
    """

    __tablename__ = "ehr_subscription"
    __table_args__ = (UniqueConstraint("connection_id", "topic", name="uq_ehr_subscription"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id", index=True)
    kind: str = Field(default="backport", max_length=20)  # backport (topic-based) | criteria (plain R4)
    topic: str = Field(max_length=500)  # the topic's canonical URL, or the search a criteria one is for
    resource_types: list[str] = _json_list()  # the streams its notifications wake
    hook_key: str = Field(max_length=64, unique=True)
    secret_hash: str = Field(max_length=64)
    ehr_id: str | None = Field(default=None, max_length=64)
    status: str = Field(default="requested", max_length=20)  # requested | active | error | off
    error: str | None = Field(default=None, max_length=2000)
    events_seen: int = 0  # the highest event number the EHR has told us of
    notifications: int = 0
    last_heard_at: datetime | None = _dt()  # handshake, heartbeat or event
    created_at: datetime | None = _dt()
    updated_at: datetime | None = _dt()


class StreamPatient(SQLModel, table=True):
    """A patient whose whole record a patient-by-patient stream has read. The stream's later passes ask only
    what changed since its cursor; a patient it has not read yet (new to the population, e.g. just added to the
    export Group) is read in full once, so their history before the cursor is not lost."""

    __tablename__ = "stream_patient"

    stream_id: int = Field(foreign_key="sync_stream.id", primary_key=True)
    patient_id: str = Field(max_length=64, primary_key=True)


class QuarantinedResource(SQLModel, table=True):
    """An incoming resource that failed the edge check: kept with its error for IT, never blocking the rest."""

    __tablename__ = "quarantined_resource"
    __table_args__ = (
        UniqueConstraint("connection_id", "resource_type", "fhir_id", "version_id", name="uq_quarantine"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id", index=True)
    resource_type: str = Field(max_length=30)
    fhir_id: str = Field(default="", max_length=64)
    version_id: str = Field(default="", max_length=64)
    error: str = Field(max_length=2000)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    received_at: datetime | None = _dt()
    resolved_at: datetime | None = _dt()
