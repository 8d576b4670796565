"""Erase the synced copy of one EHR: IT offboarding a clinic, or an agreement's end that says the PRM destroys
what it copied from that EHR.

The snapshot is a copy: the EHR keeps the record, so erasing it loses nothing the clinic cannot read again.
What goes: every snapshot row of the connection (patients, visits, bookings, contacts, places, staff roles, our
Tasks and Communications as the EHR had them), its quarantined resources, the patient lists of its streams,
and each stream's sync state (cursor, marks, counters, a pass under way). What stays: the connection, IT's
settings on each stream (strategy, interval, paused), and what the PRM itself made (care tickets, outreach,
the write-back outbox, the audit trail); those are records of the PRM's own work, kept under their own rules.
A Bulk export the EHR is still writing for the streams keeps its place too (a status URL, no patient data):
many EHRs refuse a second export while one runs, so enabled again the streams go on with it, or cancel it
(DELETE on its status URL) before they start another (workers.sync_export_place).

Only a disabled connection is erased (no new runs start), and only while no worker holds one of its streams:
the erasure takes every stream's lease in its own transaction, so a run under way makes it stop with a clear
error rather than race it. Enabled again, the connection starts with a first load.

`erase_patients` does the same for some patients of a connection that goes on: the patients who left the Group
a connection is kept to (workers.sync_leavers), whose records the PRM no longer has a reason to hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from prm import audit, connections, leases, snapshots, streams
from prm.clock import Clock
from prm.db import in_chunks
from prm.errors import NotFoundError, ValidationError
from prm.snapshot_models import Booking, QuarantinedResource, StreamPatient, SyncStream, WrittenResource
from prm.snapshot_rows import TABLES

_KEPT = ("id", "connection_id", "resource_type", "enabled", "strategy", "interval_s")  # who it is, IT's settings
_PASS = ("pass_kind", "pass_position", "pass_started")
LEASE_S = 300.0  # held only for the erasing transaction; a lapse covers a process that dies mid-way
# The types in the Patient compartment the snapshot holds, and the column naming each row's patient.
PATIENT_KEYED = {"Patient": "fhir_id", "RelatedPerson": "patient_id", "Encounter": "patient_id",
                 "Appointment": "patient_id"}
# The streams that store a patient's rows or note them read whole (patient by patient, our Tasks and
# Communications are searched per patient too): each is leased while patients are erased.
_HOLD_PATIENTS = (*PATIENT_KEYED, "Task", "Communication")
# Which patients a quarantined resource (raw, possibly malformed) names: fhir_mappings knows FHIR's shapes.
ClaimedPatients = Callable[[str, dict[str, Any]], list[str]]


@dataclass(frozen=True)
class Erased:
    """What one erasure removed, by resource type, and the quarantined resources beside them."""

    rows: dict[str, int]
    quarantined: int

    @property
    def total(self) -> int:
        return sum(self.rows.values()) + self.quarantined

    def words(self) -> str:
        held = ", ".join(f"{t} {n}" for t, n in self.rows.items() if n) or "no snapshot rows"
        return f"{held}; {self.quarantined} quarantined"


def erase_snapshot(session: Session, clock: Clock, actor: audit.Actor, connection_id: int) -> Erased:
    """Erase the connection's synced copy in the caller's transaction, audited as `sync.erase` (counts only).
    ValidationError when the connection is enabled or a worker is syncing one of its streams: nothing erased."""
    connection = connections.get(session, connection_id)
    if connection is None:
        raise NotFoundError(f"no connection with id {connection_id}")
    if connection.enabled:
        raise ValidationError(f"connection {connection.name!r} is enabled: disable it first, so no sync starts "
                              "while its copy is erased")
    stream_rows = streams.of_connection(session, connection_id)
    holder = _take_leases(session, clock, connection.name, stream_rows)
    rows = {resource_type: _delete_rows(session, connection_id, resource_type) for resource_type in TABLES}
    quarantined = session.execute(
        delete(QuarantinedResource).where(col(QuarantinedResource.connection_id) == connection_id)
    ).rowcount  # type: ignore[attr-defined]
    stream_ids = [stream.id for stream in stream_rows]
    if stream_ids:
        session.execute(delete(StreamPatient).where(col(StreamPatient.stream_id).in_(stream_ids)))
    for stream in stream_rows:
        _start_afresh(stream)
        session.add(stream)
        leases.release(session, streams.lease_name(stream), holder)
    erased = Erased(rows, quarantined)
    audit.record(session, clock, actor, "sync.erase", connection_id=connection_id,
                 entity=f"Connection/{connection.name}", count=erased.total, detail=erased.words())
    return erased


def erase_patients(session: Session, clock: Clock, actor: audit.Actor, connection_id: int,
                   patient_ids: Collection[str], claimed_patients: ClaimedPatients, keeping: Collection[str],
                   caller_stream_id: int | None = None) -> Erased:
    """Erase these patients from the connection's copy in the caller's transaction, audited as
    `sync.erase_patients` (counts only): their rows of the Patient compartment's types, the quarantined resources
    that name them, and every stream's note that it read them whole (one who comes back is read whole again,
    our Tasks and Communications about them too). What names several patients (a group session, a family's
    appointment) stays while one of them is `keeping`'s (the population) and not erased; a shared booking on
    which none of them is goes, whoever it names.

    ValidationError when a worker is syncing one of those streams now (the caller's own stream aside, whose
    lease the caller holds): nothing erased, the caller tries again on a later run."""
    connection = connections.get(session, connection_id)
    if connection is None:
        raise NotFoundError(f"no connection with id {connection_id}")
    patients = sorted(set(patient_ids))
    staying = set(keeping) - set(patients)
    if not patients and not snapshots.shared_bookings_outside(session, connection_id, staying):
        return Erased({}, 0)
    stream_rows = [s for s in streams.of_connection(session, connection_id) if s.resource_type in _HOLD_PATIENTS]
    holder = _take_leases(session, clock, connection.name, [s for s in stream_rows if s.id != caller_stream_id])
    rows = {resource_type: 0 for resource_type in PATIENT_KEYED}
    for chunk in in_chunks(patients):
        for resource_type, key in PATIENT_KEYED.items():
            table = TABLES[resource_type]
            conditions = [col(table.connection_id) == connection_id,  # type: ignore[attr-defined]
                          col(getattr(table, key)).in_(chunk)]
            if table is Booking:
                conditions.append(col(Booking.shared).is_(False))
            rows[resource_type] += int(session.execute(delete(table).where(*conditions)).rowcount)  # type: ignore[attr-defined]
        if stream_ids := [stream.id for stream in stream_rows]:
            session.execute(delete(StreamPatient).where(col(StreamPatient.stream_id).in_(stream_ids),
                                                        col(StreamPatient.patient_id).in_(chunk)))
    for booking in snapshots.shared_bookings_outside(session, connection_id, staying):
        session.delete(booking)
        rows["Appointment"] += 1
    quarantined = _delete_quarantined_of(session, connection_id, set(patients), staying, claimed_patients)
    for stream in stream_rows:
        if stream.id != caller_stream_id:
            leases.release(session, streams.lease_name(stream), holder)
    erased = Erased(rows, quarantined)
    audit.record(session, clock, actor, "sync.erase_patients", connection_id=connection_id,
                 entity=f"Connection/{connection.name}", count=erased.total,
                 detail=f"{len(patients)} patient(s): {erased.words()}")
    return erased


def _take_leases(session: Session, clock: Clock, connection_name: str, stream_rows: list[SyncStream]) -> str:
    """Every one of these streams' leases, for the caller's transaction (the caller releases them): the holder.
    ValidationError when a worker holds one (nothing is changed yet)."""
    holder, now = f"erase:{uuid.uuid4().hex}", clock()
    for stream in stream_rows:
        if not leases.acquire(session, streams.lease_name(stream), holder, now, LEASE_S):
            raise ValidationError(f"a worker is syncing {connection_name}'s {stream.resource_type} now: "
                                  "erase again once its run has ended (within a few minutes)")
    return holder


def _delete_quarantined_of(session: Session, connection_id: int, patients: set[str], staying: set[str],
                           claimed_patients: ClaimedPatients) -> int:
    """Open quarantined resources of the compartment's types that name one of these patients and none staying
    (a resolved one keeps no resource, nor any patient's)."""
    open_rows = session.exec(select(QuarantinedResource).where(
        col(QuarantinedResource.connection_id) == connection_id,
        col(QuarantinedResource.resource_type).in_(list(PATIENT_KEYED)),
        col(QuarantinedResource.resolved_at).is_(None)))
    naming = [row for row in open_rows
              if not patients.isdisjoint(claimed := claimed_patients(row.resource_type, row.payload))
              and staying.isdisjoint(claimed)]
    for row in naming:
        session.delete(row)
    return len(naming)


def _start_afresh(stream: SyncStream) -> None:
    """The sync state of a new stream (cursor, marks, counters, errors, a pass under way); IT's settings stay,
    and the place of an export under way at the EHR."""
    kept = _KEPT + (_PASS if stream.pass_kind == streams.EXPORT_UNDER_WAY else ())
    for name, info in SyncStream.model_fields.items():
        if name not in kept:
            setattr(stream, name, info.get_default(call_default_factory=True))


def _delete_rows(session: Session, connection_id: int, resource_type: str) -> int:
    table = TABLES[resource_type]
    conditions = [col(table.connection_id) == connection_id]  # type: ignore[attr-defined]
    if table is WrittenResource:
        conditions.append(col(WrittenResource.resource_type) == resource_type)
    return int(session.execute(delete(table).where(*conditions)).rowcount)  # type: ignore[attr-defined]
