"""The EHR's FHIR endpoint: checks bearer tokens and scopes, then forwards to the internal FHIR server."""
from __future__ import annotations

import json
import re
from typing import Any

import requests
from flask import Blueprint, Response, request

from . import racy
from .access import PATIENT_PARAMS, Denied, Interaction, check, classify, patient_refs
from .authz import SmartAuth

REQUEST_HEADERS = ("Content-Type", "Accept", "Prefer", "If-None-Exist", "If-Match", "If-None-Match",
                   "If-Modified-Since")
RESPONSE_HEADERS = ("Location", "ETag", "Content-Location", "Retry-After", "X-Progress", "Content-Type",
                    "Last-Modified", "Expires")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
WHOLE_SECOND = re.compile(r"(T\d\d:\d\d:\d\d)\.\d+")  # an instant's fraction of a second, to drop


def outcome(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}]}
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/fhir+json")


def _with_smart_security(cap: dict[str, Any], smart: SmartAuth) -> dict[str, Any]:
    """Replace the server's own security block with the EHR's SMART one (oauth-uris extension)."""
    for rest in cap.get("rest", []):
        rest["security"] = {
            "cors": True,
            "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                     "code": "SMART-on-FHIR"}]}],
            "extension": [{"url": OAUTH_URIS, "extension": [
                {"url": "authorize", "valueUri": f"{smart.ehr_url}/oauth/authorize"},
                {"url": "token", "valueUri": smart.token_url}]}],
            "description": "SMART App Launch 2 (sandbox EHR)",
        }
        if not smart.profile.history:
            rest["interaction"] = [i for i in rest.get("interaction", []) if i.get("code") != "history-system"]
            for res in rest.get("resource", []):
                res["interaction"] = [i for i in res.get("interaction", [])
                                      if i.get("code") not in ("history-type", "history-instance")]
        if smart.profile.ignores_last_updated:  # declared, as an EHR without the search would declare it
            for res in rest.get("resource", []):
                res["searchParam"] = [p for p in res.get("searchParam", []) if p.get("name") != "_lastUpdated"]
        if smart.profile.subscriptions == "criteria":  # as an EHR without the Backport IG lists Subscription
            for res in rest.get("resource", []):
                if res.get("type") == "Subscription":
                    res["supportedProfile"] = [p for p in res.get("supportedProfile", []) if "backport" not in p]
                    res["extension"] = [e for e in res.get("extension", []) if "backport" not in e.get("url", "")]
                    res["operation"] = [op for op in res.get("operation", [])
                                        if op.get("name") not in ("status", "$status")]
        rest["resource"] = [r for r in rest.get("resource", []) if r.get("type") not in smart.profile.unserved_types]
        levels = smart.profile.export_levels
        if "system" not in levels:
            rest["operation"] = [op for op in rest.get("operation", []) if op.get("name") != "export"]
        for res in rest.get("resource", []):
            if res.get("type", "").lower() not in levels:  # Group and Patient name their levels
                res["operation"] = [op for op in res.get("operation", []) if op.get("name") != "export"]
    return cap


def build_blueprint(smart: SmartAuth) -> Blueprint:
    bp = Blueprint("fhir_proxy", __name__)
    upstream = smart.config.fhir_internal_url
    http = requests.Session()

    def forward(path: str, args: list[tuple[str, str]], data: bytes | None = None,
                drop: tuple[str, ...] = ()) -> requests.Response:
        headers = {h: request.headers[h] for h in REQUEST_HEADERS if h in request.headers and h not in drop}
        url = f"{upstream}/{path}" if path else upstream
        return http.request(request.method, url, params=args, data=request.get_data() if data is None else data,
                            headers=headers, timeout=300, allow_redirects=False)

    def relay(resp: requests.Response, content: bytes | None = None) -> Response:
        headers = {h: resp.headers[h] for h in RESPONSE_HEADERS if h in resp.headers}
        return Response(resp.content if content is None else content, status=resp.status_code, headers=headers)

    def racing_create(path: str, args: list[tuple[str, str]], inter: Interaction, seconds: float) -> Response:
        """If-None-Exist as a racing EHR does it: search, pause, then create without the condition."""
        found = racy.find(http, upstream, str(inter.rtype), request.headers["If-None-Exist"])
        if isinstance(found, requests.Response):
            return relay(found)
        racy.pause(seconds)
        if found.count == 0:
            return relay(forward(path, args, drop=("If-None-Exist",)))
        if found.count == 1 and found.first is not None:
            reply = racy.existing(found.first, request.headers.get("Prefer"))
            return Response(reply.body, status=reply.status, headers=reply.headers)
        return outcome(412, "multiple-matches", racy.multiple(found.count))

    @bp.route("/fhir/metadata", methods=["GET", "HEAD"])
    def metadata() -> Response:
        resp = forward("metadata", list(request.args.items(multi=True)))
        if resp.status_code != 200 or "json" not in resp.headers.get("Content-Type", ""):
            return relay(resp)
        return relay(resp, json.dumps(_with_smart_security(resp.json(), smart)).encode())

    @bp.route("/fhir", defaults={"path": ""}, methods=METHODS, strict_slashes=False)
    @bp.route("/fhir/<path:path>", methods=METHODS)
    def fhir(path: str) -> Response:
        token = smart.bearer(request.headers.get("Authorization"))
        if token is None:
            return outcome(401, "login", "a valid, unexpired bearer token is required",
                           {"WWW-Authenticate": f'Bearer realm="{smart.iss}", error="invalid_token"'})
        if not smart.profile.history and "_history" in path.split("/"):
            return outcome(404, "not-supported", "this EHR does not support _history")
        if path.split("/")[0] in smart.profile.unserved_types:
            return outcome(404, "not-supported", f"this EHR holds no {path.split('/')[0]}")
        args = list(request.args.items(multi=True))
        inter = classify(request.method, path)
        patient = token.user.patient if token.user else None
        try:
            inter = check(token.scope, patient, smart.profile, inter, args, request.get_data())
        except Denied as denied:
            return outcome(denied.status, denied.code, denied.message)
        race = smart.profile.conditional_create_race_s
        if race is not None and request.method == "POST":
            if inter.kind == "create" and racy.criteria(request.headers.get("If-None-Exist")):
                return racing_create(path, args, inter, race)
            if inter.kind == "transaction":
                loosened = racy.loosen_bundle(http, upstream, request.get_data(), race)
                if loosened is not None:
                    return relay(forward(path, args, data=loosened))
        if smart.profile.last_updated_to_the_second and inter.kind == "search":
            args = [(k, WHOLE_SECOND.sub(r"\1", v)) if k == "_lastUpdated" else (k, v) for k, v in args]
        if smart.profile.patient_lists == "first-only" and inter.kind == "search":
            args = [(k, v.split(",")[0]) if k in PATIENT_PARAMS else (k, v) for k, v in args]
        if smart.profile.ignores_sort and inter.kind == "search" and "/" not in path.strip("/"):
            ignored = ("_sort", "_lastUpdated") if smart.profile.ignores_last_updated else ("_sort",)
            args = [(k, v) for k, v in args if k not in ignored] + [("_sort", "-_lastUpdated")]
        resp = forward(path, args + inter.extra_params)
        if inter.check_result_patient and resp.status_code == 200:
            try:
                refs = patient_refs(resp.json())
            except ValueError:
                refs = set()
            if refs and inter.check_result_patient not in refs:
                return outcome(403, "forbidden", "patient/ scopes only reach the launch patient's data")
        return relay(resp)

    return bp
