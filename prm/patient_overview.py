"""What the sidebar shows of one patient from the snapshot: who they are, when they last came, when they are
next booked and how often they missed a booking this past year.

The sidebar reads fhir-prm's database once the sync has the patient (DESIGN.md, the launch path): a chart
opens without a round trip to the EHR, and the picture is the one every worker acts on. A patient the sync
has not brought yet has no overview; the sidebar then reads the Patient live.

Times are shown in the clinic's zone (`prm.clinic_zones`, from the visit's Location up), as DESIGN.md asks of
local time: many EHRs write instants in UTC. Where no zone is known, the offset the resource carried is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import TypeVar

from sqlalchemy import not_
from sqlmodel import Session, col, func, select

from prm import clinic_zones
from prm.db import json_list_has, json_list_has_any
from prm.models import Connection
from prm.patients import PatientHeader
from prm.same_person import live_record, same_person
from prm.snapshot_models import Booking, QuarantinedResource, Site, SyncStream, Visit

CAME = ("arrived", "triaged", "in-progress", "onleave", "finished")  # Encounter.status: the patient was there
AHEAD = ("proposed", "pending", "booked", "waitlist")  # Appointment.status: still to happen
MISSED = "noshow"
MISSED_WINDOW = timedelta(days=365)
OVERVIEW_TYPES = ("Patient", "Encounter", "Appointment")  # the streams the overview is as fresh as
Dated = TypeVar("Dated", Visit, Booking)


@dataclass(frozen=True)
class Occasion:
    """A visit or a booking as staff speak of it: when (local), where, and its EHR status; what for, as the EHR
    words it."""

    fhir_id: str
    at: datetime  # aware, in the clinic's zone; with `day_only`, that day's midnight there
    place: str | None
    status: str
    what: str | None = None
    day_only: bool = False  # the EHR gave a date without a time: no time to show, no zone to move it by


@dataclass(frozen=True)
class PatientOverview:
    header: PatientHeader
    merged_into: str | None  # the record the EHR merged this one into (Patient.link replaced-by)
    newer_refused: bool  # the EHR has a newer version of the record that failed the edge check: this one is older
    as_of: datetime | None  # the snapshot trails the EHR by at most now - as_of; None while a first load runs
    last_visit: Occasion | None
    next_booking: Occasion | None
    visits_past_year: int
    missed_past_year: int


def overview(session: Session, connection: Connection, patient_id: str, now: datetime) -> PatientOverview | None:
    """The patient's overview, or None where the snapshot has no live record of them (not synced yet, or
    deleted in the EHR: the caller reads live and shows what the EHR says)."""
    record = live_record(session, connection.id or 0, patient_id)
    if record is None:
        return None
    ids = same_person(session, connection.id or 0, record.fhir_id)
    year_ago = now - MISSED_WINDOW
    last_visit = _first(session, Visit, connection, ids, col(Visit.status).in_(CAME), col(Visit.start_at) <= now,
                        newest=True)
    next_booking = _next_booking(session, connection, ids, now)
    return PatientOverview(
        header=PatientHeader(fhir_id=record.fhir_id, display_name=record.display_name, birth_date=record.birth_date,
                             gender=record.gender, deceased=record.deceased),
        merged_into=record.replaced_by,
        newer_refused=_newer_refused(session, connection, record.fhir_id),
        as_of=_as_of(session, connection),
        last_visit=_occasion(session, connection, last_visit),
        next_booking=_occasion(session, connection, next_booking),
        visits_past_year=_count(session, Visit, connection, ids, col(Visit.status).in_(CAME),
                                col(Visit.start_at) > year_ago, col(Visit.start_at) <= now),
        missed_past_year=_missed(session, connection, ids, now),
    )


def _newer_refused(session: Session, connection: Connection, fhir_id: str) -> bool:
    """A version of the record is quarantined and not since mended: the sync kept the last good one."""
    table = QuarantinedResource
    return session.exec(select(table.id).where(
        col(table.connection_id) == connection.id, col(table.resource_type) == "Patient",
        col(table.fhir_id) == fhir_id, col(table.resolved_at).is_(None))).first() is not None


def _of_person(session: Session, model: type[Dated], connection: Connection, patient_ids: Iterable[str],
               shared: bool = False) -> list[object]:
    """The live rows of the connection under any of the person's records, by the patient index; with `shared`,
    the shared bookings (a group session, a family's appointment) one of them is booked on but not first, by
    the shared rows' own index: two indexed queries, where one with an OR between them could scan the lot."""
    ids = list(patient_ids)
    live: list[object] = [col(model.connection_id) == connection.id, col(model.deleted).is_(False)]
    if not shared and model is Booking:  # one its patient declined (nobody is booked on it) is no one's booking
        return [*live, col(model.patient_id).in_(ids), not_(json_list_has(session, Booking.declined_patients,
                                                                          Booking.patient_id))]
    if not shared:
        return [*live, col(model.patient_id).in_(ids)]
    return [*live, col(Booking.shared).is_(True), col(Booking.patient_id).not_in(ids),
            json_list_has_any(session, Booking.other_patients, ids)]


def _first(session: Session, model: type[Dated], connection: Connection, patient_ids: Iterable[str],
           *conditions: object, newest: bool, shared: bool = False) -> Dated | None:
    start = col(model.start_at)
    person = _of_person(session, model, connection, patient_ids, shared)
    query = select(model).where(*person, *conditions)  # type: ignore[arg-type]
    return session.exec(query.order_by(start.desc() if newest else start.asc(), col(model.fhir_id)).limit(1)).first()


def _count(session: Session, model: type[Dated], connection: Connection, patient_ids: Iterable[str],
           *conditions: object, shared: bool = False) -> int:
    query = select(func.count()).select_from(model).where(
        *_of_person(session, model, connection, patient_ids, shared), *conditions)  # type: ignore[arg-type]
    return int(session.exec(query).one())


def _next_booking(session: Session, connection: Connection, patient_ids: list[str], now: datetime) -> Booking | None:
    ahead = (col(Booking.status).in_(AHEAD), col(Booking.start_at) > now)
    found = [_first(session, Booking, connection, patient_ids, *ahead, newest=False, shared=shared)
             for shared in (False, True)]
    return min((b for b in found if b is not None), key=lambda b: (b.start_at or now, b.fhir_id), default=None)


def _missed(session: Session, connection: Connection, patient_ids: list[str], now: datetime) -> int:
    missed = (col(Booking.status) == MISSED, col(Booking.start_at) > now - MISSED_WINDOW,
              col(Booking.start_at) <= now)
    return sum(_count(session, Booking, connection, patient_ids, *missed, shared=shared) for shared in (False, True))


def _as_of(session: Session, connection: Connection) -> datetime | None:
    """When the Patient, Encounter and Appointment streams had all last read all there was. A stream switched
    off counts too: what it brought is shown, and it grows older."""
    caught_up = list(session.exec(select(SyncStream.caught_up_at).where(
        col(SyncStream.connection_id) == connection.id, col(SyncStream.resource_type).in_(OVERVIEW_TYPES))))
    if len(caught_up) < len(OVERVIEW_TYPES) or any(at is None for at in caught_up):
        return None
    return min(at for at in caught_up if at is not None)


def _occasion(session: Session, connection: Connection, row: Visit | Booking | None) -> Occasion | None:
    if row is None or row.start_at is None:
        return None
    providers = [row.service_provider] if isinstance(row, Visit) and row.service_provider else []
    zone: tzinfo = clinic_zones.zone_for(session, connection, location_ids=row.location_ids, organization_ids=providers)
    place = _place(session, connection, row)
    if row.start_offset_min is None:  # a date alone (an R4 dateTime with a time has a zone): the day as the EHR gave it
        day = row.start_at.astimezone(UTC).date()
        return Occasion(fhir_id=row.fhir_id, at=datetime(day.year, day.month, day.day, tzinfo=zone), place=place,
                        status=row.status, what=row.type_text, day_only=True)
    if zone is UTC:  # no zone known: the EHR's own offset is the best guess
        zone = timezone(timedelta(minutes=row.start_offset_min))
    return Occasion(fhir_id=row.fhir_id, at=row.start_at.astimezone(zone), place=place, status=row.status,
                    what=row.type_text)


def _place(session: Session, connection: Connection, row: Visit | Booking) -> str | None:
    for location_id in row.location_ids:
        name = session.exec(select(Site.name).where(col(Site.connection_id) == connection.id,
                                                    col(Site.fhir_id) == location_id,
                                                    col(Site.deleted).is_(False))).first()
        if name:
            return name
    return None
