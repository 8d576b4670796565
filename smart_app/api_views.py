"""The sidebar's JSON API: open a care ticket, record an outreach message, list the patient's follow-ups.

Called by the sidebar's own scripts with the launch handle in the URL and a CSRF token (bound to that handle)
in the `X-CSRF-Token` header: no cookie is needed or trusted. The patient is always the launch's patient in
context, never one named in the body. Each call is permission-checked (guard) and audited (domain).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import ValidationError as PydanticError
from sqlmodel import Session

from prm import care_tickets, clinic_zones, connections, outreach, smart_scopes
from prm.audit import record as audit_record
from prm.clock import parse_instant
from prm.errors import ConfigError, PrmError, ValidationError
from prm.followup_models import CareTicket, CareTicketCreate, OutreachMessage, OutreachMessageCreate
from prm.models import Connection, Launch
from prm.permissions import Action
from prm.same_person import same_person
from smart_app import csrf
from smart_app.context import prm
from smart_app.guard import granted_scope, requires
from workers.writeback import wake

bp = Blueprint("api", __name__, url_prefix="/api/<handle>")
API_PURPOSE = "api"
TICKET_FIELDS = {"reason", "description", "priority", "owner", "due_at", "focus", "key"}
OUTREACH_FIELDS = {"channel", "purpose", "text", "recipient", "status", "status_reason", "sent_at", "based_on",
                   "key"}


def api_token(handle: str) -> str:
    """The token the sidebar page hands its scripts (meta tag) for this launch's API calls."""
    return csrf.issue(prm().settings.secret_key, handle, API_PURPOSE)


def _problem(status: int, error: str, message: str) -> tuple[Response, int]:
    return jsonify(error=error, message=message), status


def _body(handle: str, allowed: set[str]) -> dict[str, Any]:
    csrf.check(prm().settings.secret_key, request.headers.get("X-CSRF-Token"), handle, API_PURPOSE)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if any(value is not None and not isinstance(value, str) for value in body.values()):
        raise ValidationError("every field is a string")
    return body


def _instant(value: str | None, what: str) -> Any:
    try:
        return parse_instant(value) if value else None
    except ConfigError as exc:
        raise ValidationError(f"{what}: {exc}") from exc


def ticket_json(session: Session, ticket: CareTicket) -> dict[str, Any]:
    """The ticket for the sidebar: `due_day` is the due date in the clinic's zone, as the EHR's Task says it
    (`prm.clinic_zones`); the UTC instant's own date is a day out for a clinic far from Greenwich."""
    due_day = ticket.due_at.astimezone(clinic_zones.for_care_ticket(session, ticket)).date() if ticket.due_at else None
    return {"id": ticket.id, "key": ticket.business_key, "reason": ticket.reason, "description": ticket.description,
            "priority": ticket.priority, "status": ticket.status, "owner": ticket.owner,
            "due_at": ticket.due_at.isoformat() if ticket.due_at else None,
            "due_day": due_day.isoformat() if due_day else None}


def message_json(_session: Session, message: OutreachMessage) -> dict[str, Any]:
    return {"id": message.id, "key": message.business_key, "channel": message.channel, "purpose": message.purpose,
            "status": message.status, "recipient": message.recipient,
            "sent_at": message.sent_at.isoformat() if message.sent_at else None}


def _launch() -> Launch:
    launch: Launch = g.launch
    if launch.patient_id is None:
        raise ValidationError("this launch has no patient in context")
    return launch


Produce = Callable[[Session, Connection, Launch, dict[str, Any]], tuple[Any, bool]]


def _produce(handle: str, fields: set[str], produce: Produce, present: Callable[[Session, Any], dict[str, Any]]
             ) -> tuple[Response, int]:
    """Check the call, let the domain produce the item (and its outbox row and audit) in one commit, wake the
    drain after it; 201 when made now, 200 when the same key made it before."""
    ctx = prm()
    try:
        body, launch = _body(handle, fields), _launch()
        with ctx.db.session() as session:
            connection = connections.get(session, launch.connection_id)
            if connection is None:
                return _problem(404, "not_found", "this launch's connection is gone")
            item, created = produce(session, connection, launch, body)
            shown = present(session, item)
            wake(ctx.worker, session, connection.id or 0)
    except (ValidationError, PydanticError) as exc:
        return _problem(400, "invalid", str(exc))
    except PrmError as exc:
        return _problem(409, "refused", str(exc))
    return jsonify(shown | {"created": created}), 201 if created else 200


@bp.post("/care-tickets")
@requires(Action.OPEN_CARE_TICKET, api=True)
def open_care_ticket(handle: str) -> tuple[Response, int]:
    def produce(session: Session, connection: Connection, launch: Launch, body: dict[str, Any]) -> tuple[Any, bool]:
        spec = CareTicketCreate(patient_id=launch.patient_id or "", reason=body.get("reason") or "",
                                description=body.get("description") or "", priority=body.get("priority") or "routine",
                                owner=body.get("owner"), due_at=_instant(body.get("due_at"), "due_at"),
                                focus=body.get("focus"), encounter_id=launch.encounter_id,
                                business_key=body.get("key"), source="sidebar")
        return care_tickets.open_ticket(session, prm().settings.clock, connection, spec, g.actor)

    return _produce(handle, TICKET_FIELDS, produce, ticket_json)


@bp.post("/outreach-messages")
@requires(Action.RECORD_OUTREACH, api=True)
def record_outreach(handle: str) -> tuple[Response, int]:
    def produce(session: Session, connection: Connection, launch: Launch, body: dict[str, Any]) -> tuple[Any, bool]:
        spec = OutreachMessageCreate(patient_id=launch.patient_id or "", channel=body.get("channel") or "",
                                     purpose=body.get("purpose") or "", text=body.get("text") or "",
                                     recipient=body.get("recipient"), status=body.get("status") or "sent",
                                     status_reason=body.get("status_reason"),
                                     sent_at=_instant(body.get("sent_at"), "sent_at"),
                                     encounter_id=launch.encounter_id, based_on=body.get("based_on"),
                                     business_key=body.get("key"), source="sidebar")
        return outreach.record_message(session, prm().settings.clock, connection, spec, g.actor)

    return _produce(handle, OUTREACH_FIELDS, produce, message_json)


@bp.get("/follow-ups")
@requires(Action.VIEW_PATIENT, api=True)
def follow_ups(handle: str) -> tuple[Response, int]:
    """The patient in context's open care tickets and recent outreach (one audit record for the view)."""
    ctx = prm()
    try:
        launch = _launch()
    except ValidationError as exc:
        return _problem(400, "invalid", str(exc))
    patient_id = launch.patient_id or ""
    granted = granted_scope(launch)  # each list only where the EHR granted reading its type (null: not granted)
    sees_tickets = smart_scopes.user_allows(granted, "Task", "r")
    sees_messages = smart_scopes.user_allows(granted, "Communication", "r")
    with ctx.db.session() as session:  # under any of the person's records: an EHR merge moves not all of it
        person = same_person(session, launch.connection_id, patient_id)
        tickets = care_tickets.for_patient(session, launch.connection_id, person) if sees_tickets else []
        messages = outreach.for_patient(session, launch.connection_id, person, limit=20) if sees_messages else []
        audit_record(session, ctx.settings.clock, g.actor, "follow_ups.view", patient_id=patient_id,
                     count=len(tickets) + len(messages))
        shown = jsonify(tickets=[ticket_json(session, t) for t in tickets] if sees_tickets else None,
                        messages=[message_json(session, m) for m in messages] if sees_messages else None)
    return shown, 200
