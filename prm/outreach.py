"""Outreach messages: what fhir-prm said to a patient or guardian, on which channel and why, with a ledger.

A message that was sent (or failed to send) becomes an outbox row in the same commit, so the EHR gets one
Communication per message. Recording the same business key twice returns the first message.
Channel adapters and planned sends arrive with the outreach issues; this module is their single door.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from prm import audit, outbox
from prm.audit import Actor
from prm.care_tickets import check_business_key, check_fhir_id, check_reference, clinic_organization
from prm.clock import Clock
from prm.db import insert_once
from prm.errors import ConflictError, NotFoundError, ValidationError
from prm.followup_models import OUTREACH_CHANNELS, OUTREACH_PURPOSES, OutreachMessage, OutreachMessageCreate
from prm.models import Connection

COMMUNICATION = "Communication"
RECORDABLE = ("sent", "failed")  # what has happened, and so goes to the clinical record


def _ledger_entry(at: datetime, status: str, reason: str | None, by: str) -> dict[str, str | None]:
    return {"at": at.isoformat(), "status": status, "reason": reason, "by": by}


def record_message(session: Session, clock: Clock, connection: Connection, spec: OutreachMessageCreate,
                   actor: Actor) -> tuple[OutreachMessage, bool]:
    """Record a message sent (or failed) to a patient or guardian; True when recorded now (not a repeat)."""
    if spec.channel not in OUTREACH_CHANNELS:
        raise ValidationError(f"channel must be one of {', '.join(OUTREACH_CHANNELS)}, got {spec.channel!r}")
    if spec.purpose not in OUTREACH_PURPOSES:
        raise ValidationError(f"purpose must be one of {', '.join(OUTREACH_PURPOSES)}, got {spec.purpose!r}")
    if spec.status not in RECORDABLE:
        raise ValidationError(f"status must be one of {', '.join(RECORDABLE)}, got {spec.status!r}")
    text = spec.text.strip()
    if not text or len(text) > 4000:
        raise ValidationError("text must be 1-4000 characters (exactly as sent)")
    if spec.status == "failed" and not (spec.status_reason or "").strip():
        raise ValidationError("a failed message needs the reason it was not sent")
    patient_id = check_fhir_id(spec.patient_id, "patient")
    if patient_id is None:
        raise ValidationError("an outreach message needs the patient's FHIR id")
    recipient = check_reference(spec.recipient, "recipient") or f"Patient/{patient_id}"
    if recipient.split("/")[0] not in ("Patient", "RelatedPerson"):
        raise ValidationError(f"recipient must be the Patient or a RelatedPerson, got {recipient!r}")
    now = clock()
    sent_at = spec.sent_at or now
    if sent_at.tzinfo is None:
        raise ValidationError("sent time needs a time zone")
    key = check_business_key(spec.business_key, "outreach")
    values = {
        "connection_id": connection.id, "business_key": key, "patient_id": patient_id, "recipient": recipient,
        "channel": spec.channel, "purpose": spec.purpose, "text": text,
        "encounter_id": check_fhir_id(spec.encounter_id, "encounter"),
        "based_on": check_reference(spec.based_on, "basedOn"), "source": spec.source[:100] or "manual",
        "sender": clinic_organization(connection), "status": spec.status,
        "status_reason": (spec.status_reason or "").strip()[:300] or None,
        "sent_at": sent_at if spec.status == "sent" else None, "created_by": actor.name[:300],
        "created_at": now, "updated_at": now,
        "ledger": [_ledger_entry(now, spec.status, spec.status_reason, actor.name)],
    }
    message, created = insert_once(session, OutreachMessage, values, ["connection_id", "business_key"])
    if not created and message.patient_id != patient_id:  # a replayed key must not hand over another's message
        raise ConflictError(f"business key {key!r} is taken by another outreach message: use another key")
    if created:
        outbox.queue(session, clock, connection_id=message.connection_id, resource_type=COMMUNICATION,
                     identifier_value=key, source=source_of(message))
        audit.record(session, clock, actor, "outreach.record", patient_id=patient_id, entity=source_of(message),
                     connection_id=message.connection_id, detail=f"{spec.purpose} by {spec.channel}: {spec.status}")
    return message, created


def source_of(message: OutreachMessage) -> str:
    return f"outreach_message:{message.id}"


def get(session: Session, message_id: int) -> OutreachMessage:
    message = session.get(OutreachMessage, message_id)
    if message is None:
        raise NotFoundError(f"no outreach message {message_id}")
    return message


def for_patient(session: Session, connection_id: int, patient_ids: list[str],
                limit: int = 50) -> list[OutreachMessage]:
    """The messages to any of one person's records (`prm.same_person`), newest first."""
    query = (select(OutreachMessage)
             .where(OutreachMessage.connection_id == connection_id,
                    col(OutreachMessage.patient_id).in_(patient_ids))
             .order_by(col(OutreachMessage.created_at).desc()).limit(limit))
    return list(session.exec(query))
