"""Launch routes: /launch (EHR launch) and /launch/callback. Thin: parse, call launch_flow, redirect."""

from __future__ import annotations

import logging

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from prm.errors import LaunchError
from smart_app.context import prm
from smart_app.launch_flow import begin_ehr_launch, begin_standalone_launch, complete_launch
from smart_app.messages import launch_problem

log = logging.getLogger(__name__)
bp = Blueprint("launch", __name__)


def _problem(exc: LaunchError) -> tuple[str, int]:
    log.info("launch failed: %s", exc.reason)
    title, advice, status = launch_problem(exc.reason)
    return render_template("problem.html", title=title, advice=advice, reason=exc.reason), status


@bp.get("/launch")
def ehr_launch() -> Response | tuple[str, int]:
    try:
        url = begin_ehr_launch(prm(), request.args.get("iss", ""), request.args.get("launch", ""))
    except LaunchError as exc:
        return _problem(exc)
    return redirect(url, code=302)


@bp.get("/launch/standalone")
def standalone_launch() -> Response | tuple[str, int]:
    try:
        url = begin_standalone_launch(prm(), request.args.get("connection", ""))
    except LaunchError as exc:
        return _problem(exc)
    return redirect(url, code=302)


@bp.get("/launch/callback")
def callback() -> Response | tuple[str, int]:
    args = request.args
    try:
        launch = complete_launch(prm(), args.get("state"), args.get("code"), args.get("error"))
    except LaunchError as exc:
        return _problem(exc)
    return redirect(url_for("sidebar.home", handle=launch.handle), code=303)
