"""The SMART launch path: iss check -> discovery -> authorize redirect -> callback -> token -> launch row.

Wires prm (launch rows, audit, roles) to connector (discovery, Authlib, id_token checks). Views stay
thin: they parse the request, call these two functions, and render or redirect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from connector import oauth
from connector.discovery import SmartConfiguration, openid_jwks_uri
from prm import audit, connections, launches, smart_scopes
from prm.audit import Actor
from prm.errors import EhrError, LaunchError, NotFoundError
from prm.models import Connection, Launch
from prm.permissions import role_for_user
from smart_app.context import AppContext
from workers.backend_auth import launch_signer

log = logging.getLogger(__name__)
_SYSTEM = Actor(kind="system", name="launch")


def begin_ehr_launch(ctx: AppContext, iss: str, ehr_launch_id: str) -> str:
    """Return the EHR's authorize URL for this launch; LaunchError (audited) when it cannot start."""
    with _audited_start(ctx):
        return _begin_ehr_launch(ctx, iss, ehr_launch_id)


def begin_standalone_launch(ctx: AppContext, connection_name: str) -> str:
    """A launch started from fhir-prm itself: the EHR asks the user to pick a patient (`launch/patient`)."""
    with _audited_start(ctx):
        return _begin_standalone_launch(ctx, connection_name)


@contextmanager
def _audited_start(ctx: AppContext) -> Iterator[None]:
    """A launch that cannot start leaves an audit record (attempts from unknown EHRs are worth seeing)."""
    try:
        yield
    except LaunchError as exc:
        with ctx.db.session() as session:
            audit.record(session, ctx.settings.clock, _SYSTEM, "launch.start", outcome="failure", detail=exc.reason)
        raise


def _begin_ehr_launch(ctx: AppContext, iss: str, ehr_launch_id: str) -> str:
    if not iss or not ehr_launch_id:
        raise LaunchError("missing_parameters", "The EHR opened fhir-prm without `iss` and `launch`.")
    if len(ehr_launch_id) > 500:
        raise LaunchError("missing_parameters", "The EHR's launch parameter is too long.")
    with ctx.db.session() as session:
        connection = connections.enabled_by_iss(session, iss)
    if connection is None:
        # No outbound request to an unknown iss: it would be an SSRF and phishing vector.
        raise LaunchError("unknown_iss", "This EHR is not connected to fhir-prm (or its connection is disabled).")
    return _authorize(ctx, connection, "ehr", ehr_launch_id)


def _begin_standalone_launch(ctx: AppContext, connection_name: str) -> str:
    with ctx.db.session() as session:
        try:
            connection = connections.by_name(session, connection_name)
        except NotFoundError:
            connection = None
    if connection is None or not connection.enabled:
        raise LaunchError("unknown_iss", "No enabled connection has that name.")
    return _authorize(ctx, connection, "standalone", None)


def _authorize(ctx: AppContext, connection: Connection, kind: str, ehr_launch_id: str | None) -> str:
    try:
        config = ctx.discovery.get(ctx.worker.http, connection.iss, ctx.settings.http_timeout_s)
    except EhrError as exc:
        raise LaunchError("ehr_unreachable", f"The EHR's sign-in service could not be found: {exc}") from exc
    with ctx.db.session() as session:
        pending = launches.begin(session, ctx.settings.clock, ctx.box, connection, kind,
                                 config.authorization_endpoint, config.token_endpoint)
    scope = connection.scopes if kind == "ehr" else oauth.standalone_scopes(connection.scopes)
    if _speaks_v1_only(config):
        scope = smart_scopes.to_v1(scope)
    return oauth.authorization_url(
        authorize_endpoint=config.authorization_endpoint, client_id=connection.client_id,
        redirect_uri=ctx.settings.redirect_uri, scope=scope, state=pending.state,
        code_verifier=pending.code_verifier, aud=connection.iss, launch=ehr_launch_id,
        nonce=pending.nonce if "openid" in scope.split() else None,
    )


