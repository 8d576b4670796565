"""Admin pages under /admin: IT signs in with a local account, manages EHR connections and watches write-back.

Thin views over `prm.admin_sessions`, `prm.connections` (the same service as `prm connection add`) and
`prm.outbox` (the same as `prm outbox list --attention|retry|discard`); `guard.requires_admin` does the
session, CSRF and permission checks for every route but sign-in.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from flask import Blueprint, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from prm import admin_sessions, audit, connections, ehr_subscriptions, keys, outbox, snapshots, streams
from prm.errors import NotFoundError, SignInRefused, ValidationError
from prm.models import Connection
from prm.permissions import Action, allows
from prm.snapshot_erase import erase_snapshot
from smart_app import admin_forms, admin_present, csrf
from smart_app.context import prm
from smart_app.guard import ADMIN_COOKIE, admin_csrf_token, requires_admin
from workers.connection_check import check_connection
from workers.sync import apply_intervals, wake_streams
from workers.writeback import wake

bp = Blueprint("admin", __name__, url_prefix="/admin")
PRE_COOKIE = "prm_admin_pre"  # binds the sign-in form's CSRF token before any session exists
ROLES = ("front_desk", "clinician", "practice_manager", "it_admin")
FORM_CHOICES = {"client_auths": connections.CLIENT_AUTH_KINDS, "backend_auths": ("", *connections.BACKEND_AUTH_KINDS),
                "signing_algs": connections.SIGNING_ALGS, "roles": ROLES}
ATTENTION_LIMIT = 200  # outbox rows listed for IT, newest first


def _cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/admin", secure=True, httponly=True, samesite="Strict")


@bp.context_processor
def _helpers() -> dict[str, Any]:
    principal = getattr(g, "admin", None)

    def csrf_for(endpoint: str) -> str:
        return admin_csrf_token(principal, endpoint) if principal is not None else ""

    can_manage = principal is not None and allows(principal.role, Action.MANAGE_CONNECTIONS)
    return {"admin": principal, "csrf_for": csrf_for, "can_manage": can_manage}


@bp.errorhandler(NotFoundError)
def _not_found(exc: NotFoundError) -> tuple[str, int]:
    return render_template("admin_problem.html", title="Not found", advice=str(exc)), 404


@bp.errorhandler(ValidationError)
def _refused(exc: ValidationError) -> tuple[str, int]:
    """Input no form could have sent (a form with errors shows them itself): nothing was changed."""
    return render_template("admin_problem.html", title="Not changed", advice=str(exc)), 400


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/admin/") and "//" not in target and "\\" not in target:
        return target
    return url_for("admin.connection_list")


def _sign_in_page(nonce: str, error: str | None, username: str, status: int) -> Response:
    token = csrf.issue(prm().settings.secret_key, hashlib.sha256(nonce.encode()).hexdigest(), "admin.sign_in")
    page = render_template("admin_sign_in.html", csrf_token=token, error=error, username=username,
                           next=request.values.get("next", ""), signed_out=request.args.get("signed_out") == "1")
    response = Response(page, status=status, mimetype="text/html")
    _cookie(response, PRE_COOKIE, nonce, max_age=3600)
    return response


@bp.get("/sign-in")
def sign_in() -> Response:
    return _sign_in_page(request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32), None, "", 200)


@bp.post("/sign-in")
def sign_in_post() -> Response | tuple[str, int]:
    ctx = prm()
    nonce = request.cookies.get(PRE_COOKIE, "")
    try:
        if not nonce:
            raise ValidationError("the sign-in form has expired; reload the page and try again")
        csrf.check(ctx.settings.secret_key, request.form.get("csrf_token"), hashlib.sha256(nonce.encode()).hexdigest(),
                   "admin.sign_in")
    except ValidationError as exc:
        return render_template("admin_problem.html", title="The form could not be accepted", advice=str(exc)), 400
    username = request.form.get("username", "")
    refused: SignInRefused | None = None
    with ctx.db.session() as session:  # commits the audit record of a failure too
        try:
            token, _principal = admin_sessions.sign_in(
                session, ctx.settings.clock, username, request.form.get("password", ""),
                source=request.remote_addr or "unknown", previous_token=request.cookies.get(ADMIN_COOKIE))
        except SignInRefused as exc:
            refused = exc
    if refused is not None:
        status = 429 if refused.reason == "throttled" else 401
        return _sign_in_page(secrets.token_urlsafe(32), str(refused), username, status)
    response = redirect(_safe_next(request.form.get("next")), code=303)
    _cookie(response, ADMIN_COOKIE, token)
    response.delete_cookie(PRE_COOKIE, path="/admin", secure=True, httponly=True, samesite="Strict")
    return response


@bp.post("/sign-out")
@requires_admin(Action.END_OWN_SESSION)
def sign_out() -> Response:
    ctx = prm()
    with ctx.db.session() as session:
        admin_sessions.end(session, ctx.settings.clock, request.cookies.get(ADMIN_COOKIE))
    response = redirect(url_for("admin.sign_in", signed_out="1"), code=303)
    response.delete_cookie(ADMIN_COOKIE, path="/admin", secure=True, httponly=True, samesite="Strict")
    return response


@bp.get("/")
@requires_admin(Action.VIEW_CONNECTIONS)
def home() -> Response:
    return redirect(url_for("admin.connection_list"), code=303)


@bp.get("/connections")
@requires_admin(Action.VIEW_CONNECTIONS)
def connection_list() -> str:
    with prm().db.session() as session:
        rows = connections.list_all(session)
        grouped = streams.by_connection(session)
        held = streams.open_quarantine_counts(session)
    now = prm().settings.clock()
    return render_template("admin_connections.html", connections=rows,
                           capability={row.name: admin_present.capability(row.capability_profile) for row in rows},
                           sync={row.name: admin_present.sync_summary(grouped.get(row.id or 0, []), now, held,
                                                                      paused=not row.enabled)
                                 for row in rows})


@bp.get("/connections/<name>")
@requires_admin(Action.VIEW_CONNECTIONS)
def connection_detail(name: str) -> str:
    with prm().db.session() as session:
        row = connections.by_name(session, name)
        sync_streams = streams.of_connection(session, row.id or 0)
        held = {s.resource_type: snapshots.held(session, row.id or 0, s.resource_type) for s in sync_streams}
        quarantined = streams.quarantined(session, row.id or 0)
        open_counts = streams.open_quarantine_counts(session, row.id or 0)
        subscribed = ehr_subscriptions.of_connection(session, row.id or 0)
    named = request.args.get("stream")  # the one stream a "Read again" asked
    return render_template("admin_connection.html", c=row, capability=admin_present.capability(row.capability_profile),
                           secret_state=admin_present.secret_state, sync_streams=sync_streams, held=held,
                           quarantined=quarantined,
                           open_quarantined={t: n for (_, t), n in open_counts.items()},
                           strategies=streams.STRATEGIES, subscriptions=subscribed,
                           subscription_support=(row.capability_profile or {}).get("subscriptions") or {},
                           patient_lists=[(s.resource_type, s.patient_lists.get("detail")) for s in sync_streams
                                          if s.patient_lists],
                           subscription_scopes=connections.SUBSCRIPTION_SCOPES, lag=admin_present.lag,
                           health=admin_present.health_lines(row.health_detail or {}),
                           woken=request.args.get("woken", type=int),
                           reloading=request.args.get("reloading", type=int), reload_state=streams.reload_state,
                           reloading_stream=named if named in streams.SYNC_TYPES else None,
                           interval_choices=admin_present.interval_choices, interval_words=admin_present.interval_words,
                           erased=request.args.get("erased", type=int), now=prm().settings.clock())


def _form_page(values: dict[str, Any], error: str | None, name: str | None, status: int = 200) -> tuple[str, int]:
    return render_template("admin_connection_form.html", values=values, error=error, name=name,
                           **FORM_CHOICES), status


@bp.get("/connections/new")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_new() -> tuple[str, int]:
    return _form_page(admin_forms.values_for_new(), None, None)


@bp.post("/connections/new")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_create() -> Response | tuple[str, int]:
    ctx = prm()
    try:
        with ctx.db.session() as session:  # a ValidationError rolls everything back: nothing is saved
            row = connections.create(session, ctx.settings.clock, ctx.box, admin_forms.spec_from_form(request.form))
            keys.ensure_for(session, ctx.settings.clock, ctx.box, row)
            audit.record(session, ctx.settings.clock, g.actor, "connection.add", connection_id=row.id,
                         entity=f"Connection/{row.name}")
    except ValidationError as exc:
        return _form_page(admin_forms.values_from_form(request.form), str(exc), None, 400)
    return redirect(url_for("admin.connection_detail", name=row.name), code=303)


@bp.get("/connections/<name>/edit")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_edit(name: str) -> tuple[str, int]:
    with prm().db.session() as session:
        row = connections.by_name(session, name)
    return _form_page(admin_forms.values_from_row(row), None, name)


@bp.post("/connections/<name>/edit")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_update(name: str) -> Response | tuple[str, int]:
    ctx = prm()
    try:
        with ctx.db.session() as session:
            row = connections.by_name(session, name)
            before = admin_forms.snapshot(row)
            spec = admin_forms.spec_from_form(request.form, name=name, enabled=row.enabled)
            row = connections.upsert(session, ctx.settings.clock, ctx.box, spec)
            keys.ensure_for(session, ctx.settings.clock, ctx.box, row)
            fields = admin_forms.changed(before, admin_forms.snapshot(row))
            audit.record(session, ctx.settings.clock, g.actor, "connection.update", connection_id=row.id,
                         entity=f"Connection/{name}", detail=f"changed: {', '.join(fields) or 'nothing'}")
    except ValidationError as exc:
        values = {**admin_forms.values_from_form(request.form), "name": name}
        return _form_page(values, str(exc), name, 400)
    return redirect(url_for("admin.connection_detail", name=name), code=303)


def _set_enabled(name: str, enabled: bool) -> Response:
    """Enabled again, the connection's streams run at once (a first load, after an erasure), not an interval on."""
    ctx = prm()
    with ctx.db.session() as session:
        row = connections.set_enabled(session, ctx.settings.clock, g.actor, name, enabled)
        if enabled:
            wake_streams(ctx.worker, session, row.id or 0, list(streams.SYNC_TYPES))
    return redirect(url_for("admin.connection_detail", name=name), code=303)


