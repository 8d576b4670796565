"""The launch's access token for EHR calls: refreshed before expiry or after a 401, single-flight.

Concurrent requests of one launch cause one refresh: the first to claim the launch's refresh slot
refreshes, the others wait for its result. A request whose token was rejected but finds a newer one
stored uses that one instead of refreshing again (a second refresh with a rotated refresh token could
look like token theft to the EHR and revoke the whole family).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from connector import oauth
from prm import audit, connections, launches
from prm.audit import Actor
from prm.errors import AuthExpiredError, LaunchError
from prm.models import Launch
from smart_app.context import AppContext
from workers.backend_auth import launch_signer

T = TypeVar("T")
HOLD_S = 15.0  # how long a refresher may hold the slot
WAIT_S = 12.0


def _reload(ctx: AppContext, launch_id: int) -> Launch:
    with ctx.db.session() as session:
        row = session.get(Launch, launch_id)
    if row is None or row.status != "active":
        raise LaunchError("session_expired", "This launch has ended.")
    return row


def _refresh(ctx: AppContext, row: Launch) -> str:
    """Refresh now (we hold the slot); end the launch when the EHR refuses."""
    refresh_token = ctx.box.open(row.refresh_token_enc)
    with ctx.db.session() as session:
        connection = connections.get(session, row.connection_id)
    if connection is None or row.token_endpoint is None:
        raise LaunchError("session_expired", "The connection of this launch is gone.")
    try:
        with ctx.db.session() as session:
            signer = launch_signer(session, ctx.box, connection, row.token_endpoint)
        token = oauth.refresh(token_endpoint=row.token_endpoint, client_id=connection.client_id,
                              client_secret=ctx.box.open(connection.client_secret_enc),
                              refresh_token=refresh_token or "", timeout=ctx.settings.http_timeout_s, signer=signer)
    except LaunchError as exc:
        with ctx.db.session() as session:
            if exc.reason == "refresh_refused":
                launches.end_active(session, ctx.settings.clock, row.id or 0, "refresh_refused")
                audit.record(session, ctx.settings.clock, Actor("user", row.fhir_user or "unknown", row.role,
                             row.connection_id, row.id), "launch.refresh", patient_id=row.patient_id,
                             outcome="failure", detail="refresh_refused")
            else:
                launches.release_refresh(session, row.id or 0)
        raise
    with ctx.db.session() as session:
        fresh = session.get(Launch, row.id)
        if fresh is None or fresh.status != "active":  # ended meanwhile (/end, the guard): its tokens stay wiped
            raise LaunchError("session_expired", "This launch has ended.")
        launches.store_refreshed(session, ctx.settings.clock, ctx.box, fresh, token)
    return str(token["access_token"])


def _refreshed_token(ctx: AppContext, launch_id: int, rejected: str | None) -> str:
    """A token newer than `rejected`: refresh it ourselves, or wait for whoever is refreshing it."""
    deadline = time.monotonic() + WAIT_S
    while True:
        row, newer = _newer_token(ctx, launch_id, rejected)
        if newer:
            return newer
        if not row.refresh_token_enc:
            raise LaunchError("session_expired", "The EHR gave no refresh token: open fhir-prm again.")
        with ctx.db.session() as session:
            won = launches.claim_refresh(session, launch_id, ctx.settings.clock(), HOLD_S)
        if won:
            row, newer = _newer_token(ctx, launch_id, rejected)  # someone may have finished just before us
            if newer:
                with ctx.db.session() as session:
                    launches.release_refresh(session, launch_id)
                return newer
            return _refresh(ctx, row)
        if time.monotonic() > deadline:  # the EHR is slow, or a refresher died holding the slot: not an end
            raise LaunchError("refresh_busy", "The EHR took too long to renew the session.")
        time.sleep(0.1)


def _newer_token(ctx: AppContext, launch_id: int, rejected: str | None) -> tuple[Launch, str | None]:
    row = _reload(ctx, launch_id)
    current = ctx.box.open(row.access_token_enc)
    return row, (current if current and current != rejected and not _due(ctx, row) else None)


def _due(ctx: AppContext, row: Launch) -> bool:
    return row.expires_at is not None and row.expires_at - launches.refresh_margin(row) <= ctx.settings.clock()


def access_token(ctx: AppContext, row: Launch) -> str:
    """The launch's access token, refreshed first if it is about to expire."""
    token = ctx.box.open(row.access_token_enc)
    if token and not _due(ctx, row):
        return token
    return _refreshed_token(ctx, row.id or 0, rejected=token)


def call_with_token(ctx: AppContext, row: Launch, call: Callable[[str], T]) -> T:
    """Run `call(token)`; after a 401, refresh once (single-flight) and run it again."""
    token = access_token(ctx, row)
    try:
        return call(token)
    except AuthExpiredError:
        return call(_refreshed_token(ctx, row.id or 0, rejected=token))