def _verified_id_token(ctx: AppContext, connection: Connection, row: Launch, id_token: str) -> dict[str, Any]:
    """Check the id_token against the EHR's keys: from SMART discovery, else OpenID discovery on the token
    endpoint's own origin (an EHR found through its CapabilityStatement names no jwks_uri)."""
    timeout = ctx.settings.http_timeout_s
    config = ctx.discovery.get(ctx.worker.http, connection.iss, timeout)
    issuer, jwks_uri = config.issuer, config.jwks_uri
    if not jwks_uri:
        issuer = oauth.claimed_issuer(id_token)
        if urlsplit(issuer).netloc != urlsplit(row.token_endpoint or "").netloc:
            raise LaunchError("id_token_invalid", "The id_token's issuer is not the EHR that issued the token.")
        try:
            jwks_uri = openid_jwks_uri(ctx.worker.http, issuer, timeout)
        except EhrError as exc:
            raise LaunchError("id_token_invalid", f"The EHR's id_token keys cannot be found: {exc}") from exc
    return oauth.verify_id_token(
        id_token, jwks=oauth.fetch_jwks(ctx.worker.http, jwks_uri, timeout), issuer=issuer or connection.iss,
        client_id=connection.client_id, nonce=row.nonce, now=int(time.time()),
    )


def _speaks_v1_only(config: SmartConfiguration) -> bool:
    """SMART v1 scopes for an EHR that advertises permission-v1 but not permission-v2 (2.2 §3.0.1)."""
    return "permission-v1" in config.capabilities and "permission-v2" not in config.capabilities


def complete_launch(ctx: AppContext, state: str | None, code: str | None, error: str | None) -> Launch:
    """Consume the pending launch named by `state`, exchange the code, and activate the launch. A refused
    answer (no state, an unknown, used or expired one: a replay or a forgery) is audited too."""
    try:
        with ctx.db.session() as session:
            row = launches.take_pending(session, ctx.settings.clock, state)
    except LaunchError as exc:
        with ctx.db.session() as session:
            audit.record(session, ctx.settings.clock, _SYSTEM, "launch.complete", outcome="failure",
                         detail=exc.reason)
        raise
    try:
        return _finish(ctx, row, code, error)
    except LaunchError as exc:
        with ctx.db.session() as session:
            fresh = session.get(Launch, row.id)
            if fresh is not None:
                launches.fail(session, fresh, exc.reason)
            audit.record(session, ctx.settings.clock, _SYSTEM, "launch.complete", outcome="failure",
                         detail=exc.reason, connection_id=row.connection_id)
        raise


def _finish(ctx: AppContext, row: Launch, code: str | None, error: str | None) -> Launch:
    if error:
        reason = "access_denied" if error == "access_denied" else "authorization_error"
        raise LaunchError(reason, f"The EHR did not authorise fhir-prm ({error[:60]}).")
    if not code:
        raise LaunchError("missing_code", "The EHR answered without an authorization code.")
    with ctx.db.session() as session:
        connection = connections.get(session, row.connection_id)
        signer = (launch_signer(session, ctx.box, connection, row.token_endpoint)
                  if connection is not None and row.token_endpoint else None)
    if connection is None or not connection.enabled or row.token_endpoint is None:
        raise LaunchError("unknown_iss", "The connection for this launch is gone or disabled.")
    token = oauth.exchange_code(
        token_endpoint=row.token_endpoint, client_id=connection.client_id,
        client_secret=ctx.box.open(connection.client_secret_enc), redirect_uri=ctx.settings.redirect_uri,
        code=code, code_verifier=launches.verifier_of(ctx.box, row), timeout=ctx.settings.http_timeout_s,
        signer=signer,
    )
    fhir_user = None
    if token.get("id_token"):
        claims = _verified_id_token(ctx, connection, row, str(token["id_token"]))
        fhir_user = claims.get("fhirUser") or claims.get("profile")
    if not token.get("patient"):
        raise LaunchError("no_patient", "The EHR did not say which patient is open.")
    role = role_for_user(fhir_user, connection.role_mapping, connection.default_role)
    with ctx.db.session() as session:
        active = launches.complete(session, ctx.settings.clock, ctx.box, row, token, fhir_user, role.value)
        actor = Actor(kind="user", name=fhir_user or "unknown", role=role.value,
                      connection_id=connection.id, launch_id=row.id)
        audit.record(session, ctx.settings.clock, actor, "launch.complete", patient_id=active.patient_id,
                     entity=f"Patient/{active.patient_id}")
    log.info("launch %s active for connection %s", row.id, connection.id)
    return active
