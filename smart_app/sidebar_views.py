"""The clinician's sidebar for the patient in context: from the snapshot once the sync has the patient (no EHR
round trip, the same picture the workers act on), else the Patient read live with the launch token."""

from __future__ import annotations

import logging

from flask import Blueprint, g, render_template, request

from connector.ehr_client import EhrClient
from fhir_mappings.patient import patient_header_from_fhir
from prm import audit, connections, launches, patient_overview, smart_scopes
from prm.errors import EhrError, LaunchError, ValidationError
from prm.models import Launch
from prm.patients import PatientHeader
from prm.permissions import Action
from smart_app import csrf, overview_present
from smart_app.api_views import api_token
from smart_app.context import prm
from smart_app.guard import granted_scope, relaunch_page, requires, ungranted
from smart_app.launch_tokens import call_with_token

log = logging.getLogger(__name__)
bp = Blueprint("sidebar", __name__, url_prefix="/app/<handle>")
END_SESSION = "end-session"


@bp.get("/")
@requires(Action.VIEW_PATIENT)
def home(handle: str) -> str | tuple[str, int]:
    ctx = prm()
    launch: Launch = g.launch
    now = ctx.settings.clock()
    with ctx.db.session() as session:
        connection = connections.get(session, launch.connection_id)
        if connection is None or not connection.enabled or launch.patient_id is None:
            return relaunch_page()
        seen = patient_overview.overview(session, connection, launch.patient_id, now)
    patient_id = launch.patient_id

    def read(token: str) -> PatientHeader:
        client = EhrClient(connection.iss, token, ctx.worker.http, ctx.settings.http_timeout_s)
        return patient_header_from_fhir(client.read("Patient", patient_id))

    outcome, problem = "success", None
    detail: str | None = "from the snapshot" if seen is not None else None
    header = seen.header if seen is not None else None
    if seen is None:
        try:
            header = call_with_token(ctx, launch, read)
        except LaunchError as exc:
            outcome, detail = "failure", exc.reason
        except (EhrError, ValidationError) as exc:
            outcome, detail = "failure", type(exc).__name__
            problem = "The EHR could not give us this patient right now."
            log.warning("live patient read failed for launch %s: %s", launch.id, type(exc).__name__)
    with ctx.db.session() as session:
        audit.record(session, ctx.settings.clock, g.actor, "patient.read", patient_id=patient_id,
                     entity=f"Patient/{patient_id}", outcome=outcome, detail=detail)
    if header is None and problem is None:
        return relaunch_page()
    granted = granted_scope(launch)
    return render_template("sidebar.html", handle=handle, patient=header, problem=problem, overview=seen,
                           freshness=overview_present.freshness(seen.as_of, now) if seen else None,
                           when_text=overview_present.when_text, counts_text=overview_present.counts_text,
                           banner=bool(launch.context.get("need_patient_banner")),
                           sees_visits=smart_scopes.user_allows(granted, "Encounter", "r"),
                           sees_bookings=smart_scopes.user_allows(granted, "Appointment", "r"),
                           opens_tickets=not ungranted(granted, Action.OPEN_CARE_TICKET),
                           end_token=csrf.issue(ctx.settings.secret_key, handle, END_SESSION),
                           api_token=api_token(handle))


@bp.post("/end")
@requires(Action.END_OWN_SESSION)
def end_session(handle: str) -> tuple[str, int]:
    """A clinician on a shared workstation ends this launch: its tokens are wiped and the handle dies."""
    ctx = prm()
    try:
        csrf.check(ctx.settings.secret_key, request.form.get("csrf_token"), handle, END_SESSION)
    except ValidationError as exc:
        return render_template("problem.html", title="This form has expired", advice=str(exc),
                               reason="csrf"), 400
    with ctx.db.session() as session:
        row = launches.by_handle(session, handle)
        if row is not None and launches.end_active(session, ctx.settings.clock, row.id or 0, "ended_by_user"):
            audit.record(session, ctx.settings.clock, g.actor, "launch.end", patient_id=row.patient_id)
    return render_template("problem.html", title="Session ended",
                           advice="fhir-prm has forgotten this session. Open it again from the chart.",
                           reason="ended_by_user"), 200


@bp.get("/connections")
@requires(Action.VIEW_CONNECTIONS)
def connection_health(handle: str) -> str:
    ctx = prm()
    with ctx.db.session() as session:
        rows = connections.list_all(session)
    return render_template("connections.html", handle=handle, connections=rows)
