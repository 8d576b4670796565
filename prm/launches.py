"""SMART launches: a pending row holds OAuth state server-side; the browser only ever holds the handle.

Keeping state, PKCE verifier and nonce here (not in a cookie) is what lets a launch complete inside a
cross-site EHR iframe where the browser drops every cookie.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from prm.clock import Clock
from prm.crypto import SecretBox
from prm.errors import LaunchError
from prm.models import Connection, Launch

PENDING_TTL = timedelta(minutes=10)


def new_handle() -> str:
    """An opaque, unguessable launch handle (256 bits); carries no PHI."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class PendingLaunch:
    """What the authorize redirect needs; secrets stay in the row."""

    launch: Launch
    state: str
    code_verifier: str
    nonce: str


def begin(session: Session, clock: Clock, box: SecretBox, connection: Connection, kind: str,
          authorize_endpoint: str, token_endpoint: str) -> PendingLaunch:
    """Create a pending launch with fresh state (≥128 bits), PKCE verifier and nonce."""
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    nonce = secrets.token_urlsafe(24)
    row = Launch(
        handle=new_handle(), connection_id=connection.id or 0, kind=kind, status="pending", state=state,
        code_verifier_enc=box.seal(verifier), nonce=nonce, authorize_endpoint=authorize_endpoint,
        token_endpoint=token_endpoint, created_at=clock(),
    )
    session.add(row)
    session.flush()
    return PendingLaunch(row, state, verifier, nonce)


def take_pending(session: Session, clock: Clock, state: str | None) -> Launch:
    """Consume the pending launch that `state` names: single use, bound to this launch, not expired."""
    if not state:
        raise LaunchError("missing_state", "The EHR answered without the state parameter.")
    row = session.exec(select(Launch).where(Launch.state == state)).first()
    if row is None or row.status != "pending":
        raise LaunchError("unknown_state", "This sign-in answer is unknown or was already used.")
    # Clear the state in the same statement that checks it, so a replay racing us finds nothing.
    result = session.execute(
        update(Launch).where(col(Launch.id) == row.id, col(Launch.state) == state, col(Launch.status) == "pending")
        .values(state=None)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise LaunchError("unknown_state", "This sign-in answer was already used.")
    if row.created_at is None or clock() - row.created_at > PENDING_TTL:
        fail(session, row, "expired_state")
        session.commit()  # the refusal is the answer: kept, not rolled back with the error
        raise LaunchError("expired_state", "The sign-in took too long and has expired.")
    row.state = None
    return row


def verifier_of(box: SecretBox, row: Launch) -> str:
    verifier = box.open(row.code_verifier_enc)
    if verifier is None:
        raise LaunchError("no_verifier", "The pending launch has no PKCE verifier.")
    return verifier


def complete(session: Session, clock: Clock, box: SecretBox, row: Launch, token: dict[str, Any],
             fhir_user: str | None, role: str) -> Launch:
    """Turn a pending launch active with its tokens (encrypted) and launch context."""
    now = clock()
    row.status = "active"
    row.code_verifier_enc = None
    row.fhir_user = fhir_user
    row.role = role
    row.patient_id = token.get("patient")
    row.encounter_id = token.get("encounter")
    row.scope = token.get("scope")
    row.access_token_enc = box.seal(token["access_token"])
    row.refresh_token_enc = box.seal(token.get("refresh_token"))
    row.expires_at = expiry(token, now)
    row.context = {
        key: token[key]
        for key in ("need_patient_banner", "smart_style_url", "intent", "fhirContext", "tenant")
        if key in token
    } | _lifetime(token)
    row.completed_at = now
    session.add(row)
    return row


def _lifetime(token: dict[str, Any]) -> dict[str, int]:
    return {"token_lifetime_s": int(token["expires_in"])} if token.get("expires_in") is not None else {}


def refresh_margin(row: Launch, most_s: float = 30.0) -> timedelta:
    """How long before expiry to refresh: 30 s, or a quarter of a short-lived token's life."""
    lifetime = row.context.get("token_lifetime_s")
    return timedelta(seconds=min(most_s, lifetime / 4) if lifetime else most_s)


def expiry(token: dict[str, Any], now: datetime) -> datetime | None:
    if token.get("expires_in") is not None:
        return now + timedelta(seconds=int(token["expires_in"]))
    return None


def claim_refresh(session: Session, launch_id: int, now: datetime, hold_s: float) -> bool:
    """Take the right to refresh this launch's token for `hold_s`; False when another request has it."""
    result = session.execute(
        update(Launch)
        .where(col(Launch.id) == launch_id, col(Launch.status) == "active",
               or_(col(Launch.refreshing_until).is_(None), col(Launch.refreshing_until) < now))
        .values(refreshing_until=now + timedelta(seconds=hold_s))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def store_refreshed(session: Session, clock: Clock, box: SecretBox, row: Launch, token: dict[str, Any]) -> None:
    """Save the new tokens in one commit; a rotated refresh token replaces the old one only once saved."""
    row.access_token_enc = box.seal(token["access_token"])
    if token.get("refresh_token"):
        row.refresh_token_enc = box.seal(token["refresh_token"])
    row.expires_at = expiry(token, clock())
    row.context = {**row.context, **_lifetime(token)}
    if token.get("scope"):
        row.scope = token["scope"]
    row.refreshing_until = None
    session.add(row)


def release_refresh(session: Session, launch_id: int) -> None:
    session.execute(update(Launch).where(col(Launch.id) == launch_id).values(refreshing_until=None))


def end_active(session: Session, clock: Clock, launch_id: int, reason: str) -> bool:
    """End the launch if it is still active: its tokens are wiped and the handle stops working. One conditional
    statement, so two requests that both find it over (or /end racing the guard) end it once; True when this
    call ended it."""
    ended = session.execute(update(Launch).where(col(Launch.id) == launch_id, col(Launch.status) == "active").values(
        status="ended", access_token_enc=None, refresh_token_enc=None, refreshing_until=None, failure_reason=reason,
        ended_at=clock()))
    return bool(ended.rowcount)  # type: ignore[attr-defined]


def fail(session: Session, row: Launch, reason: str) -> None:
    row.status = "failed"
    row.state = None
    row.code_verifier_enc = None
    row.failure_reason = reason
    session.add(row)


def by_handle(session: Session, handle: str) -> Launch | None:
    if not handle or len(handle) > 64:
        return None
    return session.exec(select(Launch).where(Launch.handle == handle)).first()
