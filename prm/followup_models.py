"""The PRM's own follow-ups, each mirrored to the EHR: care tickets (Task) and outreach messages (Communication).

These are the first producers of write-back; later issues (feedback, recall, journeys) grow these two models
rather than adding parallel ones. Each carries a `business_key`, unique per connection, which becomes the
`identifier` of the resource we write, so a retried write is recognised as the same one.
References (`patient_id`, `owner`, ...) are the EHR's FHIR ids/references; text never leaves except as sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from prm.db import UTCDateTime

TICKET_STATUSES = ("open", "in_progress", "done", "cancelled")
TICKET_PRIORITIES = ("routine", "urgent")
TICKET_REASONS = ("negative-feedback", "recall-call", "callback-request", "complaint", "other")
OUTREACH_CHANNELS = ("sms", "email", "phone", "letter", "portal", "in-person")
OUTREACH_PURPOSES = ("reminder", "recall", "follow-up", "feedback-invite", "feedback-reply", "check-in",
                     "thank-you")
OUTREACH_STATUSES = ("planned", "sent", "failed", "cancelled")


def _dt(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable))


class CareTicketBase(SQLModel):
    patient_id: str = Field(max_length=64)  # FHIR Patient id in the connection's EHR
    reason: str = Field(max_length=40)  # one of TICKET_REASONS
    description: str = Field(max_length=2000)  # what staff should do; shown in the EHR (never rapport notes)
    priority: str = Field(default="routine", max_length=10)
    owner: str | None = Field(default=None, max_length=200)  # reference: PractitionerRole/x, Organization/y, ...
    requester: str | None = Field(default=None, max_length=200)  # reference of who asked (user or clinic)
    encounter_id: str | None = Field(default=None, max_length=64)
    focus: str | None = Field(default=None, max_length=200)  # reference the ticket is about (e.g. Appointment/x)
    source: str = Field(default="manual", max_length=100)  # what opened it: manual, feedback:12, recall:3 ...


class CareTicket(CareTicketBase, table=True):
    """Work for staff about a patient; written to the EHR as a Task (or a Communication where Tasks are refused)."""

    __tablename__ = "care_ticket"
    __table_args__ = (
        UniqueConstraint("connection_id", "business_key", name="uq_care_ticket_key"),
        Index("ix_care_ticket_patient", "connection_id", "patient_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")
    business_key: str = Field(max_length=200)
    status: str = Field(default="open", max_length=20)  # one of TICKET_STATUSES
    ehr_status: str | None = Field(default=None, max_length=30)  # its Task's (or fallback Communication's) EHR status
    due_at: datetime | None = _dt(nullable=False)
    created_by: str = Field(max_length=300)
    created_at: datetime | None = _dt(nullable=False)
    updated_at: datetime | None = _dt(nullable=False)
    closed_at: datetime | None = _dt()


class CareTicketCreate(CareTicketBase):
    """What a producer (CLI, API, feedback rule) supplies; owner and due date default from routing and SLA."""

    due_at: datetime | None = None
    business_key: str | None = None  # supply one to make the creation itself idempotent


class OutreachMessageBase(SQLModel):
    patient_id: str = Field(max_length=64)
    recipient: str | None = Field(default=None, max_length=200)  # Patient/x (default) or RelatedPerson/y
    channel: str = Field(max_length=20)  # one of OUTREACH_CHANNELS
    purpose: str = Field(max_length=30)  # one of OUTREACH_PURPOSES
    text: str = Field(max_length=4000)  # exactly as sent
    encounter_id: str | None = Field(default=None, max_length=64)
    based_on: str | None = Field(default=None, max_length=200)  # reference: Appointment/x, CarePlan/y ...
    source: str = Field(default="manual", max_length=100)


class OutreachMessage(OutreachMessageBase, table=True):
    """A message to a patient or guardian; once sent (or failed) it is written as a Communication."""

    __tablename__ = "outreach_message"
    __table_args__ = (
        UniqueConstraint("connection_id", "business_key", name="uq_outreach_message_key"),
        Index("ix_outreach_patient", "connection_id", "patient_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")
    business_key: str = Field(max_length=200)
    sender: str | None = Field(default=None, max_length=200)  # the clinic Organization reference
    status: str = Field(default="sent", max_length=20)  # one of OUTREACH_STATUSES
    status_reason: str | None = Field(default=None, max_length=300)  # why it was not sent
    due_at: datetime | None = _dt()
    sent_at: datetime | None = _dt()
    created_by: str = Field(max_length=300)
    created_at: datetime | None = _dt(nullable=False)
    updated_at: datetime | None = _dt(nullable=False)
    ledger: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class OutreachMessageCreate(OutreachMessageBase):
    status: str = "sent"
    status_reason: str | None = None
    sent_at: datetime | None = None
    business_key: str | None = None
