"""The clinic's time zone, for local dates at the edges (DESIGN.md, Time): from the synced Location's or
Organization's `timezone` extension, up their `partOf` chains, else the connection's clinic setting; a ticket
owned by a PractitionerRole, with no visit to place it, by the role's own extension first.

The EHR's own word comes first (the issue: "the connection's clinic setting is the fallback"). A value that is
no IANA zone is passed over, as if absent, and logged once per value: a bad extension never breaks a write.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, tzinfo
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import Session, col, select

from prm.followup_models import CareTicket
from prm.models import Connection
from prm.snapshot_models import OrganizationRecord, Site, StaffRole, Visit

log = logging.getLogger(__name__)
MAX_PART_OF = 10  # partOf hops followed: enough for any real hierarchy
Place = TypeVar("Place", Site, OrganizationRecord)
Row = TypeVar("Row", Site, OrganizationRecord, Visit, StaffRole)


@functools.cache
def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("time zone %r (a timezone extension or clinic setting) is no IANA zone: passed over", name)
        return None


def _clinic_zone(connection: Connection, organization_id: str) -> ZoneInfo | None:
    for clinic in connection.clinics or []:
        if clinic.get("organization") == f"Organization/{organization_id}" and (zone := _zone(clinic.get("timezone"))):
            return zone
    return None


def _only_clinic_zone(connection: Connection) -> ZoneInfo | None:
    """Where every clinic the connection serves is in one zone, that zone; else none can be assumed."""
    zones = {zone for clinic in connection.clinics or [] if (zone := _zone(clinic.get("timezone")))}
    return zones.pop() if len(zones) == 1 else None


def zone_for(session: Session, connection: Connection, *, location_ids: Iterable[str] = (),
             organization_ids: Iterable[str] = ()) -> tzinfo:
    """The zone of the first place that names one (`_declared_zone`); failing all, the zone every configured
    clinic shares; failing that, UTC."""
    return (_declared_zone(session, connection, location_ids, organization_ids) or _only_clinic_zone(connection)
            or UTC)


def _declared_zone(session: Session, connection: Connection, location_ids: Iterable[str],
                   organization_ids: Iterable[str]) -> ZoneInfo | None:
    """The zone of the first place that names one: each Location and the Locations it is part of; then each
    Organization (the Locations' managing ones first), its extension, its clinic setting, then what it is
    part of."""
    organizations: list[str] = []
    for location_id in location_ids:
        for site in _chain(session, Site, connection, location_id):
            if zone := _zone(site.timezone):
                return zone
            if site.organization_id:
                organizations.append(site.organization_id)
    for organization_id in [*organizations, *organization_ids]:
        chain = list(_chain(session, OrganizationRecord, connection, organization_id))
        for organization in chain:
            if (zone := _zone(organization.timezone)) or (zone := _clinic_zone(connection, organization.fhir_id)):
                return zone
        if not chain and (zone := _clinic_zone(connection, organization_id)):  # configured; the EHR has no record
            return zone
    return None


def for_care_ticket(session: Session, ticket: CareTicket) -> tzinfo:
    """The zone a ticket's dates are read in: where its visit took place (the visit's Locations, then its service
    provider), else where its owner works (an Organization; a PractitionerRole: the zone it declares, then its
    Locations and Organization), else the zone the connection's clinics share, else UTC."""
    connection = session.get(Connection, ticket.connection_id)
    if connection is None:
        return UTC
    visit = _live(session, Visit, connection, ticket.encounter_id) if ticket.encounter_id else None
    if visit is not None and (zone := _declared_zone(session, connection, visit.location_ids,
                                                     [visit.service_provider] if visit.service_provider else [])):
        return zone
    kind, _, owner_id = (ticket.owner or "").partition("/")
    zone = None
    if kind == "Organization" and owner_id:
        zone = _declared_zone(session, connection, [], [owner_id])
    elif kind == "PractitionerRole" and owner_id and (role := _live(session, StaffRole, connection, owner_id)):
        zone = _zone(role.timezone) or _declared_zone(session, connection, role.location_ids,
                                                       [role.organization_id] if role.organization_id else [])
    return zone or _only_clinic_zone(connection) or UTC


def _chain(session: Session, model: type[Place], connection: Connection, fhir_id: str) -> Iterator[Place]:
    """The live record and those it is `partOf`, nearest first; a cycle or a long chain ends it."""
    seen: set[str] = set()
    current: str | None = fhir_id
    while current is not None and current not in seen and len(seen) < MAX_PART_OF:
        seen.add(current)
        row = _live(session, model, connection, current)
        if row is None:
            return
        yield row
        current = row.part_of


def _live(session: Session, model: type[Row], connection: Connection, fhir_id: str) -> Row | None:
    """The connection's snapshot row for `fhir_id`, unless tombstoned."""
    return session.exec(select(model).where(col(model.connection_id) == connection.id, col(model.fhir_id) == fhir_id,
                                            col(model.deleted).is_(False))).first()
