"""The EHR's own screens: a patient list and a chart whose sidebar iframe launches the app (SMART EHR launch)."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, abort, render_template_string, request

from .authz import SmartAuth
from .templates import CHART, PATIENT_LIST


def sidebar_src(app_launch_url: str, iss: str, launch_id: str) -> str:
    sep = "&" if "?" in app_launch_url else "?"
    return f"{app_launch_url}{sep}{urlencode({'iss': iss, 'launch': launch_id})}"


def build_blueprint(smart: SmartAuth) -> Blueprint:
    bp = Blueprint("ehr_shell", __name__)
    config = smart.config

    @bp.get("/")
    def patient_list() -> str:
        name = request.args.get("name", "").strip()
        return render_template_string(PATIENT_LIST, patients=smart.directory.patients(name or None), name=name,
                                      profile=config.profile, user=config.default_user)

    @bp.get("/chart/<patient_id>")
    def chart(patient_id: str) -> Response:
        patient = smart.directory.patient(patient_id)
        if patient is None:
            abort(404)
        user = request.args.get("user") or config.default_user
        encounter = smart.directory.latest_encounter(patient_id)
        launch_id = smart.create_launch(patient_id, encounter, user)
        html = render_template_string(CHART, patient=patient, encounter=encounter, user=user,
                                      profile=config.profile,
                                      src=sidebar_src(config.app_launch_url, smart.iss, launch_id))
        # a chart is per-launch: never cache it, or a back button would reuse a launch id
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-store"})

    return bp
