"""CareTicket -> FHIR R4 Task (pure), the Communication fallback for EHRs that refuse Tasks, and the way back.

Task.status is the EHR's workflow word and the one its staff change; businessStatus keeps our exact status, so
a Task read back tells us both what we wrote and what the EHR has done with it since.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any

from fhir.resources.R4B import communication as fhir_communication
from fhir.resources.R4B import task as fhir_task

from fhir_mappings.common import instant, ref_id
from fhir_mappings.communication import CATEGORY_DISPLAY, CATEGORY_SYSTEM
from fhir_mappings.outbound import (
    RECIPIENT_TYPES,
    SENDER_TYPES,
    business_identifier,
    checked,
    code_in,
    coded,
    fhir_instant,
    our_key,
    reference,
    typed_reference,
)
from prm.errors import ValidationError
from prm.followup_models import CareTicket

STATUS_SYSTEM = "https://fhir-prm.org/fhir/CodeSystem/care-ticket-status"
REASON_SYSTEM = "https://fhir-prm.org/fhir/CodeSystem/care-ticket-reason"

TASK_STATUS = {"open": "ready", "in_progress": "in-progress", "done": "completed", "cancelled": "cancelled"}
STATUS_DISPLAY = {"open": "Open", "in_progress": "In progress", "done": "Done", "cancelled": "Cancelled"}
REASON_DISPLAY = {"negative-feedback": "Follow up negative feedback", "recall-call": "Call patient about recall",
                  "callback-request": "Patient asked for a call back", "complaint": "Resolve a complaint",
                  "other": "Other follow-up"}
TASK_PRIORITY = {"routine": "routine", "urgent": "urgent"}
# Every R4 Task.status; entered-in-error maps to None: the EHR withdrew the Task, it is not a state of our work.
TICKET_STATUS_FROM_TASK: dict[str, str | None] = {
    "draft": "open", "requested": "open", "received": "open", "accepted": "open", "ready": "open",
    "in-progress": "in_progress", "on-hold": "in_progress", "completed": "done",
    "cancelled": "cancelled", "rejected": "cancelled", "failed": "cancelled", "entered-in-error": None,
}
COMMUNICATION_STATUS = {"open": "in-progress", "in_progress": "in-progress", "done": "completed",
                        "cancelled": "stopped"}
# R4 Task.owner and Task.requester target types.
OWNER_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization", "CareTeam", "HealthcareService",
                         "Patient", "Device", "RelatedPerson"})
REQUESTER_TYPES = frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole",
                             "RelatedPerson"})


def _what(ticket: CareTicket) -> str:
    return f"care ticket {ticket.business_key!r}"


def _check_codes(ticket: CareTicket) -> None:
    for field, table in (("status", TASK_STATUS), ("priority", TASK_PRIORITY), ("reason", REASON_DISPLAY)):
        if getattr(ticket, field) not in table:
            raise ValidationError(f"{_what(ticket)} has unknown {field} {getattr(ticket, field)!r}")


def _reason(ticket: CareTicket) -> dict[str, Any]:
    return coded(REASON_SYSTEM, ticket.reason, REASON_DISPLAY[ticket.reason])


def care_ticket_to_task(ticket: CareTicket, *, authored_on: datetime | None = None) -> dict[str, Any]:
    """`authored_on` stands in for created_at on a ticket not yet stamped by the database."""
    _check_codes(ticket)
    what = _what(ticket)
    authored = fhir_instant(authored_on or ticket.created_at, f"{what} created_at")
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": business_identifier(ticket.business_key),
        "status": TASK_STATUS[ticket.status],
        "businessStatus": coded(STATUS_SYSTEM, ticket.status, STATUS_DISPLAY[ticket.status]),
        "intent": "order",
        "priority": TASK_PRIORITY[ticket.priority],
        "code": _reason(ticket),
        "description": ticket.description,
        "for": typed_reference("Patient", ticket.patient_id, f"{what} patient"),
        "authoredOn": authored,
        "lastModified": fhir_instant(ticket.updated_at, f"{what} updated_at") if ticket.updated_at else authored,
        "reasonCode": _reason(ticket),
    }
    if ticket.encounter_id:
        resource["encounter"] = typed_reference("Encounter", ticket.encounter_id, f"{what} encounter")
    if ticket.requester:
        resource["requester"] = reference(ticket.requester, f"{what} requester", REQUESTER_TYPES)
    if ticket.owner:
        resource["owner"] = reference(ticket.owner, f"{what} owner", OWNER_TYPES)
    if ticket.focus:
        resource["focus"] = reference(ticket.focus, f"{what} focus")
    if ticket.due_at:
        resource["restriction"] = {"period": {"end": fhir_instant(ticket.due_at, f"{what} due_at")}}
    return checked(fhir_task.Task, resource, what)


def care_ticket_status_from_task(resource: dict[str, Any]) -> str | None:
    """What the EHR's Task.status means for our ticket; None when the Task was entered in error."""
    status = resource.get("status", "")
    if status not in TICKET_STATUS_FROM_TASK:
        raise ValidationError(f"Task status {status!r} is not an R4 Task status")
    return TICKET_STATUS_FROM_TASK[status]


