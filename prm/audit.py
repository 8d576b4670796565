"""The one audit writer: every read or write of patient data calls `record` in the same transaction.

Rows are AuditEvent-shaped (who, role, action, patient, entity, outcome, launch, time) and carry ids
only, never names, telecom, notes or tokens. System access (a sync page) is one row with a count.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from sqlmodel import Session

from prm.clock import Clock
from prm.models import AuditRecord


@dataclass(frozen=True)
class Actor:
    """Who acts: a launched user, a local admin, or the system (a worker)."""

    kind: str  # user | admin | system
    name: str  # fhirUser reference, admin username or worker/client name
    role: str | None = None
    connection_id: int | None = None
    launch_id: int | None = None


def command_line_actor(connection_id: int | None) -> Actor:
    """IT at a shell: a `prm` command acts as an IT admin named after the operating-system user."""
    return Actor(kind="admin", name=f"cli:{getpass.getuser()}", role="it_admin", connection_id=connection_id)


def record(
    session: Session,
    clock: Clock,
    actor: Actor,
    action: str,
    *,
    patient_id: str | None = None,
    entity: str | None = None,
    outcome: str = "success",
    detail: str | None = None,
    count: int | None = None,
    connection_id: int | None = None,
) -> AuditRecord:
    """Append one audit record to the session (committed with the action it describes)."""
    row = AuditRecord(
        occurred_at=clock(),
        actor_kind=actor.kind,
        actor=actor.name,
        role=actor.role,
        action=action,
        outcome=outcome,
        connection_id=connection_id if connection_id is not None else actor.connection_id,
        launch_id=actor.launch_id,
        patient_id=patient_id,
        entity=entity,
        count=count,
        detail=detail[:300] if detail else None,
    )
    session.add(row)
    return row
