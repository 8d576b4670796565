"""EHR connections: validated at the edge, upserted by name, their health recorded by the checker.

One domain service backs both the CLI and (later) the admin page, so both apply the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import Session, select

from prm import audit, smart_scopes
from prm.clock import Clock
from prm.crypto import SecretBox
from prm.errors import NotFoundError, ValidationError
from prm.fhir_names import is_id, is_reference
from prm.followup_models import TICKET_REASONS
from prm.models import Connection
from prm.permissions import parse_role

CLIENT_AUTH_KINDS = ("public", "client_secret", "private_key_jwt")
BACKEND_AUTH_KINDS = ("private_key_jwt", "client_secret")
SIGNING_ALGS = ("RS384", "ES384")
DEFAULT_USER_SCOPES = (
    "launch openid fhirUser online_access patient/Patient.rs patient/RelatedPerson.rs "
    "patient/Encounter.rs patient/Appointment.rs patient/Communication.crus patient/Task.crus"
)
DEFAULT_BACKEND_SCOPES = (
    "system/Patient.rs system/RelatedPerson.rs system/Encounter.rs system/Appointment.rs "
    "system/Organization.rs system/Location.rs system/PractitionerRole.rs system/Communication.crus "
    "system/Task.crus"
)
# Opt-in, on top: rest-hook Subscriptions to the EHR's topics (R4 Backport IG), whose definitions are Basic
SUBSCRIPTION_SCOPES = "system/Subscription.cru system/Basic.rs"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
MAX_IN_FLIGHT = 32
MAX_REQUESTS_PER_MINUTE = 100_000
TICKET_OWNER_TYPES = ("Practitioner", "PractitionerRole", "Organization", "CareTeam", "HealthcareService")


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
    clinics: tuple[dict[str, str], ...] = ()  # {"organization": "Organization/x", "name": ..., "timezone": IANA}
    signing_alg: str = "RS384"
    backend_client_id: str | None = None
    backend_auth: str | None = None
    backend_client_secret: str | None = None
    backend_scopes: str = DEFAULT_BACKEND_SCOPES
    export_group: str | None = None  # the Group a Group-level $export reads (its id on the EHR)
    ehr_max_in_flight: int = 4  # requests at the EHR at once, across every worker
    ehr_requests_per_minute: int = 1200  # across every worker
    # care ticket owner by reason, and "default" ({"negative-feedback": "PractitionerRole/x"})
    ticket_routing: dict[str, str] = field(default_factory=dict)


def _routing(routes: dict[str, str]) -> dict[str, str]:
    for reason, owner in routes.items():
        if reason != "default" and reason not in TICKET_REASONS:
            raise ValidationError(f"ticket route for unknown reason {reason!r} (one of default, "
                                  f"{', '.join(TICKET_REASONS)})")
        if not is_reference(owner, TICKET_OWNER_TYPES):
            raise ValidationError(f"ticket owner must be a Practitioner, PractitionerRole, Organization, CareTeam "
                                  f"or HealthcareService reference, got {owner!r}")
    return dict(routes)


def _clinic(value: dict[str, str]) -> dict[str, str]:
    organization = (value.get("organization") or "").strip()
    if not is_reference(organization, ("Organization",)):
        raise ValidationError(f"clinic organization must be Organization/<id>, got {organization!r}")
    zone = (value.get("timezone") or "").strip()
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"clinic time zone must be an IANA zone such as Europe/London, got {zone!r}") from exc
    return {"organization": organization, "name": (value.get("name") or "").strip(), "timezone": zone}


def _origin(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValidationError(f"frame origin must be scheme://host[:port] with nothing after, got {value!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _clean_host(url: SplitResult) -> bool:
    """A host and a valid port, and nothing a URL should not carry here: credentials (they would be shown in
    `connection list` and every log line naming the EHR) or white space."""
    try:
        url.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return bool(url.hostname) and url.username is None and url.password is None and not any(
        c.isspace() for c in url.netloc + url.path)


def _without_userinfo(value: str) -> str:
    """The URL as given, with any user:password@ left out (an error message must not echo a secret)."""
    parts = urlsplit(value.strip())
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else value


def validate(spec: ConnectionSpec) -> ConnectionSpec:
    """Return a normalised spec or raise ValidationError saying what is wrong."""
    if not _NAME.match(spec.name):
        raise ValidationError("name must be lower-case letters, digits, '.', '_' or '-' (max 100)")
    iss = urlsplit(spec.iss.strip())
    if iss.scheme not in ("http", "https") or not iss.netloc or iss.query or iss.fragment or not _clean_host(iss):
        raise ValidationError(f"iss must be an absolute http(s) FHIR base URL (a host, a port up to 65535, no "
                              f"spaces, no user or password), got {_without_userinfo(spec.iss)!r}")
    if iss.scheme == "http" and iss.hostname not in LOOPBACK_HOSTS:
        # SMART App Launch: secrets, codes and tokens go only to authenticated servers over TLS.
        raise ValidationError(f"iss must use https (plain http only on this machine), got {spec.iss!r}")
    if not spec.client_id.strip():
        raise ValidationError("client id is required")
    if spec.client_auth not in CLIENT_AUTH_KINDS:
        raise ValidationError(f"client auth must be one of {', '.join(CLIENT_AUTH_KINDS)}")
    for role in [spec.default_role, *spec.role_mapping.values()]:
        parse_role(role)
    if spec.signing_alg not in SIGNING_ALGS:
        raise ValidationError(f"signing algorithm must be one of {', '.join(SIGNING_ALGS)}")
    if spec.backend_auth is not None and spec.backend_auth not in BACKEND_AUTH_KINDS:
        raise ValidationError(f"backend auth must be one of {', '.join(BACKEND_AUTH_KINDS)}")
    if spec.backend_auth and not (spec.backend_client_id or "").strip():
        raise ValidationError("backend services need a backend client id")
    if any(not scope.startswith("system/") for scope in spec.backend_scopes.split()):
        raise ValidationError("backend scopes must all be system/ scopes")
    export_group = (spec.export_group or "").strip().removeprefix("Group/") or None
    if export_group is not None and not is_id(export_group):
        raise ValidationError(f"export group must be a Group id (letters, digits, '-', '.'; max 64), got "
                              f"{spec.export_group!r}")
    if export_group is not None and not smart_scopes.allows(spec.backend_scopes, "Group", "r"):
        raise ValidationError("an export Group is read by the backend client: add system/Group.rs to the backend "
                              "scopes")
    _within("requests in flight", spec.ehr_max_in_flight, MAX_IN_FLIGHT)
    _within("requests a minute", spec.ehr_requests_per_minute, MAX_REQUESTS_PER_MINUTE)
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
        clinics=tuple(_clinic(c) for c in spec.clinics),
        signing_alg=spec.signing_alg,
        backend_client_id=(spec.backend_client_id or "").strip() or None,
        backend_auth=spec.backend_auth,
        backend_client_secret=spec.backend_client_secret,
        backend_scopes=" ".join(spec.backend_scopes.split()),
        export_group=export_group,
        ehr_max_in_flight=spec.ehr_max_in_flight,
        ehr_requests_per_minute=spec.ehr_requests_per_minute,
        ticket_routing=_routing(spec.ticket_routing),
    )


def _within(what: str, value: object, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ValidationError(f"{what} must be a whole number from 1 to {most}, got {value!r}")


def _kept_secret(box: SecretBox, auth: str | None, given: str | None, stored: str | None,
                 missing: str) -> str | None:
    """The sealed secret to keep: a new one if given, the stored one if not (an update that does not repeat
    it must not wipe it), none unless the auth kind uses a secret."""
    if auth != "client_secret":
        return None
    sealed = box.seal(given) if given is not None else stored
    if sealed is None:
        raise ValidationError(missing)
    return sealed


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
    row.client_secret_enc = _kept_secret(box, spec.client_auth, spec.client_secret, row.client_secret_enc,
                                         "client auth 'client_secret' needs a client secret")
    row.scopes = spec.scopes
    row.frame_origins = list(spec.frame_origins)
    row.role_mapping = dict(spec.role_mapping)
    row.default_role = spec.default_role
    row.enabled = spec.enabled
    row.clinics = list(spec.clinics)
    row.signing_alg = spec.signing_alg
    row.backend_client_id = spec.backend_client_id
    row.backend_auth = spec.backend_auth
    row.backend_client_secret_enc = _kept_secret(
        box, spec.backend_auth, spec.backend_client_secret, row.backend_client_secret_enc,
        "backend auth 'client_secret' needs a backend client secret")
    row.backend_scopes = spec.backend_scopes
    row.export_group = spec.export_group
    row.ehr_max_in_flight = spec.ehr_max_in_flight
    row.ehr_requests_per_minute = spec.ehr_requests_per_minute
    row.ticket_routing = dict(spec.ticket_routing)
    row.updated_at = now
    session.add(row)
    session.flush()
    return row


def create(session: Session, clock: Clock, box: SecretBox, spec: ConnectionSpec) -> Connection:
    """Add a new connection; unlike `upsert`, refuse a name in use (a form must not overwrite by accident)."""
    if session.exec(select(Connection).where(Connection.name == spec.name)).first() is not None:
        raise ValidationError(f"a connection named {spec.name!r} exists already; edit it instead")
    return upsert(session, clock, box, spec)


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


def set_enabled(session: Session, clock: Clock, actor: audit.Actor, name: str, enabled: bool) -> Connection:
    """Disable (or re-enable) a connection: launches from its iss are refused, its jobs stop being planned.
    Audited (`connection.disable` / `connection.enable`) in the same transaction, from the page or the CLI alike;
    a request that changes nothing is neither written nor audited."""
    row = by_name(session, name)
    if row.enabled == enabled:
        return row
    row.enabled = enabled
    row.updated_at = clock()
    session.add(row)
    audit.record(session, clock, actor, "connection.enable" if enabled else "connection.disable",
                 connection_id=row.id, entity=f"Connection/{name}")
    return row


def record_health(session: Session, clock: Clock, row: Connection, ok: bool, detail: dict[str, Any]) -> None:
    row.health_status = "ok" if ok else "failing"
    row.health_checked_at = clock()
    row.health_detail = detail
    session.add(row)


def record_capability(session: Session, clock: Clock, row: Connection, profile: dict[str, Any]) -> None:
    """Store what `prm connection check` found; the caller commits it with its audit record.
    A clean check is IT's word that the connection works again: it clears a `needs_it` flag."""
    row.capability_profile = profile
    row.capability_checked_at = clock()
    if profile.get("ok"):
        row.needs_it, row.needs_it_at = None, None
    session.add(row)


def flag_for_it(session: Session, clock: Clock, connection_id: int, reason: str) -> None:
    """The EHR refused our token even after a fresh one: background work on it needs IT, say so where IT looks."""
    row = session.get(Connection, connection_id)
    if row is not None:
        row.needs_it, row.needs_it_at = reason[:500], clock()
        session.add(row)
