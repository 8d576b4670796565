"""`prm connection check` wired: load a connection with its secrets, probe the EHR, store and audit the profile,
bring the check of our Subscriptions at that EHR forward, resume the streams the sync paused for a type the
EHR now offers, and have each stream ask again whether a search may name several patients."""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session

from connector import capability
from prm import audit, connections, jobs, streams
from prm.crypto import SecretBox
from prm.errors import NotFoundError
from prm.models import Connection
from workers import subscriptions
from workers.backend_auth import backend_credentials
from workers.runtime import WorkerContext
from workers.stream_offers import offered
from workers.sync import SYNC_STREAM

log = logging.getLogger(__name__)
CHECKER = audit.Actor(kind="system", name="connection-check")


def target_for(session: Session, box: SecretBox, row: Connection) -> capability.CheckTarget:
    """The connector's plain-value view of a connection (secrets decrypted only here, never logged)."""
    return capability.CheckTarget(
        iss=row.iss, client_id=row.client_id, client_auth=row.client_auth, user_scopes=row.scopes,
        signing_alg=row.signing_alg, backend=backend_credentials(session, box, row), backend_scopes=row.backend_scopes,
        export_group=row.export_group)


def check_connection(ctx: WorkerContext, connection_id: int, actor: audit.Actor | None = None) -> dict[str, Any]:
    """Probe the connection's EHR now; store the profile and one `connection.check` audit record in one commit."""
    with ctx.db.session() as session:
        row = connections.get(session, connection_id)
        if row is None:
            raise NotFoundError(f"no connection with id {connection_id}")
        target = target_for(session, ctx.box, row)
    profile = capability.check(ctx.http, target, ctx.settings.http_timeout_s, ctx.settings.clock())
    log.info("connection %s check: %s (%d errors, %d warnings)", connection_id, "ok" if profile["ok"] else "failing",
             len(profile["errors"]), len(profile["warnings"]))
    with ctx.db.session() as session:
        row = connections.get(session, connection_id)
        if row is None:
            raise NotFoundError(f"connection {connection_id} was removed during the check")
        connections.record_capability(session, ctx.settings.clock, row, profile)
        streams.forget_patient_lists(session, connection_id)  # the EHR may have changed: each stream asks again
        offered_now = [t for t in streams.SYNC_TYPES if offered(row, t)]  # seen offered, not merely unknown
        for stream in streams.resume_offered(session, ctx.settings.clock, actor or CHECKER, connection_id, offered_now):
            jobs.wake(session, SYNC_STREAM, stream.id or 0, ctx.settings.clock())  # paused for a refusal: offered now
        if row.enabled and row.backend_client_id and subscriptions.usable(row):
            # IT checks a connection after a change at the EHR (an upgrade, a restore, other topics): our
            # Subscriptions there are checked at the sweeper's next pass, not at the end of the usual interval.
            jobs.wake(session, subscriptions.SUBSCRIPTIONS_ENSURE, connection_id, ctx.settings.clock())
        audit.record(session, ctx.settings.clock, actor or CHECKER, "connection.check", connection_id=connection_id,
                     entity=f"Connection/{row.name}", outcome="success" if profile["ok"] else "failure",
                     detail=f"{len(profile['errors'])} errors, {len(profile['warnings'])} warnings")
    return profile
