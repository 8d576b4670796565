"""OAuth 2 for SMART launches with Authlib's requests client; state and verifier are kept by the caller.

Authlib's Flask integration would keep OAuth state in the cookie session, which a cross-site EHR
iframe loses, so we use its lower-level OAuth2Session and let prm keep state on the launch row.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from connector.backend import BackendCredentials, SmartPrivateKeyJWT
from connector.errors import outcome_text, transport_error
from prm.errors import ConfigError, LaunchError

ID_TOKEN_ALGS = ["RS256", "RS384", "ES256", "ES384"]


def _client(client_id: str, client_secret: str | None, redirect_uri: str, scope: str | None = None,
            signer: BackendCredentials | None = None) -> OAuth2Session:
    """Authlib's session for one launch: `signer` (the connection's key) makes it a confidential asymmetric
    client (`private_key_jwt`, SMART's preferred), a secret a symmetric one, neither a public one."""
    if signer is not None:
        client = OAuth2Session(client_id=client_id, redirect_uri=redirect_uri, scope=scope,
                               code_challenge_method="S256", token_endpoint_auth_method="private_key_jwt")  # noqa: S106
        client.register_client_auth_method(SmartPrivateKeyJWT(signer))
        return client
    auth_method = "client_secret_basic" if client_secret else "none"
    return OAuth2Session(
        client_id=client_id, client_secret=client_secret, redirect_uri=redirect_uri, scope=scope,
        code_challenge_method="S256", token_endpoint_auth_method=auth_method,
    )


def authorization_url(*, authorize_endpoint: str, client_id: str, redirect_uri: str, scope: str, state: str,
                      code_verifier: str, aud: str, launch: str | None, nonce: str | None) -> str:
    """The authorize redirect (SMART App Launch 2.2 §2.1.4): code flow, PKCE S256, aud = iss."""
    extra: dict[str, str] = {"aud": aud}
    if launch:
        extra["launch"] = launch
    if nonce:
        extra["nonce"] = nonce
    with _client(client_id, None, redirect_uri, scope) as client:
        url, _ = client.create_authorization_url(authorize_endpoint, state=state, code_verifier=code_verifier,
                                                 **extra)
    return str(url)


def _token_call(call: Callable[[], Any], token_endpoint: str, refused: str, what: str) -> dict[str, Any]:
    """One token request: an unreachable EHR and a refusal become LaunchErrors with reasons pages can show."""
    try:
        token = call()
    except requests.RequestException as exc:
        raise LaunchError("ehr_unreachable", str(transport_error(exc, token_endpoint))) from exc
    except AuthlibBaseError as exc:
        raise LaunchError(refused, f"the EHR refused {what}: {exc.error}") from exc
    except ConfigError as exc:  # our own client assertion could not be signed (a bad or missing key)
        raise LaunchError("client_key_unusable", f"fhir-prm could not sign its token request: {exc}") from exc
    if not token.get("access_token"):
        raise LaunchError(refused, "the EHR's token response has no access_token")
    return dict(token)


def exchange_code(*, token_endpoint: str, client_id: str, client_secret: str | None, redirect_uri: str,
                  code: str, code_verifier: str, timeout: float,
                  signer: BackendCredentials | None = None) -> dict[str, Any]:
    """Swap the authorization code for tokens; LaunchError('token_exchange_failed') on any refusal."""
    with _client(client_id, client_secret, redirect_uri, signer=signer) as client:
        return _token_call(lambda: client.fetch_token(token_endpoint, grant_type="authorization_code", code=code,
                                                      code_verifier=code_verifier, timeout=timeout),
                           token_endpoint, "token_exchange_failed", "the code")


def refresh(*, token_endpoint: str, client_id: str, client_secret: str | None, refresh_token: str,
            timeout: float, signer: BackendCredentials | None = None) -> dict[str, Any]:
    """Use the refresh token (SMART App Launch 2.2 §2.1.9); LaunchError('refresh_refused') when the EHR says no."""
    with _client(client_id, client_secret, redirect_uri="", signer=signer) as client:
        return _token_call(lambda: client.refresh_token(token_endpoint, refresh_token=refresh_token,
                                                        timeout=timeout),
                           token_endpoint, "refresh_refused", "the refresh token")


def standalone_scopes(scopes: str) -> str:
    """A standalone launch asks the user to pick a patient (`launch/patient`) instead of `launch`."""
    out = [s for s in scopes.split() if s != "launch"]
    return " ".join(dict.fromkeys([*out, "launch/patient"]))


def fetch_jwks(session: requests.Session, jwks_uri: str, timeout: float) -> dict[str, Any]:
    try:
        response = session.get(jwks_uri, timeout=timeout)
    except requests.RequestException as exc:
        raise LaunchError("ehr_unreachable", str(transport_error(exc, jwks_uri))) from exc
    if response.status_code != 200:
        raise LaunchError("id_token_invalid", f"JWKS {jwks_uri} -> {response.status_code} {outcome_text(response)}")
    body: dict[str, Any] = response.json()
    return body


def claimed_issuer(id_token: str) -> str:
    """The `iss` an id_token claims, unverified: only to find where its keys are published."""
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise LaunchError("id_token_invalid", "the id_token is not a JWT") from exc
    return str(claims.get("iss", "")) if isinstance(claims, dict) else ""


def verify_id_token(id_token: str, *, jwks: dict[str, Any], issuer: str, client_id: str, nonce: str | None,
                    now: int) -> dict[str, Any]:
    """Validate signature (EHR's JWKS), iss, aud, exp and nonce; return the claims."""
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        decoded = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGS)
        rules: dict[str, Any] = {
            "iss": {"essential": True, "value": issuer},
            "aud": {"essential": True, "value": client_id},
            "exp": {"essential": True},
            "sub": {"essential": True},
        }
        if nonce:
            rules["nonce"] = {"essential": True, "value": nonce}
        jwt.JWTClaimsRegistry(now=now, leeway=60, **rules).validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        raise LaunchError("id_token_invalid", f"the id_token is not valid: {exc}") from exc
    return dict(decoded.claims)
