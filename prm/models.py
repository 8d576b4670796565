"""SQLModel tables of the platform: connections, launches, audit, outbox, due jobs, leases, admins.

Words as in DESIGN.md. Datetimes are aware UTC (UTCDateTime); secrets are stored encrypted
(columns ending in `_enc`, see prm.crypto).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from prm.db import UTCDateTime


def _dt(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _json(default: Any) -> Any:
    return Field(default_factory=lambda: default.copy(), sa_column=Column(JSON, nullable=False))


class ConnectionBase(SQLModel):
    name: str = Field(max_length=100, unique=True, index=True)
    iss: str = Field(max_length=500, unique=True, index=True)
    client_id: str = Field(max_length=200)
    client_auth: str = Field(default="public", max_length=30)  # public | client_secret | private_key_jwt
    scopes: str = Field(default="", max_length=2000)
    default_role: str = Field(default="clinician", max_length=30)
    enabled: bool = True


class Connection(ConnectionBase, table=True):
    """One EHR tenant."""

    id: int | None = Field(default=None, primary_key=True)
    client_secret_enc: str | None = Field(default=None, max_length=2000)
    frame_origins: list[str] = _json([])
    role_mapping: dict[str, str] = _json({})
    # clinics this connection serves: [{"organization": "Organization/x", "name": ..., "timezone": "Europe/London"}]
    clinics: list[dict[str, str]] = _json([])
    signing_alg: str = Field(default="RS384", max_length=10)  # private_key_jwt: RS384 | ES384
    # SMART Backend Services for unattended work (sync, write-back)
    backend_client_id: str | None = Field(default=None, max_length=200)
    backend_auth: str | None = Field(default=None, max_length=30)  # private_key_jwt | client_secret
    backend_client_secret_enc: str | None = Field(default=None, max_length=2000)
    backend_scopes: str = Field(default="", max_length=2000)
    # The Group whose patients a Group-level Bulk $export reads (EHRs that offer no system export, or a clinic
    # that is one part of a large EHR): also the population a patient-by-patient sync covers.
    export_group: str | None = Field(default=None, max_length=64)
    # What the EHR lets our client id do, across every worker: requests in flight, requests a minute
    ehr_max_in_flight: int = 4
    ehr_requests_per_minute: int = 1200
    # care ticket owner by reason ({"negative-feedback": "PractitionerRole/x", "default": "Organization/y"})
    ticket_routing: dict[str, str] = _json({})
    capability_profile: dict[str, Any] = _json({})
    capability_checked_at: datetime | None = _dt()
    health_status: str = Field(default="unknown", max_length=20)
    health_checked_at: datetime | None = _dt()
    health_detail: dict[str, Any] = _json({})
    # Set when the EHR refuses our backend token even after re-authenticating: only IT can mend that
    # (client registration, keys, scopes); cleared by a clean `prm connection check`.
    needs_it: str | None = Field(default=None, max_length=500)
    needs_it_at: datetime | None = _dt()
    created_at: datetime | None = _dt(nullable=False)
    updated_at: datetime | None = _dt(nullable=False)


class Launch(SQLModel, table=True):
    """One SMART launch, pending until the callback completes it. The browser knows only `handle`."""

    id: int | None = Field(default=None, primary_key=True)
    handle: str = Field(max_length=64, unique=True, index=True)
    connection_id: int = Field(foreign_key="connection.id", index=True)
    kind: str = Field(default="ehr", max_length=20)  # ehr | standalone
    status: str = Field(default="pending", max_length=20)  # pending | active | failed
    state: str | None = Field(default=None, max_length=100, unique=True)
    code_verifier_enc: str | None = Field(default=None, max_length=1000)
    nonce: str | None = Field(default=None, max_length=100)
    authorize_endpoint: str | None = Field(default=None, max_length=1000)
    token_endpoint: str | None = Field(default=None, max_length=1000)
    fhir_user: str | None = Field(default=None, max_length=300)
    role: str | None = Field(default=None, max_length=30)
    patient_id: str | None = Field(default=None, max_length=100)
    encounter_id: str | None = Field(default=None, max_length=100)
    scope: str | None = Field(default=None, max_length=2000)
    access_token_enc: str | None = Field(default=None, max_length=8000)
    refresh_token_enc: str | None = Field(default=None, max_length=8000)
    expires_at: datetime | None = _dt()
    context: dict[str, Any] = _json({})  # need_patient_banner, smart_style_url, intent, fhirContext
    failure_reason: str | None = Field(default=None, max_length=100)
    refreshing_until: datetime | None = _dt()  # single-flight refresh: who refreshes holds this briefly
    created_at: datetime | None = _dt(nullable=False)
    completed_at: datetime | None = _dt()
    ended_at: datetime | None = _dt()


class AuditRecord(SQLModel, table=True):
    """AuditEvent-shaped: who did what to which patient's data, when, with what outcome."""

    __tablename__ = "audit_record"
    __table_args__ = (Index("ix_audit_patient_time", "connection_id", "patient_id", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    occurred_at: datetime | None = _dt(nullable=False, index=True)
    actor_kind: str = Field(max_length=20)  # user | admin | system
    actor: str = Field(max_length=300)  # fhirUser reference, admin username or worker/client name
    role: str | None = Field(default=None, max_length=30)
    action: str = Field(max_length=60)  # e.g. patient.read, launch.complete, connection.check
    outcome: str = Field(default="success", max_length=20)  # success | failure | denied
    connection_id: int | None = Field(default=None, index=True)
    launch_id: int | None = None
    patient_id: str | None = Field(default=None, max_length=100)
    entity: str | None = Field(default=None, max_length=300)  # e.g. Patient/pat-000001
    count: int | None = None  # system access: resources in the page
    detail: str | None = Field(default=None, max_length=300)  # a reason code, never PHI or tokens


class OutboxRow(SQLModel, table=True):
    """One intended write of one FHIR resource to an EHR, committed with the change that caused it."""

    __tablename__ = "outbox_row"
    __table_args__ = (
        UniqueConstraint("connection_id", "resource_type", "identifier_system", "identifier_value",
                         name="uq_outbox_business_identifier"),
        Index("ix_outbox_due", "status", "due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id")
    resource_type: str = Field(max_length=60)
    identifier_system: str = Field(max_length=300)
    identifier_value: str = Field(max_length=300)
    source: str = Field(max_length=100)  # the domain item it mirrors, e.g. care_ticket:12
    # pending | in_flight | done | kept (stays in fhir-prm: the EHR refuses every fallback) | dead | discarded
    status: str = Field(default="pending", max_length=20)
    attempts: int = 0
    due_at: datetime | None = _dt(nullable=False)
    last_error: str | None = Field(default=None, max_length=2000)
    fhir_id: str | None = Field(default=None, max_length=100)
    version_id: str | None = Field(default=None, max_length=100)
    # The domain item's edits bump `revision`; the drain writes until `sent_revision` catches up.
    revision: int = 1
    sent_revision: int = 0
    written_type: str | None = Field(default=None, max_length=60)  # what was written (a fallback may differ)
    degraded_reason: str | None = Field(default=None, max_length=500)  # why a fallback type or "kept"
    claimed_by: str | None = Field(default=None, max_length=200)  # the drain holding it: never in flight twice
    claim_until: datetime | None = _dt()
    outcome_unknown: bool = False  # a write was sent and its answer lost: search by identifier first
    duplicates: list[str] = _json([])  # ids of extra copies found on the EHR and marked entered-in-error
    created_at: datetime | None = _dt(nullable=False)
    updated_at: datetime | None = _dt(nullable=False)


class Job(SQLModel, table=True):
    """A unit of due background work; the database, not the queue, is the source of truth.

    (kind, subject_id, due_at) is unique, so a periodic slot is planned once however often the
    scheduler runs, and a claimed job is run by one worker however often it is enqueued. At most one job
    per (kind, subject) is pending: each run plans its own next slot, so a second pending job would be a
    second periodic chain for ever. The database holds that line, whichever planners meet.
    """

    __table_args__ = (
        UniqueConstraint("kind", "subject_id", "due_at", name="uq_job_slot"),
        Index("uq_job_one_pending", "kind", "subject_id", unique=True,
              sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
        Index("ix_job_due", "status", "due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=60)
    subject_id: int = 0
    due_at: datetime | None = _dt(nullable=False)
    status: str = Field(default="pending", max_length=20)  # pending | running | done | failed
    attempts: int = 0
    runs: int = 0  # times the job body ran to its end (the exactly-once check counts these)
    enqueued_at: datetime | None = _dt()  # last wake-up sent; re-sent only when that looks lost
    lease_until: datetime | None = _dt()
    claimed_by: str | None = Field(default=None, max_length=200)
    started_at: datetime | None = _dt()
    finished_at: datetime | None = _dt()
    last_error: str | None = Field(default=None, max_length=2000)


class Lease(SQLModel, table=True):
    """A named, expiring lease: one scheduler per deployment, later one worker per sync stream."""

    name: str = Field(primary_key=True, max_length=200)
    holder: str = Field(max_length=200)
    expires_at: datetime | None = _dt(nullable=False)


class LocalAdmin(SQLModel, table=True):
    """A local account for admin pages and the CLI (role: it_admin or practice_manager)."""

    __tablename__ = "local_admin"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=100, unique=True, index=True)
    password_hash: str = Field(max_length=300)
    role: str = Field(default="it_admin", max_length=30)
    created_at: datetime | None = _dt(nullable=False)


class SigningKey(SQLModel, table=True):
    """A key fhir-prm signs client assertions with (private_key_jwt), published by kid at /.well-known/jwks.json.

    status: active (signs, published), previous (published only, so EHRs holding a cached JWKS keep
    verifying during rotation), retired (neither). Private keys are stored encrypted.
    """

    __tablename__ = "signing_key"

    id: int | None = Field(default=None, primary_key=True)
    connection_id: int = Field(foreign_key="connection.id", index=True)
    kid: str = Field(max_length=100, unique=True, index=True)
    alg: str = Field(max_length=10)
    status: str = Field(default="active", max_length=20)
    private_key_enc: str = Field(max_length=8000)
    public_jwk: dict[str, Any] = _json({})
    created_at: datetime | None = _dt(nullable=False)
    retired_at: datetime | None = _dt()


class AdminSession(SQLModel, table=True):
    """A signed-in local admin; the browser holds only the random token whose hash is stored here."""

    __tablename__ = "admin_session"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=100, unique=True, index=True)
    admin_id: int = Field(foreign_key="local_admin.id", index=True)
    created_at: datetime | None = _dt(nullable=False)
    last_seen_at: datetime | None = _dt(nullable=False)
    ended_at: datetime | None = _dt()
