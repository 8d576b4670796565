"""POST /fhir/hooks/<key>: where EHRs deliver our Subscriptions' notifications (R4 Backport IG, rest-hook; or
plain R4, whose notification is the POST itself, its body empty).

Server to server, no user and no cookie: the key in the path finds the subscription, its secret in the
Authorization header proves the caller is the EHR we gave it to. A notification only wakes the streams of
its topic (its events' focus types, where the EHR names them), as does a heartbeat whose event count shows
notifications that never arrived; the sync then reads the change itself. The
answer is quick and carries no data, so the EHR's delivery thread is never held up by our sync.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, request
from werkzeug.wrappers import Response

from fhir_mappings.subscriptions import Notification, parse_notification
from prm import ehr_subscriptions
from prm.ehr_subscriptions import HookRefused
from prm.errors import NotFoundError, ValidationError
from smart_app.context import prm
from workers.sync import wake_streams

log = logging.getLogger(__name__)
bp = Blueprint("hooks", __name__)


def _outcome(status: int, code: str, text: str) -> tuple[Response, int]:
    severity = "information" if status < 400 else "error"
    body: dict[str, Any] = {"resourceType": "OperationOutcome",
                            "issue": [{"severity": severity, "code": code, "diagnostics": text}]}
    response = jsonify(body)
    response.headers["Content-Type"] = "application/fhir+json"
    return response, status


@bp.post("/fhir/hooks/<key>")
def notification(key: str) -> tuple[Response, int]:
    ctx = prm()
    try:
        with ctx.db.session() as session:
            row = ehr_subscriptions.authenticate(session, key, request.headers.get("Authorization"))
            if row.kind == ehr_subscriptions.CRITERIA:  # plain R4: the POST itself says something matched
                note = Notification("event-notification", row.topic, None, (), ())
            else:
                note = parse_notification(request.get_json(force=True, silent=True))
            missed = ehr_subscriptions.heard(session, ctx.settings.clock, row, note.kind, note.event_numbers,
                                             note.events_since_start)
            woken = 0
            if note.kind == "event-notification" or missed:  # a heartbeat counting events we never got
                types = [t for t in note.focus_types if t in row.resource_types] or list(row.resource_types)
                woken = wake_streams(ctx.worker, session, row.connection_id, types)
            said = f"subscription {row.topic} (connection {row.connection_id}): {note.kind}, {woken} stream(s) woken"
    except NotFoundError as exc:
        return _outcome(404, "not-found", str(exc))
    except HookRefused as exc:
        log.warning("subscription hook %s…: refused a notification: %s", key[:6], exc)
        return _outcome(401, "security", str(exc))
    except ValidationError as exc:
        return _outcome(400, "invalid", str(exc))
    log.info(said)
    return _outcome(200, "informational", f"{note.kind} received")
