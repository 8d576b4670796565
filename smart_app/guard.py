"""The permission decorators: resolve who is acting (launch handle or admin session) and check the table.

Every route that touches patient data uses `requires(Action.X)`, every admin page
`requires_admin(Action.X)`; the check, the 403 page and the audit record of a denial live here and
nowhere else. Admin POSTs also have their CSRF token checked here, bound to the admin session and to
the endpoint the form posts to, so no admin form can forget it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import abort, g, jsonify, redirect, render_template, request, url_for

from prm import admin_sessions, audit, connections, launches, smart_scopes
from prm.admin_sessions import AdminPrincipal, SessionPolicy
from prm.audit import Actor
from prm.errors import LaunchError, ValidationError
from prm.models import Launch
from prm.permissions import Action, allows
from smart_app import csrf, launch_tokens
from smart_app.context import prm

F = TypeVar("F", bound=Callable[..., Any])
ADMIN_COOKIE = "prm_admin"
# What each action needs the EHR to have granted the launch, besides the role: the user's own rights at the EHR
# bound what fhir-prm shows them and writes for them (its backend client writes with system scopes of its own).
GRANT_NEEDED: dict[Action, tuple[tuple[str, str], ...]] = {
    Action.VIEW_PATIENT: (("Patient", "r"),),
    Action.OPEN_CARE_TICKET: (("Patient", "r"), ("Task", "c")),
    Action.RECORD_OUTREACH: (("Patient", "r"), ("Communication", "c")),
}


def granted_scope(launch: Launch) -> str:
    """The scopes the EHR granted this launch (its token response's `scope`; where the EHR left it out, OAuth
    says it granted what was asked: the connection's scopes)."""
    if launch.scope is not None:
        return launch.scope
    with prm().db.session() as session:
        connection = connections.get(session, launch.connection_id)
    return connection.scopes if connection is not None else ""


def ungranted(granted: str, action: Action) -> list[str]:
    """The scopes `action` needs that the grant (`granted_scope`) lacks, as `patient/Type.p`."""
    return [f"patient/{rtype}.{perm}" for rtype, perm in GRANT_NEEDED.get(action, ())
            if not smart_scopes.user_allows(granted, rtype, perm)]


def actor_for(launch: Launch) -> Actor:
    return Actor(kind="user", name=launch.fhir_user or "unknown", role=launch.role,
                 connection_id=launch.connection_id, launch_id=launch.id)


def relaunch_page() -> tuple[str, int]:
    """What a sidebar shows once its launch can no longer reach the EHR: open it again from the chart."""
    return render_template("problem.html", title="Your session with the EHR has ended",
                           advice="Open fhir-prm again from the patient's chart.", reason="session_expired"), 401


def _run_out(launch: Launch, renew: bool = True) -> bool:
    """Whether an active launch has run out, and is ended now: its connection was switched off, it began more
    than PRM_LAUNCH_MAX_HOURS ago, or the EHR's token has expired and the EHR will not renew it.

    Why here: the sidebar and its API serve fhir-prm's own copy without calling the EHR, so nothing else would
    notice that the EHR's grant is over: a handle would work for ever. An expired token is renewed on the spot
    (single-flight, `launch_tokens`), so the EHR says whether the user may still see this patient; LaunchError
    when the EHR cannot be reached to say, or is slow to. Without `renew` (ending one's own session) the token
    is not looked at: ending must not need the EHR."""
    ctx = prm()
    now = ctx.settings.clock()
    with ctx.db.session() as session:
        connection = connections.get(session, launch.connection_id)
    began = launch.completed_at or launch.created_at
    if connection is None or not connection.enabled:
        reason = "connection_disabled"
    elif began is not None and now - began >= timedelta(hours=ctx.settings.launch_max_hours):
        reason = "max_age"
    elif renew and launch.expires_at is not None and launch.expires_at <= now:
        try:
            launch_tokens.access_token(ctx, launch)
            return False
        except LaunchError as exc:
            if exc.reason not in ("session_expired", "refresh_refused"):
                raise  # the EHR could not be asked (unreachable): not the end of the launch
            reason = "token_expired"
    else:
        return False
    with ctx.db.session() as session:
        if launches.end_active(session, ctx.settings.clock, launch.id or 0, reason):
            audit.record(session, ctx.settings.clock, actor_for(launch), "launch.end", patient_id=launch.patient_id,
                         detail=reason)
    return True


def requires(action: Action, *, api: bool = False) -> Callable[[F], F]:
    """Load the active launch named by the URL's `handle` and demand `action` of its role.

    With `api`, refusals are JSON (`{"error": ...}`) for the sidebar's scripts instead of pages.
    """

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = prm()
            handle = kwargs.get("handle", "")
            with ctx.db.session() as session:
                launch = launches.by_handle(session, handle)
                if launch is None:
                    abort(404)
            try:
                over = launch.status != "active" or _run_out(launch, renew=action is not Action.END_OWN_SESSION)
            except LaunchError as exc:  # the token could not be renewed just now: not the end of the launch
                if api:
                    return jsonify(error=exc.reason, message="Your session with the EHR cannot be renewed right now; "
                                                             "try again."), 503
                return render_template("problem.html", title="Your session with the EHR cannot be renewed right now",
                                       advice="Try again in a moment. If it persists, tell your IT team.",
                                       reason=exc.reason), 503
            if over:
                if api:
                    return jsonify(error="session_ended", message="Open fhir-prm again from the chart."), 401
                return relaunch_page()
            role_may = allows(launch.role or "", action)
            # the role first; then what the EHR granted
            missing = ungranted(granted_scope(launch), action) if role_may else []
            denied = not role_may or bool(missing)
            if denied:
                with ctx.db.session() as session:
                    audit.record(session, ctx.settings.clock, actor_for(launch), action.value,
                                 patient_id=launch.patient_id, outcome="denied",
                                 detail=f"not granted by the EHR: {' '.join(missing)}" if missing else
                                 "role lacks action")
            g.launch = launch
            g.actor = actor_for(launch)
            if missing and api:
                return jsonify(error="forbidden", message=f"the EHR did not grant {' '.join(missing)}"), 403
            if denied and api:
                return jsonify(error="forbidden", message=f"role {launch.role!r} may not {action.value!r}"), 403
            if missing:
                return render_template("denied.html", action=action.value, role=launch.role, handle=handle,
                                       missing=missing), 403
            if denied:
                return render_template("denied.html", action=action.value, role=launch.role, handle=handle), 403
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def admin_csrf_token(principal: AdminPrincipal, endpoint: str) -> str:
    """The token a form posting to `endpoint` carries (field `csrf_token`)."""
    return csrf.issue(prm().settings.secret_key, principal.token_hash, endpoint)


def _sign_in_redirect() -> Any:
    target = request.full_path if request.method == "GET" else request.path
    return redirect(url_for("admin.sign_in", next=target.rstrip("?")), code=303)


def requires_admin(action: Action) -> Callable[[F], F]:
    """Demand a live admin session (else the sign-in page), a valid CSRF token on POST (else 400), then `action`."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = prm()
            policy, token = SessionPolicy.from_settings(ctx.settings), request.cookies.get(ADMIN_COOKIE)
            with ctx.db.session() as session:
                principal = admin_sessions.resolve(session, ctx.settings.clock, policy, token)
            if principal is None:
                return _sign_in_redirect()
            g.admin = principal
            g.actor = principal.actor
            if request.method == "POST":
                try:
                    csrf.check(ctx.settings.secret_key, request.form.get("csrf_token"), principal.token_hash,
                               request.endpoint or "")
                except ValidationError as exc:
                    return render_template("admin_problem.html", title="The form could not be accepted",
                                           advice=str(exc)), 400
            if not allows(principal.role, action):
                with ctx.db.session() as session:
                    audit.record(session, ctx.settings.clock, principal.actor, action.value, outcome="denied",
                                 detail="role lacks action")
                return render_template("admin_denied.html", action=action.value, role=principal.role), 403
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
