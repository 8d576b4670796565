"""`prm ticket`, `prm outreach` and `prm outbox`: open care tickets and record outreach from the shell, and
watch, retry or discard the writes to the EHR (the dead-letter view for IT)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click
from sqlmodel import col, select

from prm import care_tickets, connections, outbox, outreach
from prm.audit import Actor, command_line_actor
from prm.clock import parse_instant
from prm.config import load_settings
from prm.errors import NotFoundError, ValidationError
from prm.followup_models import (
    OUTREACH_CHANNELS,
    OUTREACH_PURPOSES,
    TICKET_PRIORITIES,
    TICKET_REASONS,
    TICKET_STATUSES,
    CareTicket,
    CareTicketCreate,
    OutreachMessageCreate,
)
from prm.models import Connection, OutboxRow
from workers import runtime
from workers.runtime import WorkerContext


def _context() -> WorkerContext:
    ctx = runtime.build(load_settings())
    ctx.db.ping()
    return ctx


def _actor(connection: Connection) -> Actor:
    return command_line_actor(connection.id)


def _when(value: str | None) -> datetime | None:
    return parse_instant(value) if value else None


def _wake(ctx: WorkerContext, session: Any, connection_id: int) -> None:
    """With Redis, wake a worker now; without, the `prm serve` process's scheduler finds the due drain."""
    if ctx.settings.uses_redis:
        from workers.writeback import wake

        wake(ctx, session, connection_id)


