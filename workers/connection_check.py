"""`prm connection check` wired: load a connection with its secrets, probe the EHR, store and audit the profile."""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session

from connector import capability
from connector.backend import BackendCredentials
from prm import audit, connections, keys
from prm.crypto import SecretBox
from prm.errors import NotFoundError
from prm.models import Connection
from workers.runtime import WorkerContext

log = logging.getLogger(__name__)
CHECKER = audit.Actor(kind="system", name="connection-check")


def _backend(session: Session, box: SecretBox, row: Connection) -> BackendCredentials | None:
    if not row.backend_auth or not row.backend_client_id or row.id is None:
        return None
    if row.backend_auth == "private_key_jwt":
        key = keys.active_key(session, row.id)
        return BackendCredentials(
            client_id=row.backend_client_id, token_endpoint="", auth=row.backend_auth,
            alg=key.alg if key else row.signing_alg, kid=key.kid if key else None,
            private_key_pem=keys.private_pem(box, key) if key else None)
    return BackendCredentials(client_id=row.backend_client_id, token_endpoint="", auth=row.backend_auth,
                              client_secret=box.open(row.backend_client_secret_enc))


def target_for(session: Session, box: SecretBox, row: Connection) -> capability.CheckTarget:
    """The connector's plain-value view of a connection (secrets decrypted only here, never logged)."""
    return capability.CheckTarget(
        iss=row.iss, client_id=row.client_id, client_auth=row.client_auth, user_scopes=row.scopes,
        signing_alg=row.signing_alg, backend=_backend(session, box, row), backend_scopes=row.backend_scopes)


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
        audit.record(session, ctx.settings.clock, actor or CHECKER, "connection.check", connection_id=connection_id,
                     entity=f"connection/{row.name}", outcome="success" if profile["ok"] else "failure",
                     detail=f"{len(profile['errors'])} errors, {len(profile['warnings'])} warnings")
    return profile
