"""Status back: when the sync brings a newer version of a Task or Communication we wrote, the PRM item follows.

Only the copy the outbox row points at counts (reconciled duplicates do not), and only a version newer than
the one we wrote: our own write coming back, or an older version read by a lagging sync, changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from fhir_mappings.task import care_ticket_status_from_task
from prm import care_tickets, outbox
from prm.clock import Clock
from prm.fhir_names import version_of
from prm.followup_models import CareTicket, OutreachMessage
from prm.models import OutboxRow
from workers.writeback_render import item_of


def _ours(resource: dict[str, Any]) -> str | None:
    return next((i.get("value") for i in resource.get("identifier") or []
                 if i.get("system") == outbox.IDENTIFIER_SYSTEM and i.get("value")), None)


def newer(seen: str | None, written: str | None) -> bool:
    """Is version `seen` newer than `written`? Numeric where both are (most servers), else any difference."""
    if seen is None or seen == written:
        return False
    if written is None:
        return True
    if seen.isdigit() and written.isdigit():
        return int(seen) > int(written)
    return True


def follow_written(session: Session, clock: Clock, connection_id: int, resources: list[dict[str, Any]]) -> int:
    """Apply what the EHR changed on our resources in this page; returns how many PRM items moved."""
    by_key = {key: r for r in resources if (key := _ours(r)) is not None}
    if not by_key:
        return 0
    rows = session.exec(select(OutboxRow).where(OutboxRow.connection_id == connection_id,
                                                OutboxRow.identifier_system == outbox.IDENTIFIER_SYSTEM,
                                                col(OutboxRow.identifier_value).in_(list(by_key))))
    moved = 0
    for row in rows:
        resource = by_key[row.identifier_value]
        version = version_of(resource)
        if resource.get("id") != row.fhir_id or resource.get("resourceType") != row.written_type \
                or not newer(version, row.version_id):
            continue
        item = item_of(session, row)
        status = str(resource.get("status"))
        if isinstance(item, CareTicket) and row.written_type == "Task":
            moved += care_tickets.follow_ehr(session, clock, item, care_ticket_status_from_task(resource), status)
        elif isinstance(item, CareTicket) and status != item.ehr_status:  # a fallback Communication: noted only
            care_tickets.follow_ehr(session, clock, item, None, status)
        elif isinstance(item, OutreachMessage) and status != (item.ledger[-1:] or [{}])[0].get("ehr_status"):
            item.ledger = [*item.ledger, {"at": clock().isoformat(), "status": item.status, "ehr_status": status,
                                          "reason": f"the EHR's Communication is now {status}", "by": "ehr-sync"}]
            session.add(item)
            moved += 1
    return moved
