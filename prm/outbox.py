"""The outbox: intended writes to an EHR, committed in the same transaction as the domain change.

Adding the same (connection, resource type, business identifier) twice is a no-op, which is the
first half of exactly-once; the drain (write-back issue) uses the identifier for the second half.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from prm.clock import Clock
from prm.db import insert_ignore
from prm.errors import ValidationError
from prm.models import OutboxRow


def add(session: Session, clock: Clock, *, connection_id: int, resource_type: str, identifier_system: str,
        identifier_value: str, source: str) -> OutboxRow:
    """Record one intended write; returns the row (the existing one if it was recorded before)."""
    if not resource_type.isalpha() or not resource_type[:1].isupper():
        raise ValidationError(f"not a FHIR resource type: {resource_type!r}")
    if not identifier_system or not identifier_value:
        raise ValidationError("an outbox row needs a business identifier (system and value)")
    now = clock()
    insert_ignore(
        session,
        OutboxRow.__table__,  # type: ignore[attr-defined]
        {"connection_id": connection_id, "resource_type": resource_type,
         "identifier_system": identifier_system, "identifier_value": identifier_value, "source": source,
         "status": "pending", "attempts": 0, "due_at": now, "created_at": now, "updated_at": now},
        ["connection_id", "resource_type", "identifier_system", "identifier_value"],
    )
    row = session.exec(
        select(OutboxRow).where(
            OutboxRow.connection_id == connection_id, OutboxRow.resource_type == resource_type,
            OutboxRow.identifier_system == identifier_system, OutboxRow.identifier_value == identifier_value,
        )
    ).one()
    return row


def pending(session: Session, clock: Clock, limit: int = 100) -> list[OutboxRow]:
    query = (
        select(OutboxRow)
        .where(OutboxRow.status == "pending", col(OutboxRow.due_at) <= clock())
        .order_by(col(OutboxRow.due_at))
        .limit(limit)
    )
    return list(session.exec(query))
