"""Care tickets: staff work about a patient, opened by a person, a rule or feedback, mirrored to the EHR as a Task.

Opening a ticket writes the ticket, its outbox row and the audit record in one commit; the drain does the rest.
Owner and due date come from the connection's routing rules and the SLA when the producer does not name them.
Opening with the same business key twice returns the first ticket: a retried API call opens nothing new.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from prm import audit, outbox
from prm.audit import Actor
from prm.clock import Clock
from prm.db import insert_once
from prm.errors import ConflictError, NotFoundError, ValidationError
from prm.fhir_names import is_id, is_reference
from prm.followup_models import TICKET_PRIORITIES, TICKET_REASONS, TICKET_STATUSES, CareTicket, CareTicketCreate
from prm.models import Connection

# Service level: how long staff have to act, by priority (a detractor's ticket is urgent).
SLA = {"urgent": timedelta(hours=24), "routine": timedelta(days=3)}
TASK = "Task"
_KEY = re.compile(r"^[A-Za-z0-9\-._:/]{1,200}$")


def check_reference(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not is_reference(value):
        raise ValidationError(f"{what} must be a FHIR reference such as PractitionerRole/abc, got {value!r}")
    return value


def check_fhir_id(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not is_id(value):
        raise ValidationError(f"{what} must be a FHIR id (letters, digits, '-' and '.'), got {value!r}")
    return value


def check_business_key(value: str | None, prefix: str) -> str:
    key = value or f"{prefix}/{uuid.uuid4()}"
    if not _KEY.match(key):
        raise ValidationError(f"business key must be 1-200 of letters, digits and -._:/, got {key!r}")
    return key


def clinic_organization(connection: Connection) -> str | None:
    return connection.clinics[0]["organization"] if connection.clinics else None


def owner_for(connection: Connection, reason: str) -> str | None:
    """The routing rule for this reason, else the connection's default route, else the (first) clinic."""
    routes = connection.ticket_routing or {}
    return routes.get(reason) or routes.get("default") or clinic_organization(connection)


def open_ticket(session: Session, clock: Clock, connection: Connection, spec: CareTicketCreate,
                actor: Actor) -> tuple[CareTicket, bool]:
    """Open a ticket (or return the one with the same business key); True when it was opened now."""
    if spec.reason not in TICKET_REASONS:
        raise ValidationError(f"reason must be one of {', '.join(TICKET_REASONS)}, got {spec.reason!r}")
    if spec.priority not in TICKET_PRIORITIES:
        raise ValidationError(f"priority must be one of {', '.join(TICKET_PRIORITIES)}, got {spec.priority!r}")
    description = spec.description.strip()
    if not description or len(description) > 2000:
        raise ValidationError("description must be 1-2000 characters")
    patient_id = check_fhir_id(spec.patient_id, "patient")
    if patient_id is None:
        raise ValidationError("a care ticket needs the patient's FHIR id")
    now = clock()
    due_at = spec.due_at or now + SLA[spec.priority]
    if due_at.tzinfo is None:
        raise ValidationError("due date needs a time zone")
    key = check_business_key(spec.business_key, "care-ticket")
    requester = check_reference(spec.requester, "requester") or (
        actor.name if actor.kind == "user" and is_reference(actor.name) else clinic_organization(connection))
    values = {
        "connection_id": connection.id, "business_key": key, "patient_id": patient_id, "reason": spec.reason,
        "description": description, "priority": spec.priority,
        "owner": check_reference(spec.owner, "owner") or owner_for(connection, spec.reason),
        "requester": requester, "encounter_id": check_fhir_id(spec.encounter_id, "encounter"),
        "focus": check_reference(spec.focus, "focus"), "source": spec.source[:100] or "manual", "status": "open",
        "due_at": due_at, "created_by": actor.name[:300], "created_at": now, "updated_at": now,
    }
    ticket, created = insert_once(session, CareTicket, values, ["connection_id", "business_key"])
    if not created and ticket.patient_id != patient_id:  # a replayed key must not hand over another's ticket
        raise ConflictError(f"business key {key!r} is taken by another care ticket: use another key")
    if created:
        outbox.queue(session, clock, connection_id=ticket.connection_id, resource_type=TASK,
                     identifier_value=key, source=source_of(ticket))
        audit.record(session, clock, actor, "care_ticket.open", patient_id=patient_id,
                     entity=source_of(ticket), connection_id=ticket.connection_id)
    return ticket, created


def source_of(ticket: CareTicket) -> str:
    return f"care_ticket:{ticket.id}"


def set_status(session: Session, clock: Clock, ticket: CareTicket, status: str, actor: Actor) -> CareTicket:
    """A person moves the ticket on; the EHR's Task follows through the outbox."""
    if status not in TICKET_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(TICKET_STATUSES)}, got {status!r}")
    if status == ticket.status:
        return ticket
    now = clock()
    _move(ticket, status, now)
    session.add(ticket)
    outbox.queue(session, clock, connection_id=ticket.connection_id, resource_type=TASK,
                 identifier_value=ticket.business_key, source=source_of(ticket))
    audit.record(session, clock, actor, f"care_ticket.{status}", patient_id=ticket.patient_id,
                 entity=source_of(ticket), connection_id=ticket.connection_id)
    return ticket


def follow_ehr(session: Session, clock: Clock, ticket: CareTicket, status: str | None, ehr_status: str) -> bool:
    """The EHR moved our Task (completed, cancelled...): the ticket follows, with no write back. True if moved."""
    ticket.ehr_status = ehr_status
    session.add(ticket)
    if status is None or status == ticket.status:
        return False
    _move(ticket, status, clock())
    audit.record(session, clock, Actor(kind="system", name="ehr-sync", connection_id=ticket.connection_id),
                 f"care_ticket.{status}", patient_id=ticket.patient_id, entity=source_of(ticket),
                 detail=f"followed the EHR's Task status {ehr_status}")
    return True


def _move(ticket: CareTicket, status: str, now: datetime) -> None:
    ticket.status, ticket.updated_at = status, now
    ticket.closed_at = now if status in ("done", "cancelled") else None


def get(session: Session, ticket_id: int) -> CareTicket:
    ticket = session.get(CareTicket, ticket_id)
    if ticket is None:
        raise NotFoundError(f"no care ticket {ticket_id}")
    return ticket


def for_patient(session: Session, connection_id: int, patient_ids: list[str], *,
                open_only: bool = True) -> list[CareTicket]:
    """The tickets under any of one person's records (`prm.same_person`), soonest due first."""
    query = select(CareTicket).where(CareTicket.connection_id == connection_id,
                                     col(CareTicket.patient_id).in_(patient_ids))
    if open_only:
        query = query.where(col(CareTicket.status).in_(("open", "in_progress")))
    return list(session.exec(query.order_by(col(CareTicket.due_at))))
