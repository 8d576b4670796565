"""Erase the synced copy of one EHR: IT offboarding a clinic, or an agreement's end that says the PRM destroys
what it copied from that EHR.

The snapshot is a copy: the EHR keeps the record, so erasing it loses nothing the clinic cannot read again.
What goes: every snapshot row of the connection (patients, visits, bookings, contacts, places, staff roles, our
Tasks and Communications as the EHR had them), its quarantined resources, the patient lists of its streams,
and each stream's sync state (cursor, marks, counters, a pass under way). What stays: the connection, IT's
settings on each stream (strategy, interval, paused), and what the PRM itself made (care tickets, outreach,
the write-back outbox, the audit trail); those are records of the PRM's own work, kept under their own rules.

Only a disabled connection is erased (no new runs start), and only while no worker holds one of its streams:
the erasure takes every stream's lease in its own transaction, so a run under way makes it stop with a clear
error rather than race it. Enabled again, the connection starts with a first load.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete
from sqlmodel import Session, col

from prm import audit, connections, leases, streams
from prm.clock import Clock
from prm.errors import NotFoundError, ValidationError
from prm.snapshot_models import QuarantinedResource, StreamPatient, SyncStream, WrittenResource
from prm.snapshot_rows import TABLES

_KEPT = ("id", "connection_id", "resource_type", "enabled", "strategy", "interval_s")  # who it is, IT's settings
LEASE_S = 300.0  # held only for the erasing transaction; a lapse covers a process that dies mid-way


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
    holder, now = f"erase:{uuid.uuid4().hex}", clock()
    stream_rows = streams.of_connection(session, connection_id)
    for stream in stream_rows:
        if not leases.acquire(session, streams.lease_name(stream), holder, now, LEASE_S):
            raise ValidationError(f"a worker is syncing {connection.name}'s {stream.resource_type} now: "
                                  "erase again once its run has ended (within a few minutes)")
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


def _start_afresh(stream: SyncStream) -> None:
    """The sync state of a new stream (cursor, marks, counters, errors, a pass under way); IT's settings stay."""
    for name, info in SyncStream.model_fields.items():
        if name not in _KEPT:
            setattr(stream, name, info.get_default(call_default_factory=True))


def _delete_rows(session: Session, connection_id: int, resource_type: str) -> int:
    table = TABLES[resource_type]
    conditions = [col(table.connection_id) == connection_id]  # type: ignore[attr-defined]
    if table is WrittenResource:
        conditions.append(col(WrittenResource.resource_type) == resource_type)
    return int(session.execute(delete(table).where(*conditions)).rowcount)  # type: ignore[attr-defined]
