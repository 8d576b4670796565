"""GET /.well-known/jwks.json: fhir-prm's public signing keys, which EHRs fetch to verify our client assertions."""

from __future__ import annotations

from flask import Blueprint, jsonify
from werkzeug.wrappers import Response

from prm import keys
from smart_app.context import prm

bp = Blueprint("jwks", __name__)
MAX_AGE_S = 300  # short: a rotated key must reach EHRs well before the previous one is retired


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    with prm().db.session() as session:
        body = keys.published_jwks(session)
    response = jsonify(body)
    response.headers["Cache-Control"] = f"public, max-age={MAX_AGE_S}"
    return response
