"""GET /metrics: sync and write-back health for Prometheus (`smart_app.metrics`).

Server to server, no user and no cookie: the scrape sends `Authorization: Bearer <PRM_METRICS_TOKEN>`. Without
that setting the endpoint is off (404), so nothing is exposed that IT did not ask for.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from smart_app import metrics
from smart_app.context import prm

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    token = prm().settings.metrics_token
    if token is None:
        return Response("metrics are off: set PRM_METRICS_TOKEN to serve them\n", 404, mimetype="text/plain")
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")  # the scheme is case-insensitive
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
        return Response("a bearer token (PRM_METRICS_TOKEN) is needed\n", 401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="fhir-prm metrics"'})
    body, content_type = metrics.exposition(prm().db, prm().settings.clock, request.headers.get("Accept"))
    return Response(body, 200, headers={"Content-Type": content_type})
