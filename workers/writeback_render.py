"""From an outbox row to the FHIR resource to write: find the PRM item it mirrors, pick the type the EHR takes,
and map it. Also the merge after a 412: the EHR's current copy, with the fields we own laid over it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, SQLModel, col, select

from fhir_mappings.communication import outreach_message_to_communication
from fhir_mappings.task import care_ticket_status_from_task, care_ticket_to_communication, care_ticket_to_task
from prm import care_tickets, clinic_zones
from prm.clock import Clock
from prm.errors import ValidationError
from prm.followup_models import CareTicket, OutreachMessage
from prm.models import OutboxRow

# (item kind, FHIR type) -> the mapping, given the session (a ticket's fallback Communication dates its due day in
# the clinic's zone, read from the snapshot) and the item.
MAPPERS: dict[tuple[str, str], Callable[[Session, Any], dict[str, Any]]] = {
    ("care_ticket", "Task"): lambda _session, ticket: care_ticket_to_task(ticket),
    ("care_ticket", "Communication"): lambda session, ticket: care_ticket_to_communication(
        ticket, zone=clinic_zones.for_care_ticket(session, ticket)),
    ("outreach_message", "Communication"): lambda _session, message: outreach_message_to_communication(message),
}
ITEMS: dict[str, type[SQLModel]] = {"care_ticket": CareTicket, "outreach_message": OutreachMessage}
WITHDRAWN = "entered-in-error"  # a resource of ours the EHR withdrew: never updated again (it would come back)
# Fields the EHR may add or change that we never render, so a merge must keep them.
EHR_OWNED = ("meta", "id", "text", "note", "output", "input", "partOf", "executionPeriod", "extension")


@dataclass(frozen=True)
class Rendered:
    """What one row will write: the type, the resource (with id for an update) and the revision it carries."""

    row_id: int
    resource_type: str
    resource: dict[str, Any]
    revision: int
    identifier_value: str


def fallback_chain(preferred: str, fallbacks: str) -> list[str]:
    """`Task` with `Task:Communication` -> [Task, Communication]: what to try, in order."""
    pairs = dict(p.strip().split(":", 1) for p in fallbacks.split(",") if ":" in p)
    chain = [preferred]
    while chain[-1] in pairs and pairs[chain[-1]] not in chain:
        chain.append(pairs[chain[-1]])
    return chain


def refused_by_profile(profile: dict[str, Any], resource_type: str) -> str | None:
    """The capability check's reason this EHR takes no writes of `resource_type`, if it found one."""
    verdict = (profile.get("writes") or {}).get(resource_type)
    if isinstance(verdict, dict) and verdict.get("ok") is False:
        return str(verdict.get("reason") or f"{resource_type} writes are refused")
    return None


def preload_items(session: Session, rows: list[OutboxRow]) -> dict[str, SQLModel]:
    """The items of a batch by source (`care_ticket:12`), one query per kind; hold the dict while using them
    (the session's identity map keeps only weak references)."""
    wanted: dict[str, list[int]] = {}
    for row in rows:
        kind, _, raw_id = row.source.partition(":")
        if kind in ITEMS and raw_id.isdigit():
            wanted.setdefault(kind, []).append(int(raw_id))
    items: dict[str, SQLModel] = {}
    for kind, ids in wanted.items():
        model: Any = ITEMS[kind]
        items.update((f"{kind}:{item.id}", item) for item in session.exec(select(model).where(col(model.id).in_(ids))))
    return items


def item_of(session: Session, row: OutboxRow, items: dict[str, SQLModel] | None = None) -> SQLModel:
    if items is not None and row.source in items:
        return items[row.source]
    kind, _, raw_id = row.source.partition(":")
    model = ITEMS.get(kind)
    if model is None or not raw_id.isdigit():
        raise ValidationError(f"outbox row {row.id} names no item fhir-prm knows ({row.source!r})")
    item = session.get(model, int(raw_id))
    if item is None:
        raise ValidationError(f"outbox row {row.id}: {row.source} no longer exists")
    return item


def render(session: Session, row: OutboxRow, resource_type: str, items: dict[str, SQLModel] | None = None
           ) -> Rendered:
    """Map the row's item to `resource_type` (ValidationError when it cannot be written as that)."""
    kind = row.source.partition(":")[0]
    mapper = MAPPERS.get((kind, resource_type))
    if mapper is None:
        raise ValidationError(f"{kind} cannot be written as {resource_type}")
    item = item_of(session, row, items)
    if isinstance(item, CareTicket) and item.ehr_status == WITHDRAWN and row.written_type == resource_type:
        raise ValidationError(withdrawn({"resourceType": resource_type, "id": row.fhir_id}))
    resource = mapper(session, item)
    if row.fhir_id and row.written_type == resource_type:
        resource["id"] = row.fhir_id
    return Rendered(row_id=row.id or 0, resource_type=resource_type, resource=resource, revision=row.revision,
                    identifier_value=row.identifier_value)


def withdrawn(resource: dict[str, Any]) -> str:
    """Why a write is refused for good: the EHR marked our copy entered-in-error (the EHR's word on
    its own record wins), and laying our fields over it would bring it back."""
    return (f"the EHR withdrew this item's {resource.get('resourceType')}/{resource.get('id')} (entered-in-error); "
            "fhir-prm does not write it again over the EHR's word: discard this write, or open a new item")


def follow_remote_status(session: Session, clock: Clock, row: OutboxRow, current: dict[str, Any]) -> None:
    """Before merging: if the EHR moved a ticket's Task on (completed, cancelled) since we last saw it, follow;
    a ticket's fallback Communication's status is noted (it says nothing of the work's state, but withdrawn)."""
    item = item_of(session, row)
    status = str(current.get("status"))
    if isinstance(item, CareTicket) and current.get("resourceType") == "Task":
        if status != item.ehr_status:
            care_tickets.follow_ehr(session, clock, item, care_ticket_status_from_task(current), status)
    elif isinstance(item, CareTicket) and status != item.ehr_status:
        care_tickets.follow_ehr(session, clock, item, None, status)


def merge(current: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The EHR's current copy with every field we render laid over it; what the EHR added stays."""
    merged = copy.deepcopy(current)
    for key, value in ours.items():
        if key not in EHR_OWNED:
            merged[key] = value
    merged["id"] = current["id"]
    return merged
