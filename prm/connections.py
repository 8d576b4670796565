"""EHR connections: validated at the edge, upserted by name, their health recorded by the checker.

One domain service backs both the CLI and (later) the admin page, so both apply the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import Session, select

from prm.clock import Clock
from prm.crypto import SecretBox
from prm.errors import NotFoundError, ValidationError
from prm.models import Connection
from prm.permissions import parse_role

CLIENT_AUTH_KINDS = ("public", "client_secret", "private_key_jwt")
DEFAULT_USER_SCOPES = (
    "launch openid fhirUser online_access patient/Patient.rs patient/RelatedPerson.rs "
    "patient/Encounter.rs patient/Appointment.rs patient/Communication.crus patient/Task.crus"
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ConnectionSpec:
    """What IT gives to add or change a connection (validated by `validate`)."""

    name: str
    iss: str
    client_id: str
    client_auth: str = "public"
    client_secret: str | None = None
    scopes: str = DEFAULT_USER_SCOPES
    frame_origins: tuple[str, ...] = ()
    role_mapping: dict[str, str] = field(default_factory=dict)
    default_role: str = "clinician"
    enabled: bool = True


def _origin(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValidationError(f"frame origin must be scheme://host[:port] with nothing after, got {value!r}")
    return f"{parts.scheme}://{parts.netloc}"


def validate(spec: ConnectionSpec) -> ConnectionSpec:
    """Return a normalised spec or raise ValidationError saying what is wrong."""
    if not _NAME.match(spec.name):
        raise ValidationError("name must be lower-case letters, digits, '.', '_' or '-' (max 100)")
    iss = urlsplit(spec.iss.strip())
    if iss.scheme not in ("http", "https") or not iss.netloc or iss.query or iss.fragment:
        raise ValidationError(f"iss must be an absolute http(s) FHIR base URL, got {spec.iss!r}")
    if not spec.client_id.strip():
        raise ValidationError("client id is required")
    if spec.client_auth not in CLIENT_AUTH_KINDS:
        raise ValidationError(f"client auth must be one of {', '.join(CLIENT_AUTH_KINDS)}")
    if spec.client_auth == "client_secret" and not spec.client_secret:
        raise ValidationError("client auth 'client_secret' needs a client secret")
    for role in [spec.default_role, *spec.role_mapping.values()]:
        parse_role(role)
    return ConnectionSpec(
        name=spec.name,
        iss=spec.iss.strip().rstrip("/"),
        client_id=spec.client_id.strip(),
        client_auth=spec.client_auth,
        client_secret=spec.client_secret,
        scopes=" ".join(spec.scopes.split()),
        frame_origins=tuple(dict.fromkeys(_origin(o) for o in spec.frame_origins)),
        role_mapping=dict(spec.role_mapping),
        default_role=spec.default_role,
        enabled=spec.enabled,
    )


def upsert(session: Session, clock: Clock, box: SecretBox, spec: ConnectionSpec) -> Connection:
    """Create the connection named `spec.name`, or bring it in line with `spec` (idempotent)."""
    spec = validate(spec)
    other = session.exec(select(Connection).where(Connection.iss == spec.iss)).first()
    if other is not None and other.name != spec.name:
        raise ValidationError(f"iss {spec.iss} already belongs to connection {other.name!r}")
    row = session.exec(select(Connection).where(Connection.name == spec.name)).first()
    now = clock()
    if row is None:
        row = Connection(name=spec.name, iss=spec.iss, client_id=spec.client_id, created_at=now)
    row.iss = spec.iss
    row.client_id = spec.client_id
    row.client_auth = spec.client_auth
    row.client_secret_enc = box.seal(spec.client_secret)
    row.scopes = spec.scopes
    row.frame_origins = list(spec.frame_origins)
    row.role_mapping = dict(spec.role_mapping)
    row.default_role = spec.default_role
    row.enabled = spec.enabled
    row.updated_at = now
    session.add(row)
    session.flush()
    return row


def list_all(session: Session) -> list[Connection]:
    return list(session.exec(select(Connection).order_by(Connection.name)))


def get(session: Session, connection_id: int) -> Connection | None:
    return session.get(Connection, connection_id)


def by_name(session: Session, name: str) -> Connection:
    row = session.exec(select(Connection).where(Connection.name == name)).first()
    if row is None:
        raise NotFoundError(f"no connection named {name!r}")
    return row


def enabled_by_iss(session: Session, iss: str) -> Connection | None:
    """The enabled connection whose FHIR base is exactly `iss` (no normalisation beyond a trailing /)."""
    row = session.exec(select(Connection).where(Connection.iss == iss.rstrip("/"))).first()
    return row if row is not None and row.enabled else None


def record_health(session: Session, clock: Clock, row: Connection, ok: bool, detail: dict[str, Any]) -> None:
    row.health_status = "ok" if ok else "failing"
    row.health_checked_at = clock()
    row.health_detail = detail
    session.add(row)
