"""Sync streams: one per (connection, resource type), with the cursor that makes incremental sync gap-free.

The cursor is the highest `meta.lastUpdated` committed, plus the ids committed at exactly that instant.
The next window re-reads from the cursor with `ge` and skips those ids, so equal timestamps are neither
lost nor double-counted, and the cursor moves in the same commit as the page it covers.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from prm import audit
from prm.clock import Clock
from prm.db import in_chunks, insert_ignore, insert_ignore_many
from prm.errors import NotFoundError, ValidationError
from prm.fhir_names import is_id, version_of
from prm.snapshot_models import QuarantinedResource, StreamPatient, SyncStream

SYNC_TYPES = ("Organization", "Location", "PractitionerRole", "Patient", "RelatedPerson", "Encounter",
              "Appointment", "Task", "Communication")
LEASE_PREFIX = "sync-stream:"
# The kind of pass a Bulk export under way keeps on its streams: the position is its status URL (as JSON with its
# types and Group; workers.sync_export_place).
EXPORT_UNDER_WAY = "export"
# IT's choice per stream: auto (what `prm connection check` found), bulk (first load by Bulk export), search
# (type-level searches throughout), patient (patient by patient over the known population), reread (every
# resource read again each pass: for an EHR whose searches ignore `_lastUpdated` though it lists the search).
STRATEGIES = ("auto", "bulk", "search", "patient", "reread")


def lease_name(stream: SyncStream) -> str:
    return f"{LEASE_PREFIX}{stream.connection_id}:{stream.resource_type}"


def ensure(session: Session, connection_id: int, types: tuple[str, ...] = SYNC_TYPES,
           interval_s: int = 300) -> list[SyncStream]:
    """Every sync type of the connection has a stream (idempotent). Read first: every sync run calls this, and
    nine insert attempts took ~5 ms on PostgreSQL (more beside a sync's other threads; an incremental run of a
    connection is ~120 ms), where the one read that finds them all takes ~1 ms."""
    found = of_connection(session, connection_id)
    missing = set(types) - {stream.resource_type for stream in found}
    if not missing:
        return found
    for resource_type in [t for t in types if t in missing]:
        insert_ignore(session, SyncStream.__table__,  # type: ignore[attr-defined]
                      {"connection_id": connection_id, "resource_type": resource_type, "enabled": True,
                       "strategy": "auto", "phase": "initial", "interval_s": interval_s, "cursor_ids": [],
                       "pages": 0, "resources_synced": 0, "deleted_synced": 0, "quarantined": 0},
                      ["connection_id", "resource_type"])
    return of_connection(session, connection_id)


def of_connection(session: Session, connection_id: int) -> list[SyncStream]:
    order = {t: i for i, t in enumerate(SYNC_TYPES)}
    rows = list(session.exec(select(SyncStream).where(SyncStream.connection_id == connection_id)))
    return sorted(rows, key=lambda s: order.get(s.resource_type, 99))


def by_connection(session: Session) -> dict[int, list[SyncStream]]:
    """Every connection's streams in one query, for pages that list connections."""
    grouped: dict[int, list[SyncStream]] = {}
    for row in session.exec(select(SyncStream)):
        grouped.setdefault(row.connection_id, []).append(row)
    return grouped


def set_strategy(session: Session, clock: Clock, actor: audit.Actor, connection_id: int, strategy: str,
                 resource_types: Collection[str] | None = None) -> list[SyncStream]:
    """IT's override of how the connection's streams (these types, else all) sync, audited per stream changed in
    the same transaction; the streams changed. It takes effect at each stream's next run (a first load already
    done is not redone)."""
    if strategy not in STRATEGIES:
        raise ValidationError(f"sync strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return _change_each(session, clock, actor, connection_id, resource_types, "strategy", strategy, "sync.strategy",
                        strategy)


def set_enabled(session: Session, clock: Clock, actor: audit.Actor, connection_id: int, enabled: bool,
                resource_types: Collection[str] | None = None) -> list[SyncStream]:
    """IT pauses or resumes the connection's streams (these types, else all): a type the EHR does not offer or
    does not grant our client, or one IT has no use for, stops asking the EHR and stops counting as failing.
    Audited per stream changed (`sync.pause` / `sync.resume`); the streams changed. A paused stream keeps its
    snapshot and cursor, and carries on from them when resumed (the page and the CLI then make its run due now:
    callers hold the job kinds, which live in workers)."""
    return _change_each(session, clock, actor, connection_id, resource_types, "enabled", enabled,
                        "sync.resume" if enabled else "sync.pause", None)