@bp.post("/connections/<name>/enable")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_enable(name: str) -> Response:
    return _set_enabled(name, True)


@bp.post("/connections/<name>/disable")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_disable(name: str) -> Response:
    return _set_enabled(name, False)


@bp.post("/connections/<name>/erase")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_erase(name: str) -> Response:
    """IT erases a disabled connection's synced copy (`prm.snapshot_erase`), having typed its name: one click
    must not destroy a clinic's data. Audited with the counts; refused while a worker syncs one of its streams."""
    if request.form.get("confirm", "").strip() != name:
        raise ValidationError(f"type the connection's name, {name}, to erase what was synced from it")
    ctx = prm()
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        erased = erase_snapshot(session, ctx.settings.clock, g.actor, row.id or 0)
    return redirect(url_for("admin.connection_detail", name=name, erased=erased.total) + "#erase", code=303)


@bp.post("/connections/<name>/check")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_check(name: str) -> Response:
    """IT's "Check now": the probes of `prm connection check` while IT waits (well under a second for an EHR
    that answers; one that is silent costs two HTTP timeouts, discovery and its fallback), the profile stored
    and audited as this admin's, then the page with what it found."""
    ctx = prm()
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
    check_connection(ctx.worker, row.id or 0, g.actor)
    return redirect(url_for("admin.connection_detail", name=name) + "#capability", code=303)