def _echo(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def ticket_json(ticket: CareTicket) -> dict[str, Any]:
    return {"id": ticket.id, "business_key": ticket.business_key, "patient": ticket.patient_id,
            "reason": ticket.reason, "priority": ticket.priority, "status": ticket.status, "owner": ticket.owner,
            "due_at": ticket.due_at, "ehr_status": ticket.ehr_status, "source": ticket.source}


def outbox_json(row: OutboxRow) -> dict[str, Any]:
    return {"id": row.id, "connection_id": row.connection_id, "type": row.resource_type,
            "written_as": row.written_type, "key": row.identifier_value, "source": row.source, "status": row.status,
            "attempts": row.attempts, "fhir_id": row.fhir_id, "version": row.version_id,
            "degraded": row.degraded_reason, "duplicates": row.duplicates, "error": row.last_error,
            "due_at": row.due_at, "updated_at": row.updated_at}


@click.group(help="Care tickets: staff follow-ups, written to the EHR as Tasks.")
def ticket() -> None:
    pass


@ticket.command("open", help="Open a care ticket for a patient (idempotent with --key).")
@click.option("--connection", "name", required=True)
@click.option("--patient", required=True, help="The patient's FHIR id in this EHR.")
@click.option("--reason", type=click.Choice(TICKET_REASONS), required=True)
@click.option("--description", required=True, help="What staff should do (shown in the EHR).")
@click.option("--priority", type=click.Choice(TICKET_PRIORITIES), default="routine", show_default=True)
@click.option("--owner", default=None, help="Reference (PractitionerRole/x); default from the connection's routing.")
@click.option("--due", default=None, help="ISO 8601 instant with zone; default from the SLA for the priority.")
@click.option("--encounter", default=None)
@click.option("--focus", default=None, help="Reference the ticket is about, e.g. Appointment/x.")
@click.option("--key", default=None, help="Business key; opening again with the same key opens nothing new.")
def ticket_open(name: str, patient: str, reason: str, description: str, priority: str, owner: str | None,
                due: str | None, encounter: str | None, focus: str | None, key: str | None) -> None:
    ctx = _context()
    spec = CareTicketCreate(patient_id=patient, reason=reason, description=description, priority=priority,
                            owner=owner, due_at=_when(due), encounter_id=encounter, focus=focus, business_key=key)
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        opened, created = care_tickets.open_ticket(session, ctx.settings.clock, row, spec, _actor(row))
        _wake(ctx, session, row.id or 0)
    _echo(ticket_json(opened) | {"created": created})


@ticket.command("list", help="Care tickets of a connection (open ones unless --all).")
@click.option("--connection", "name", required=True)
@click.option("--patient", default=None)
@click.option("--all", "show_all", is_flag=True)
def ticket_list(name: str, patient: str | None, show_all: bool) -> None:
    ctx = _context()
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        query = select(CareTicket).where(CareTicket.connection_id == row.id)
        if patient:
            query = query.where(CareTicket.patient_id == patient)
        if not show_all:
            query = query.where(col(CareTicket.status).in_(("open", "in_progress")))
        tickets = list(session.exec(query.order_by(col(CareTicket.due_at)).limit(500)))
    click.echo(json.dumps([ticket_json(t) for t in tickets], indent=2, default=str))


@ticket.command("status", help="Move a care ticket on; the EHR's Task follows.")
@click.argument("ticket_id", type=int)
@click.argument("status", type=click.Choice(TICKET_STATUSES))
def ticket_status(ticket_id: int, status: str) -> None:
    ctx = _context()
    with ctx.db.session() as session:
        item = care_tickets.get(session, ticket_id)
        row = connections.get(session, item.connection_id)
        if row is None:
            raise NotFoundError(f"care ticket {ticket_id}'s connection is gone")
        care_tickets.set_status(session, ctx.settings.clock, item, status, _actor(row))
        _wake(ctx, session, row.id or 0)
    _echo(ticket_json(item))


@click.group(help="Outreach messages: what was said to a patient, written to the EHR as Communications.")
def outreach_group() -> None:
    pass


@outreach_group.command("record", help="Record a message sent (or failed) to a patient or guardian.")
@click.option("--connection", "name", required=True)
@click.option("--patient", required=True)
@click.option("--channel", type=click.Choice(OUTREACH_CHANNELS), required=True)
@click.option("--purpose", type=click.Choice(OUTREACH_PURPOSES), required=True)
@click.option("--text", required=True, help="The text exactly as sent.")
@click.option("--recipient", default=None, help="RelatedPerson/x for a guardian; default the patient.")
@click.option("--status", type=click.Choice(outreach.RECORDABLE), default="sent", show_default=True)
@click.option("--status-reason", default=None, help="Why it was not sent (for --status failed).")
@click.option("--sent-at", default=None, help="ISO 8601 instant with zone; default now.")
@click.option("--encounter", default=None)
@click.option("--based-on", default=None, help="Reference it serves, e.g. Appointment/x.")
@click.option("--key", default=None, help="Business key; recording again with the same key records nothing new.")
def outreach_record(name: str, patient: str, channel: str, purpose: str, text: str, recipient: str | None,
                    status: str, status_reason: str | None, sent_at: str | None, encounter: str | None,
                    based_on: str | None, key: str | None) -> None:
    ctx = _context()
    spec = OutreachMessageCreate(patient_id=patient, channel=channel, purpose=purpose, text=text,
                                 recipient=recipient, status=status, status_reason=status_reason,
                                 sent_at=_when(sent_at), encounter_id=encounter, based_on=based_on,
                                 business_key=key)
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        message, created = outreach.record_message(session, ctx.settings.clock, row, spec, _actor(row))
        _wake(ctx, session, row.id or 0)
    _echo({"id": message.id, "business_key": message.business_key, "status": message.status, "created": created})


@click.group(name="outbox", help="Writes to the EHRs: watch them, and retry or discard the ones that failed.")
def outbox_group() -> None:
    pass


@outbox_group.command("list", help="Outbox rows; --attention shows dead, kept, degraded and duplicated ones.")
@click.option("--connection", "name", default=None)
@click.option("--attention", is_flag=True, help="Only rows IT should look at.")
@click.option("--status", default=None, help="Only rows with this status.")
def outbox_list(name: str | None, attention: bool, status: str | None) -> None:
    ctx = _context()
    with ctx.db.session() as session:
        wanted = connections.by_name(session, name).id if name else None
        rows = (outbox.needing_attention(session, connection_id=wanted, status=status) if attention
                else outbox.listed(session, connection_id=wanted, status=status))
    click.echo(json.dumps([outbox_json(r) for r in rows], indent=2, default=str))


@outbox_group.command("retry", help="Try a dead or kept row again from the start.")
@click.argument("row_id", type=int)
def outbox_retry(row_id: int) -> None:
    ctx = _context()
    with ctx.db.session() as session:
        row = outbox.retry(session, ctx.settings.clock, row_id)
        _audit(session, ctx, row, "outbox.retry")
        _wake(ctx, session, row.connection_id)
    _echo(outbox_json(row))


@outbox_group.command("discard", help="Give up on a dead or kept row (it stays on record as discarded).")
@click.argument("row_id", type=int)
def outbox_discard(row_id: int) -> None:
    ctx = _context()
    with ctx.db.session() as session:
        row = outbox.discard(session, ctx.settings.clock, row_id)
        _audit(session, ctx, row, "outbox.discard")
    _echo(outbox_json(row))


@outbox_group.command("drain", help="Write a connection's due rows now, in the foreground.")
@click.option("--connection", "name", required=True)
@click.option("--seconds", default=600.0, show_default=True, help="Stop after this long.")
def outbox_drain(name: str, seconds: float) -> None:
    from workers.writeback import drain_connection

    ctx = _context()
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
    run = drain_connection(ctx, row.id or 0, time_budget_s=seconds)
    if run is None:
        raise ValidationError(f"connection {name!r} is disabled: enable it to write to its EHR")
    _echo(vars(run))


def _audit(session: Any, ctx: WorkerContext, row: OutboxRow, action: str) -> None:
    from prm import audit

    connection = session.get(Connection, row.connection_id)
    audit.record(session, ctx.settings.clock, _actor(connection), action, entity=f"outbox_row:{row.id}",
                 detail=row.source)
