"""The clinician's sidebar for the patient in context; until the sync lands it reads the Patient live."""

from __future__ import annotations

import logging

from flask import Blueprint, g, render_template

from connector.ehr_client import EhrClient
from fhir_mappings.patient import patient_header_from_fhir
from prm import audit, connections
from prm.errors import AuthExpiredError, EhrError, ValidationError
from prm.models import Launch
from prm.permissions import Action
from smart_app.context import prm
from smart_app.guard import requires

log = logging.getLogger(__name__)
bp = Blueprint("sidebar", __name__, url_prefix="/app/<handle>")


def _relaunch(handle: str) -> tuple[str, int]:
    return render_template("problem.html", title="Your session with the EHR has ended",
                           advice="Open fhir-prm again from the patient's chart.", reason="session_expired",
                           handle=handle), 401


@bp.get("/")
@requires(Action.VIEW_PATIENT)
def home(handle: str) -> str | tuple[str, int]:
    ctx = prm()
    launch: Launch = g.launch
    if launch.expires_at is not None and launch.expires_at <= ctx.settings.clock():
        return _relaunch(handle)
    with ctx.db.session() as session:
        connection = connections.get(session, launch.connection_id)
    if connection is None or not connection.enabled or launch.patient_id is None:
        return _relaunch(handle)
    client = EhrClient(connection.iss, ctx.box.open(launch.access_token_enc), ctx.worker.http,
                       ctx.settings.http_timeout_s)
    outcome, detail, header, problem = "success", None, None, None
    try:
        header = patient_header_from_fhir(client.read("Patient", launch.patient_id))
    except AuthExpiredError:
        outcome, detail = "failure", "token_rejected"
    except (EhrError, ValidationError) as exc:
        outcome, detail, problem = "failure", type(exc).__name__, "The EHR could not give us this patient right now."
        log.warning("live patient read failed for launch %s: %s", launch.id, type(exc).__name__)
    with ctx.db.session() as session:
        audit.record(session, ctx.settings.clock, g.actor, "patient.read", patient_id=launch.patient_id,
                     entity=f"Patient/{launch.patient_id}", outcome=outcome, detail=detail)
    if detail == "token_rejected":
        return _relaunch(handle)
    return render_template("sidebar.html", handle=handle, patient=header, problem=problem,
                           banner=bool(launch.context.get("need_patient_banner")))


@bp.get("/connections")
@requires(Action.VIEW_CONNECTIONS)
def connection_health(handle: str) -> str:
    ctx = prm()
    with ctx.db.session() as session:
        rows = connections.list_all(session)
    return render_template("connections.html", handle=handle, connections=rows)