def care_ticket_fields_from_task(resource: dict[str, Any]) -> dict[str, Any]:
    """The ticket fields a Task carries back; our businessStatus wins over Task.status where it is present."""
    checked(fhir_task.Task, resource, "Task")
    due_at, _ = instant(((resource.get("restriction") or {}).get("period") or {}).get("end"))
    priority = resource.get("priority")
    return {
        "business_key": our_key(resource),
        "status": code_in(resource.get("businessStatus"), STATUS_SYSTEM) or care_ticket_status_from_task(resource),
        "reason": code_in(resource.get("code"), REASON_SYSTEM),
        "description": resource.get("description"),
        "priority": "urgent" if priority in ("urgent", "asap", "stat") else "routine",
        "patient_id": ref_id(resource.get("for"), "Patient"),
        "encounter_id": ref_id(resource.get("encounter"), "Encounter"),
        "owner": (resource.get("owner") or {}).get("reference"),
        "requester": (resource.get("requester") or {}).get("reference"),
        "focus": (resource.get("focus") or {}).get("reference"),
        "due_at": due_at,
    }


def care_ticket_to_communication(ticket: CareTicket, *, zone: tzinfo = UTC) -> dict[str, Any]:
    """Fallback for EHRs that refuse Task writes: tell the care team instead. `zone` dates the due day locally."""
    _check_codes(ticket)
    what = _what(ticket)
    due = ""
    if ticket.due_at:
        fhir_instant(ticket.due_at, f"{what} due_at")  # refuses a naive due_at before astimezone guesses a zone
        due = f", due {ticket.due_at.astimezone(zone).date().isoformat()}"
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": business_identifier(ticket.business_key),
        "status": COMMUNICATION_STATUS[ticket.status],
        "category": [coded(CATEGORY_SYSTEM, "notification", CATEGORY_DISPLAY["notification"])],
        "subject": typed_reference("Patient", ticket.patient_id, f"{what} patient"),
        "sent": fhir_instant(ticket.created_at, f"{what} created_at"),
        "reasonCode": [_reason(ticket)],
        "payload": [{"contentString": f"Care ticket ({ticket.priority}{due}): {ticket.description}"}],
    }
    if ticket.encounter_id:
        resource["encounter"] = typed_reference("Encounter", ticket.encounter_id, f"{what} encounter")
    if ticket.owner:
        resource["recipient"] = [reference(ticket.owner, f"{what} owner", RECIPIENT_TYPES)]
    if ticket.requester:
        resource["sender"] = reference(ticket.requester, f"{what} requester", SENDER_TYPES)
    return checked(fhir_communication.Communication, resource, what)