def pause_refused(session: Session, clock: Clock, actor: audit.Actor, stream: SyncStream, note: str) -> None:
    """The EHR refused a type that its check found it does not offer us (unlisted, or not granted): the stream
    pauses as if IT had paused it (it stops asking and stops counting as failing), with why, audited as
    `sync.pause`. Only the refusal and the check together pause it: a type the CapabilityStatement leaves out
    but the EHR serves is synced, and a refusal of a type the check found offered is an error for IT."""
    stream.enabled, stream.pause_note = False, note[:500]
    session.add(stream)
    audit.record(session, clock, actor, "sync.pause", connection_id=stream.connection_id, entity=stream.resource_type,
                 detail="the EHR refused a type it does not offer")


def keep_patient_lists(session: Session, stream_id: int, verdict: dict[str, Any]) -> None:
    """What the EHR answered when asked whether a search of the stream's type may name several patients."""
    stream = get(session, stream_id)
    stream.patient_lists = verdict
    session.add(stream)


def forget_patient_lists(session: Session, connection_id: int) -> None:
    """A check of the connection: the EHR may have changed (an upgrade), so each stream asks it again."""
    for stream in of_connection(session, connection_id):
        if stream.patient_lists is not None:
            stream.patient_lists = None
            session.add(stream)


def resume_offered(session: Session, clock: Clock, actor: audit.Actor, connection_id: int,
                   offered: Collection[str]) -> list[SyncStream]:
    """After a check: streams the sync paused for a refusal (`pause_refused`) whose type the EHR now offers run
    again from where they stopped, audited as `sync.resume`; returns them (the caller makes their runs due)."""
    resumed = [s for s in of_connection(session, connection_id)
               if not s.enabled and s.pause_note and s.resource_type in offered]
    for stream in resumed:
        stream.enabled, stream.pause_note = True, None
        session.add(stream)
        audit.record(session, clock, actor, "sync.resume", connection_id=connection_id, entity=stream.resource_type,
                     detail="the EHR's check found the type offered")
    return resumed


INTERVAL_LIMITS_S = (30, 86400)  # a run at most every 30 s (the EHR's request budget still applies), at least daily


def set_interval(session: Session, clock: Clock, actor: audit.Actor, connection_id: int, interval_s: int,
                 resource_types: Collection[str] | None = None) -> list[SyncStream]:
    """IT's choice of how often the connection's streams (these types, else all) run once caught up (default
    every 5 minutes): often for bookings, rarely for the directory. Audited per stream changed, in the same
    transaction; the streams changed. Each stream's next run after this one is planned by the new interval; to
    bring a pending run forward at once, see workers.sync.apply_intervals."""
    low, high = INTERVAL_LIMITS_S
    if not low <= interval_s <= high:
        raise ValidationError(f"a sync interval must be {low} s to {high // 3600} h, got {interval_s} s")
    return _change_each(session, clock, actor, connection_id, resource_types, "interval_s", interval_s,
                        "sync.interval", f"{interval_s}s")


def _change_each(session: Session, clock: Clock, actor: audit.Actor, connection_id: int,
                 resource_types: Collection[str] | None, field: str, value: object, action: str,
                 detail: str | None) -> list[SyncStream]:
    """IT's setting on the named streams: each whose `field` differs takes `value` and is audited as `action`
    in the same transaction; returns those changed (an unchanged stream is neither written nor audited)."""
    changed = []
    for stream in named(session, connection_id, resource_types):
        # IT's pause of a stream the sync paused for a refusal is a change too: IT's now, which no check resumes
        if getattr(stream, field) != value or (field == "enabled" and stream.pause_note):
            setattr(stream, field, value)
            if field == "enabled":  # IT's word replaces the sync's
                stream.pause_note = None
            session.add(stream)
            audit.record(session, clock, actor, action, connection_id=connection_id, entity=stream.resource_type,
                         detail=detail)
            changed.append(stream)
    return changed


