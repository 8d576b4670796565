"""The SMART authorization server: discovery, /oauth/authorize (EHR launch and standalone picker), token, JWKS."""
from __future__ import annotations

import time
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Request
from flask import Blueprint, Response, jsonify, render_template_string, request

from .config import SandboxClient, SandboxConfig
from .directory import Directory
from .keys import impostor_of, load_or_generate, public_jwks
from .oauth_grants import build_server, new_token
from .oauth_store import Client, OAuthStore, SandboxUser, Token
from .profiles import get_profile
from .scopes import supported
from .templates import ERROR_PAGE, PICKER_PAGE

CAPABILITIES = ["launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "context-ehr-patient", "context-ehr-encounter",
                "context-standalone-patient", "permission-v2", "permission-v1", "sso-openid-connect",
                "permission-offline", "permission-online", "authorize-post", "context-banner", "context-style"]
SMART_STYLE = {"color_background": "#f6f7f9", "color_error": "#b3261e", "color_highlight": "#2d6cdf",
               "color_modal_backdrop": "", "color_success": "#1b7f3b", "color_text": "#1f2328",
               "dim_border_radius": "6px", "dim_font_size": "14px", "dim_spacing_size": "16px",
               "font_family_body": "system-ui, sans-serif", "font_family_heading": "system-ui, sans-serif"}
PICKER_FIELDS = ("decision", "patient_id")


class SmartAuth:
    """Owns the OAuth state and the Authlib server; the FHIR proxy asks it about bearer tokens."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.profile = get_profile(config.profile)
        self.store = OAuthStore()
        self.key = load_or_generate(config.signing_key_path)
        # Profile id-token-bad-signature signs with this key under the real key's kid.
        self.impostor_key = impostor_of(self.key)
        self.directory = Directory(config.fhir_internal_url)
        for client in config.clients:
            self.store.put_client(client)
        self.server = build_server(self)

    # ---------------- URLs ----------------
    @property
    def ehr_url(self) -> str:
        return self.config.ehr_url

    @property
    def iss(self) -> str:
        return self.config.iss

    @property
    def issuer(self) -> str:
        return self.config.ehr_url

    @property
    def token_url(self) -> str:
        return f"{self.ehr_url}/oauth/token"

    @property
    def lifetime(self) -> int:
        return self.profile.access_token_lifetime_s or self.config.token_lifetime_s

    # ---------------- hooks for Authlib ----------------
    def query_client(self, client_id: str) -> Client | None:
        with self.store.lock:
            conf = self.store.clients.get(client_id)
        return Client(conf, self.profile.v1_scopes_only) if conf else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.store.save_token(new_token(token, request, self.lifetime))

    # ---------------- used by the shell and the proxy ----------------
    def register_client(self, client: SandboxClient) -> None:
        self.store.put_client(client)

    def create_launch(self, patient: str, encounter: str | None, fhir_user: str | None = None) -> str:
        return self.store.create_launch(patient, encounter, fhir_user or self.config.default_user)

    def bearer(self, authorization: str | None) -> Token | None:
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return self.store.active_token(value.strip())

    def discovery(self) -> dict[str, Any]:
        caps = [c for c in CAPABILITIES if not (self.profile.v1_scopes_only and c == "permission-v2")]
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.ehr_url}/oauth/jwks",
            "authorization_endpoint": f"{self.ehr_url}/oauth/authorize",
            "token_endpoint": self.token_url,
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic",
                                                      "client_secret_post", "none"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": supported(self.profile.v1_scopes_only),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": caps,
        }


def _error_page(message: str, status: int = 400) -> Response:
    return Response(render_template_string(ERROR_PAGE, message=message), status=status, mimetype="text/html")


def _redirect_error(redirect_uri: str, error: str, description: str, state: str | None) -> Response:
    params = [("error", error), ("error_description", description)] + ([("state", state)] if state else [])
    return Response(status=302, headers={"Location": add_params_to_uri(redirect_uri, params)})


def _smart_checks(smart: SmartAuth, grant: Any) -> Response | None:
    """What SMART adds to RFC 6749 once the client and redirect_uri are known to be good."""
    data = grant.request.payload.data
    state = data.get("state")

    def fail(description: str) -> Response:
        return _redirect_error(grant.redirect_uri, "invalid_request", description, state)

    if not state:
        return fail("state is required")
    if (data.get("aud") or "").rstrip("/") != smart.iss:
        return fail(f"aud must be {smart.iss}")
    if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
        return fail("PKCE with code_challenge_method=S256 is required")
    return None


def build_blueprint(smart: SmartAuth) -> Blueprint:
    bp = Blueprint("smart_auth", __name__)
    server = smart.server

    @bp.get("/fhir/.well-known/smart-configuration")
    def smart_configuration() -> Response:
        if not smart.profile.discovery:
            return Response("Not Found", status=404, mimetype="text/plain")
        return jsonify(smart.discovery())

    @bp.get("/.well-known/openid-configuration")
    def openid_configuration() -> Response:
        doc = smart.discovery()
        doc["subject_types_supported"] = ["public"]
        return jsonify(doc)

    @bp.get("/oauth/jwks")
    def jwks() -> Response:
        return jsonify(public_jwks(smart.key))

    @bp.get("/smart-style.json")
    def smart_style() -> Response:
        return jsonify(SMART_STYLE)

    @bp.post("/oauth/token")
    def token() -> Response:
        resp: Response = server.create_token_response()
        return resp

    @bp.route("/oauth/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        try:
            grant = server.get_consent_grant(end_user=None)
        except OAuth2Error as err:
            if err.redirect_uri:  # the client and its redirect_uri are known: RFC 6749 says redirect
                err_resp: Response = server.handle_error_response(None, err)
                return err_resp
            return _error_page(f"{err.error}: {err.description or ''}")
        failed = _smart_checks(smart, grant)
        if failed is not None:
            return failed
        data = grant.request.payload.data
        scopes = (data.get("scope") or "").split()
        if data.get("launch"):  # EHR launch: the user is logged into the EHR, so approve at once
            ctx = smart.store.get_launch(data["launch"])
            if ctx is None:
                return _redirect_error(grant.redirect_uri, "invalid_request", "unknown or expired launch",
                                       data.get("state"))
            user = SandboxUser(ctx.fhir_user, ctx.patient, ctx.encounter, need_patient_banner=False)
            return _issue(grant, user)
        decision = request.form.get("decision") if request.method == "POST" else None
        if decision == "deny":
            return _issue(grant, None)
        wants_patient = "launch/patient" in scopes
        if decision == "allow":
            patient_id = request.form.get("patient_id") or ""
            if not wants_patient:
                return _issue(grant, SandboxUser(smart.config.default_user, need_patient_banner=True))
            if patient_id and smart.directory.patient(patient_id) is not None:
                return _issue(grant, SandboxUser(smart.config.default_user, patient_id, need_patient_banner=True))
        hidden = [(k, v) for k, v in request.values.items(multi=True) if k not in PICKER_FIELDS]
        client = smart.query_client(data.get("client_id", ""))
        page = render_template_string(
            PICKER_PAGE, hidden=hidden, patients=smart.directory.patients() if wants_patient else [],
            user=smart.config.default_user, client_id=client.client_id if client else "", scopes=scopes)
        return Response(page, mimetype="text/html")

    def _issue(grant: Any, user: SandboxUser | None) -> Response:
        resp: Response = server.create_authorization_response(grant_user=user, grant=grant)
        return resp

    return bp


def now() -> int:
    return int(time.time())
