"""Write-back test helpers: open tickets and record messages the way producers do, drain, and count what the
EHR holds by our business identifier (on the FHIR server itself, behind the EHR's scope checks)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import requests
from sqlmodel import select

from prm import care_tickets, connections, outbox, outreach
from prm.audit import Actor
from prm.followup_models import CareTicket, CareTicketCreate, OutreachMessage, OutreachMessageCreate
from prm.models import OutboxRow
from tests.integration.sync_env import SyncEnv
from workers.connection_check import check_connection
from workers.writeback import drain_connection
from workers.writeback_engine import DrainRun

CLINICIAN = Actor(kind="user", name="Practitioner/prac-rdc-01", role="clinician")
PATIENTS = [f"pat-{n:06d}" for n in range(1, 400)]


def checked(env: SyncEnv) -> dict[str, Any]:
    """Run the capability check so the drain knows what the EHR takes (bundles, refused types)."""
    return check_connection(env.ctx, env.connection_id)


def open_tickets(env: SyncEnv, count: int, *, start: int = 0, priority: str = "routine") -> list[CareTicket]:
    opened = []
    with env.ctx.db.session() as session:
        row = connections.get(session, env.connection_id)
        assert row is not None
        for n in range(start, start + count):
            spec = CareTicketCreate(patient_id=PATIENTS[n % len(PATIENTS)], reason="callback-request",
                                    description=f"Call back about the appointment change (ticket {n})",
                                    priority=priority, business_key=f"care-ticket/test-{n}")
            ticket, _ = care_tickets.open_ticket(session, env.ctx.settings.clock, row, spec, CLINICIAN)
            opened.append(ticket)
    return opened


def record_messages(env: SyncEnv, count: int, *, start: int = 0) -> list[OutreachMessage]:
    recorded = []
    with env.ctx.db.session() as session:
        row = connections.get(session, env.connection_id)
        assert row is not None
        for n in range(start, start + count):
            spec = OutreachMessageCreate(patient_id=PATIENTS[n % len(PATIENTS)], channel="sms", purpose="reminder",
                                         text=f"Reminder: your dental check-up is tomorrow at 09:30 (msg {n}).",
                                         business_key=f"outreach/test-{n}")
            message, _ = outreach.record_message(session, env.ctx.settings.clock, row, spec, CLINICIAN)
            recorded.append(message)
    return recorded


def drain(env: SyncEnv, seconds: float = 120) -> DrainRun:
    run = drain_connection(env.ctx, env.connection_id, time_budget_s=seconds)
    assert run is not None, "the connection is enabled"
    return run


def outbox_rows(env: SyncEnv) -> list[OutboxRow]:
    with env.ctx.db.session() as session:
        return list(session.exec(select(OutboxRow).order_by(OutboxRow.id)))  # type: ignore[arg-type]


def on_server(env: SyncEnv, resource_type: str, *, live_only: bool = True) -> Counter[str]:
    """How many resources of the type carry each of our business keys, on the FHIR server itself."""
    counts: Counter[str] = Counter()
    url: str | None = (f"{env.stack.fhir_internal_url}/{resource_type}?identifier={outbox.IDENTIFIER_SYSTEM}|"
                       f"&_count=1000")
    while url:
        bundle = requests.get(url, timeout=60).json()
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            if live_only and resource.get("status") == "entered-in-error":
                continue
            for identifier in resource.get("identifier", []):
                if identifier.get("system") == outbox.IDENTIFIER_SYSTEM:
                    counts[identifier["value"]] += 1
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
        if url:
            url = url.replace(env.stack.iss, env.stack.fhir_internal_url)
    return counts