def ask_reload(session: Session, clock: Clock, actor: audit.Actor, connection_id: int,
               resource_types: Collection[str] | None = None) -> list[SyncStream]:
    """Ask these streams (else all) to read every resource of their type again at their next run: IT after a
    restore or a repair at the EHR, an upgrade when the snapshot keeps a field it did not before. Counted up in
    the database, not set, so an ask made while a reload is under way gets a pass of its own; audited per
    stream in the same transaction. A stream still in its first load reads everything anyway: not asked."""
    asked = [s for s in named(session, connection_id, resource_types) if s.phase != "initial"]
    if asked:
        session.execute(update(SyncStream).where(col(SyncStream.id).in_([s.id for s in asked]))
                        .values(reload_asked=SyncStream.reload_asked + 1))
    for stream in asked:
        audit.record(session, clock, actor, "sync.reload", connection_id=connection_id, entity=stream.resource_type,
                     detail="asked")
    return asked


def reload_state(stream: SyncStream) -> str | None:
    """"under way" (a reload's pass has begun), "asked" (not begun yet), else None: what IT is shown."""
    if stream.reload_serving is not None:
        return "under way"
    return "asked" if stream.reload_asked > stream.reload_served else None


def reload_due(stream: SyncStream) -> bool:
    return reload_state(stream) is not None


def begin_reload(session: Session, stream_id: int) -> bool:
    """At a run's start, under the stream's lease: whether this run reads everything again. A reload that
    begins serves every ask made so far, starts its pass afresh (a pass under way would leave out what it
    had done), and, patient by patient, reads every patient's whole record again."""
    stream = get(session, stream_id)
    if stream.reload_serving is None and stream.reload_asked > stream.reload_served:
        stream.reload_serving = stream.reload_asked
        stream.pass_kind = stream.pass_position = stream.pass_started = None
        session.execute(delete(StreamPatient).where(col(StreamPatient.stream_id) == stream_id))
        session.add(stream)
    return stream.reload_serving is not None


def finish_reload(stream: SyncStream) -> None:
    """A reload's pass read everything: the asks it began with are served (one made since begins another)."""
    if stream.reload_serving is not None:
        stream.reload_served = max(stream.reload_served, stream.reload_serving)
        stream.reload_serving = None


def named(session: Session, connection_id: int, resource_types: Collection[str] | None) -> list[SyncStream]:
    """The connection's streams of these types (all when none are named); an unknown type is refused."""
    unknown = sorted(set(resource_types or ()) - set(SYNC_TYPES))
    if unknown:
        raise ValidationError(f"not a synced type: {', '.join(unknown)} (synced: {', '.join(SYNC_TYPES)})")
    return [s for s in ensure(session, connection_id) if not resource_types or s.resource_type in resource_types]


def get(session: Session, stream_id: int) -> SyncStream:
    row = session.get(SyncStream, stream_id)
    if row is None:
        raise NotFoundError(f"no sync stream {stream_id}")
    return row


def advance(stream: SyncStream, page_instants: list[tuple[str, datetime | None]]) -> None:
    """Move the cursor past a committed page of (id, lastUpdated); ties at the new cursor are remembered."""
    stamped = [(i, t) for i, t in page_instants if t is not None]
    if not stamped:
        return
    newest = max(t for _, t in stamped)
    at_newest = {i for i, t in stamped if t == newest}
    if stream.cursor is not None and newest == stream.cursor:
        at_newest |= set(stream.cursor_ids)
    if stream.cursor is None or newest >= stream.cursor:
        stream.cursor = newest
        stream.cursor_ids = sorted(at_newest)


def already_seen(stream: SyncStream, fhir_id: str, last_updated: datetime | None) -> bool:
    """A resource re-read at the cursor instant that the last page already committed."""
    return last_updated is not None and last_updated == stream.cursor and fhir_id in stream.cursor_ids


def pass_place(stream: SyncStream, kind: str) -> tuple[str | None, datetime | None]:
    """Where an unfinished pass of this kind goes on, and when (EHR clock) it began; (None, None) when none is
    under way, or the one under way is of another kind (a strategy changed mid-pass: it starts afresh)."""
    return (stream.pass_position, stream.pass_started) if stream.pass_kind == kind else (None, None)


def keep_place(stream: SyncStream, kind: str, position: str | None, started: datetime | None) -> None:
    """Keep where a pass of this kind goes on; a None position says it ended."""
    if position is None:
        stream.pass_kind = stream.pass_position = stream.pass_started = None
    else:
        stream.pass_kind, stream.pass_position, stream.pass_started = kind, position, started


