"""Server-side sessions for local admins, so a stolen database or log never yields a usable sign-in.

The browser holds a random 256-bit token; the table stores only its SHA-256. A session ends on sign-out,
after `idle` without a request, or `absolute` after sign-in, whichever comes first. Each sign-in makes a
new token (no fixation). Failed sign-ins are audit records, and the throttle counts those records: the
database is the one place every web process shares, and the count survives restarts.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from prm import accounts, audit
from prm.audit import Actor
from prm.clock import Clock
from prm.config import Settings
from prm.errors import SignInRefused
from prm.models import AdminSession, AuditRecord, LocalAdmin

SIGN_IN = "admin.sign_in"
SIGN_OUT = "admin.sign_out"
THROTTLE_FAILURES = 5  # failed sign-ins per username and source address ...
THROTTLE_WINDOW = timedelta(minutes=15)  # ... within this window refuse further tries until the oldest ages out
WRONG = "wrong username or password"
THROTTLED = "too many failed sign-ins; wait 15 minutes and try again"


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionPolicy:
        return cls(idle=timedelta(minutes=settings.admin_idle_minutes),
                   absolute=timedelta(hours=settings.admin_absolute_hours))


@dataclass(frozen=True)
class AdminPrincipal:
    """The signed-in admin behind a request; `token_hash` binds the session's CSRF tokens."""

    session_id: int
    admin_id: int
    username: str
    role: str
    token_hash: str

    @property
    def actor(self) -> Actor:
        return Actor(kind="admin", name=self.username, role=self.role)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _failure_detail(source: str) -> str:
    return f"wrong_credentials from {source}"[:300]


def _recent_failures(session: Session, now: datetime, username: str, source: str) -> int:
    """Failures for this username from this source in the window, not counting those before a success."""
    since = now - THROTTLE_WINDOW
    last_success = session.exec(
        select(func.max(AuditRecord.occurred_at)).where(
            AuditRecord.action == SIGN_IN, AuditRecord.actor == username, AuditRecord.outcome == "success",
            AuditRecord.detail == f"from {source}"[:300], col(AuditRecord.occurred_at) > since)
    ).one()
    if last_success is not None:
        since = max(since, last_success)
    return session.exec(
        select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action == SIGN_IN, AuditRecord.actor == username, AuditRecord.outcome == "failure",
            AuditRecord.detail == _failure_detail(source), col(AuditRecord.occurred_at) > since)
    ).one()


def _start(session: Session, now: datetime, admin: LocalAdmin) -> tuple[str, AdminPrincipal]:
    token = secrets.token_urlsafe(32)
    row = AdminSession(token_hash=hash_token(token), admin_id=admin.id or 0, created_at=now, last_seen_at=now)
    session.add(row)
    session.flush()
    return token, AdminPrincipal(session_id=row.id or 0, admin_id=admin.id or 0, username=admin.username,
                                 role=admin.role, token_hash=row.token_hash)


def sign_in(session: Session, clock: Clock, username: str, password: str, source: str,
            previous_token: str | None = None) -> tuple[str, AdminPrincipal]:
    """Check the password and start a session; return (token for the cookie, principal).

    Raises SignInRefused with one generic message; the attempt is audited either way (never the
    password). Call inside a unit of work that commits even when this raises, so failures are counted.
    """
    now = clock()
    username = username.strip()[:100]
    if previous_token:
        end(session, clock, previous_token)  # a sign-in never reuses whatever session the browser had
    actor = Actor(kind="admin", name=username or "(empty)")
    if _recent_failures(session, now, actor.name, source) >= THROTTLE_FAILURES:
        audit.record(session, clock, actor, SIGN_IN, outcome="failure", detail=f"throttled from {source}")
        raise SignInRefused("throttled", THROTTLED)
    admin = accounts.authenticate(session, username, password) if username and password else None
    if admin is None:
        audit.record(session, clock, actor, SIGN_IN, outcome="failure", detail=_failure_detail(source))
        raise SignInRefused("wrong_credentials", WRONG)
    token, principal = _start(session, now, admin)
    audit.record(session, clock, principal.actor, SIGN_IN, detail=f"from {source}")
    return token, principal


def resolve(session: Session, clock: Clock, policy: SessionPolicy, token: str | None) -> AdminPrincipal | None:
    """The principal of a live session (and mark it seen), or None: unknown, ended, idle or too old."""
    if not token:
        return None
    row = session.exec(select(AdminSession).where(AdminSession.token_hash == hash_token(token))).first()
    if row is None or row.ended_at is not None or row.created_at is None or row.last_seen_at is None:
        return None
    now = clock()
    admin = session.get(LocalAdmin, row.admin_id)
    if admin is None or now - row.last_seen_at >= policy.idle or now - row.created_at >= policy.absolute:
        row.ended_at = now
        session.add(row)
        return None
    row.last_seen_at = now
    session.add(row)
    return AdminPrincipal(session_id=row.id or 0, admin_id=admin.id or 0, username=admin.username, role=admin.role,
                          token_hash=row.token_hash)


def end(session: Session, clock: Clock, token: str | None) -> AdminPrincipal | None:
    """End the session `token` names (sign-out); audited. Returns whose session it was, if any was live."""
    if not token:
        return None
    row = session.exec(select(AdminSession).where(AdminSession.token_hash == hash_token(token))).first()
    if row is None or row.ended_at is not None:
        return None
    row.ended_at = clock()
    session.add(row)
    admin = session.get(LocalAdmin, row.admin_id)
    if admin is None:
        return None
    principal = AdminPrincipal(session_id=row.id or 0, admin_id=admin.id or 0, username=admin.username,
                               role=admin.role, token_hash=row.token_hash)
    audit.record(session, clock, principal.actor, SIGN_OUT)
    return principal