@bp.post("/connections/<name>/sync")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_sync(name: str) -> Response:
    """IT's "Sync now" (after mending a credential, or when a stream shows an error): every stream's next run is
    due at once, as an EHR notification would make it; a stream running now runs once more when it ends."""
    ctx = prm()
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        woken = wake_streams(ctx.worker, session, row.id or 0, list(streams.SYNC_TYPES))
        audit.record(session, ctx.settings.clock, g.actor, "sync.wake", connection_id=row.id,
                     entity=f"Connection/{name}", count=woken)
    return redirect(url_for("admin.connection_detail", name=name, woken=woken) + "#sync", code=303)


@bp.post("/connections/<name>/reload")
@requires_admin(Action.MANAGE_CONNECTIONS)
def connection_reload(name: str) -> Response:
    """IT's "Read all again" (after a restore or a repair at the EHR): every stream past its first load reads
    every resource of its type again, starting now; what changes meanwhile is read as well."""
    return _ask_reload(name, None)


@bp.post("/connections/<name>/streams/<resource_type>/reload")
@requires_admin(Action.MANAGE_CONNECTIONS)
def stream_reload(name: str, resource_type: str) -> Response:
    """IT's "Read again" for one stream: a repair at the EHR that touched one type, or one type's rows kept
    before the snapshot held a field, need not read the whole population again."""
    return _ask_reload(name, [resource_type])


def _ask_reload(name: str, resource_types: list[str] | None) -> Response:
    """Ask the streams for a reload (an unknown type is refused, nothing asked) and wake them now."""
    ctx = prm()
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        asked = streams.ask_reload(session, ctx.settings.clock, g.actor, row.id or 0, resource_types)
        wake_streams(ctx.worker, session, row.id or 0, [s.resource_type for s in asked])
    named = resource_types[0] if resource_types else None  # url_for leaves a None out of the query
    return redirect(url_for("admin.connection_detail", name=name, reloading=len(asked), stream=named) + "#sync",
                    code=303)