def patients_read(session: Session, stream_id: int) -> set[str]:
    """The patients whose whole record this (patient-by-patient) stream has read."""
    return set(session.exec(select(StreamPatient.patient_id).where(StreamPatient.stream_id == stream_id)))


def note_patients_read(session: Session, stream_id: int, patient_ids: Collection[str]) -> None:
    """Remember patients read in full (idempotent): later passes ask them only what changed since the cursor."""
    insert_ignore_many(session, StreamPatient.__table__,  # type: ignore[attr-defined]
                       [{"stream_id": stream_id, "patient_id": p} for p in sorted(patient_ids)],
                       ["stream_id", "patient_id"])


def record_success(stream: SyncStream, clock: Clock, caught_up: bool) -> None:
    """A run ended well (and read all there was, when `caught_up`); the counters already moved with each
    committed page (workers.sync_pages)."""
    now = clock()
    stream.last_run_at = now
    stream.last_success_at = now
    if caught_up:
        stream.caught_up_at = now
    stream.last_error = None


def record_error(stream: SyncStream, clock: Clock, error: str) -> None:
    stream.last_run_at = clock()
    stream.last_error = error[:2000]
    stream.last_error_at = stream.last_run_at


def quarantine(session: Session, clock: Clock, connection_id: int, resource_type: str, payload: dict[str, object],
               error: str) -> bool:
    """Keep an invalid resource for IT with its error; True when it was not quarantined before."""
    version = version_of(payload) or ""
    return insert_ignore(
        session, QuarantinedResource.__table__,  # type: ignore[attr-defined]
        {"connection_id": connection_id, "resource_type": resource_type, "fhir_id": str(payload.get("id", ""))[:64],
         "version_id": str(version)[:64], "error": error[:2000], "payload": payload,
         "received_at": clock()},
        ["connection_id", "resource_type", "fhir_id", "version_id"],
    )


def resolve_quarantined(session: Session, clock: Clock, connection_id: int, resource_type: str,
                        fhir_ids: Collection[str]) -> int:
    """Quarantined resources the EHR has since sent again, valid, or deleted: nothing is left for IT to mend.
    The rows stay (with `resolved_at`) as the record of what was refused: type, id, version, error and times.
    The resource as it came is dropped: it was kept for IT to look into, and a patient's details have no
    place in the PRM once the snapshot holds the EHR's newer copy, or none. Returns how many were resolved."""
    resolved = 0
    table = QuarantinedResource
    for chunk in in_chunks(sorted(set(fhir_ids))):
        result = session.execute(update(table).where(
            col(table.connection_id) == connection_id, col(table.resource_type) == resource_type,
            col(table.fhir_id).in_(chunk), col(table.resolved_at).is_(None),
        ).values(resolved_at=clock(), payload={}))
        resolved += result.rowcount  # type: ignore[attr-defined]
    return resolved


def quarantined(session: Session, connection_id: int) -> list[QuarantinedResource]:
    """What IT still has to look at: quarantined and not since resolved."""
    query = select(QuarantinedResource).where(QuarantinedResource.connection_id == connection_id,
                                              col(QuarantinedResource.resolved_at).is_(None))
    return list(session.exec(query))


def open_quarantined_ids(session: Session, connection_id: int, resource_type: str) -> set[str]:
    """The ids of what is still quarantined, where they are ids at all (a resource may be refused for its id)."""
    table = QuarantinedResource
    return {fhir_id for fhir_id in session.exec(select(table.fhir_id).where(
        col(table.connection_id) == connection_id, col(table.resource_type) == resource_type,
        col(table.resolved_at).is_(None))) if is_id(fhir_id)}


def open_quarantine_counts(session: Session, connection_id: int | None = None) -> dict[tuple[int, str], int]:
    """(connection id, resource type) -> resources quarantined and not resolved, for the admin pages (one
    connection's, or every one's). A resource counts once, however many of its versions were refused."""
    table = QuarantinedResource
    query = (select(table.connection_id, table.resource_type, func.count(func.distinct(table.fhir_id)))
             .where(col(table.resolved_at).is_(None)).group_by(col(table.connection_id), col(table.resource_type)))
    if connection_id is not None:
        query = query.where(col(table.connection_id) == connection_id)
    return {(cid, rtype): n for cid, rtype, n in session.exec(query)}
