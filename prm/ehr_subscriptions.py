"""Our rest-hook Subscriptions on each EHR: the local record of each, and what a notification may change in it.

A subscription row exists before the EHR is asked for the Subscription, because the EHR's handshake can
arrive before its answer to the create. Secrets are random, sent to the EHR once and kept here only as a
SHA-256, so the database leaks nothing a forger could post with.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime

from sqlmodel import Session, col, select

from prm.errors import NotFoundError, PrmError
from prm.snapshot_models import EhrSubscription

STATUSES = ("requested", "active", "error", "off")
BACKPORT, CRITERIA = "backport", "criteria"  # topic-based (R4 Backport IG) | plain R4, a search as criteria
KINDS = (BACKPORT, CRITERIA)


class HookRefused(PrmError):
    """A notification without the subscription's current secret: not from the EHR we gave it to (or an old one)."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def of_connection(session: Session, connection_id: int) -> list[EhrSubscription]:
    return list(session.exec(select(EhrSubscription).where(EhrSubscription.connection_id == connection_id)
                             .order_by(col(EhrSubscription.topic))))


def for_topic(session: Session, connection_id: int, topic: str) -> EhrSubscription | None:
    return session.exec(select(EhrSubscription).where(EhrSubscription.connection_id == connection_id,
                                                      EhrSubscription.topic == topic)).first()


def request(session: Session, clock: Callable[[], datetime], connection_id: int, topic: str,
            resource_types: list[str], kind: str = BACKPORT) -> tuple[EhrSubscription, str]:
    """The row for (connection, topic), set to `requested` with a fresh secret; returns it and the secret to
    send to the EHR. Its hook key stays, so the EHR's copy keeps its endpoint; the old secret stops working."""
    if kind not in KINDS:
        raise ValueError(f"unknown subscription kind {kind!r}")
    now = clock()
    row = for_topic(session, connection_id, topic)
    if row is None:
        row = EhrSubscription(connection_id=connection_id, topic=topic, hook_key=secrets.token_urlsafe(24),
                              secret_hash="", created_at=now)
    secret = secrets.token_urlsafe(32)
    row.kind, row.secret_hash, row.resource_types, row.status, row.error, row.updated_at = (
        kind, _hash(secret), list(resource_types), "requested", None, now)
    session.add(row)
    session.flush()
    return row, secret


def set_state(session: Session, clock: Callable[[], datetime], row: EhrSubscription, status: str,
              error: str | None = None, ehr_id: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown subscription status {status!r}")
    row.status, row.error, row.updated_at = status, error[:2000] if error else None, clock()
    if ehr_id is not None:
        row.ehr_id = ehr_id
    session.add(row)


def authenticate(session: Session, hook_key: str, authorization: str | None) -> EhrSubscription:
    """The subscription a hook call is for, if it carries that subscription's current secret.

    NotFoundError for an unknown key or one switched off; HookRefused for a missing or wrong secret (the
    comparison takes the same time whatever the secret)."""
    row = session.exec(select(EhrSubscription).where(EhrSubscription.hook_key == hook_key)).first()
    if row is None or row.status == "off":
        raise NotFoundError("no such subscription hook")
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(_hash(secret.strip()), row.secret_hash):
        raise HookRefused("the notification does not carry this subscription's secret")
    return row


def heard(session: Session, clock: Callable[[], datetime], row: EhrSubscription, kind: str,
          event_numbers: tuple[int, ...], events_since_start: int | None) -> bool:
    """Record a notification: a handshake makes the subscription active; events count and move the highest
    event number seen (a number that goes back means the EHR started counting again: it is taken as it is).

    Returns whether a heartbeat says events were sent that never reached us (its count is past the highest
    number we saw), so the caller can wake the streams as an event would have."""
    now = clock()
    missed = kind == "heartbeat" and events_since_start is not None and events_since_start > row.events_seen
    if kind == "handshake" or row.status == "requested":
        row.status, row.error = "active", None
    if kind == "event-notification":
        row.notifications += 1
    numbers = [*event_numbers, *([events_since_start] if events_since_start is not None else [])]
    if numbers:
        row.events_seen = max(numbers)
    row.last_heard_at = row.updated_at = now
    session.add(row)
    return missed