@bp.post("/connections/<name>/streams/<resource_type>/strategy")
@requires_admin(Action.MANAGE_CONNECTIONS)
def stream_strategy(name: str, resource_type: str) -> Response:
    """IT's override of how one stream syncs (streams.STRATEGIES), audited with the change."""
    ctx = prm()
    strategy = request.form.get("strategy", "")
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        streams.set_strategy(session, ctx.settings.clock, g.actor, row.id or 0, strategy, [resource_type])
    return redirect(url_for("admin.connection_detail", name=name) + "#sync-streams", code=303)


@bp.post("/connections/<name>/streams/<resource_type>/interval")
@requires_admin(Action.MANAGE_CONNECTIONS)
def stream_interval(name: str, resource_type: str) -> Response:
    """How often one stream runs once caught up, audited with the change; a shorter interval brings its pending
    run forward at once."""
    ctx = prm()
    interval_s = admin_forms.whole_number(request.form.get("interval_s", ""), "the interval")
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        changed = streams.set_interval(session, ctx.settings.clock, g.actor, row.id or 0, interval_s, [resource_type])
        apply_intervals(ctx.worker, session, changed)
    return redirect(url_for("admin.connection_detail", name=name) + "#sync-streams", code=303)


@bp.post("/connections/<name>/streams/<resource_type>/pause")
@requires_admin(Action.MANAGE_CONNECTIONS)
def stream_pause(name: str, resource_type: str) -> Response:
    """Stop one stream asking the EHR (it keeps what it holds), audited."""
    return _set_stream_enabled(name, resource_type, enabled=False)


@bp.post("/connections/<name>/streams/<resource_type>/resume")
@requires_admin(Action.MANAGE_CONNECTIONS)
def stream_resume(name: str, resource_type: str) -> Response:
    """Let a paused stream run again, from where it stopped: its run is due at once, audited."""
    return _set_stream_enabled(name, resource_type, enabled=True)


def _set_stream_enabled(name: str, resource_type: str, *, enabled: bool) -> Response:
    ctx = prm()
    with ctx.db.session() as session:
        row = connections.by_name(session, name)
        if streams.set_enabled(session, ctx.settings.clock, g.actor, row.id or 0, enabled, [resource_type]) and enabled:
            wake_streams(ctx.worker, session, row.id or 0, [resource_type])  # due now, not at the next sweep's plan
    return redirect(url_for("admin.connection_detail", name=name) + "#sync-streams", code=303)


@bp.get("/outbox")
@requires_admin(Action.VIEW_CONNECTIONS)
def outbox_list() -> str:
    """Write-back per connection, and the rows IT should look at: ids, types, statuses and errors, no contents."""
    with prm().db.session() as session:
        names = {row.id: row.name for row in connections.list_all(session) if row.id is not None}
        counted = outbox.counts_by_connection(session)
        rows = outbox.needing_attention(session, limit=ATTENTION_LIMIT)
    notice = admin_present.outbox_notice(request.args.get("done"), request.args.get("row", type=int))
    return render_template("admin_outbox.html", totals=admin_present.outbox_totals(names, counted),
                           items=[admin_present.outbox_item(row, names) for row in rows], limit=ATTENTION_LIMIT,
                           notice=notice, can_act=allows(g.admin.role, Action.MANAGE_OUTBOX))


def _settle_by_hand(row_id: int, action: str) -> Response:
    """Retry or discard one dead or kept row, audited in the same commit; back to the list with what happened."""
    ctx = prm()
    try:
        with ctx.db.session() as session:
            act = outbox.retry if action == "retry" else outbox.discard
            row = act(session, ctx.settings.clock, row_id)
            audit.record(session, ctx.settings.clock, g.actor, f"outbox.{action}", connection_id=row.connection_id,
                         entity=f"outbox_row:{row.id}", detail=row.source)
            connection = session.get(Connection, row.connection_id)
            if action == "retry" and connection is not None and connection.enabled:
                wake(ctx.worker, session, row.connection_id)  # a disabled connection drains once enabled again
    except ValidationError:  # not dead or kept (any more): someone acted first, or a double click
        return redirect(url_for("admin.outbox_list", done="unchanged", row=row_id), code=303)
    return redirect(url_for("admin.outbox_list", done="retried" if action == "retry" else "discarded", row=row_id),
                    code=303)


@bp.post("/outbox/<int:row_id>/retry")
@requires_admin(Action.MANAGE_OUTBOX)
def outbox_retry(row_id: int) -> Response:
    return _settle_by_hand(row_id, "retry")


@bp.post("/outbox/<int:row_id>/discard")
@requires_admin(Action.MANAGE_OUTBOX)
def outbox_discard(row_id: int) -> Response:
    return _settle_by_hand(row_id, "discard")
