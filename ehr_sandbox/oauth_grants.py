"""Authlib grants and extensions bent to SMART App Launch: PKCE S256 only, launch context, private_key_jwt, rotation."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import requests
from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Request
from authlib.oauth2.rfc6749 import InvalidClientError, InvalidScopeError, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from .oauth_store import AuthCode, Client, SandboxUser, Token

if TYPE_CHECKING:
    from .authz import SmartAuth

ALL_CLIENT_AUTH = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
ASSERTION_ALGS = ["RS384", "ES384"]
REFRESH_SCOPES = ("offline_access", "online_access")


def error_text(text: str) -> str:
    """An exception's words as an OAuth `error_description`, which allows printable ASCII but `"` and `\\`
    (RFC 6749 §5.2; Authlib raises on them, and the client got a 500 instead of `invalid_client`)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?" for c in text)


class SandboxAuthorizationServer(AuthorizationServer):
    """Authlib's Flask server that knows its SmartAuth (stores, profile, keys)."""

    def __init__(self, smart: SmartAuth):
        super().__init__()
        self.smart = smart
        self._query_client = smart.query_client
        self._save_token = smart.save_token
        self.register_token_generator("default", BearerTokenGenerator(
            lambda **_: generate_token(42), lambda **_: generate_token(48), lambda client, grant_type: smart.lifetime))


def _smart(grant: Any) -> SmartAuth:
    server: SandboxAuthorizationServer = grant.server
    return server.smart


class S256Only(CodeChallenge):
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - Authlib's class attribute


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_CLIENT_AUTH

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        payload = request.payload.data
        _smart(self).store.save_code(AuthCode(
            code=code, client_id=request.client.get_client_id(), redirect_uri=request.payload.redirect_uri,
            scope=request.scope or "", user=request.user, code_challenge=payload.get("code_challenge"),
            code_challenge_method=payload.get("code_challenge_method"), nonce=payload.get("nonce"),
            auth_time=int(time.time())))

    def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
        return _smart(self).store.redeem_code(code, client.get_client_id())

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        authorization_code.used = True  # (already spent by redeem_code) kept, so a replay can be punished

    def authenticate_user(self, authorization_code: AuthCode) -> SandboxUser:
        return authorization_code.user


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_CLIENT_AUTH
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: every refresh returns a new refresh token

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        smart = _smart(self)
        with smart.store.lock:
            tok = smart.store.by_refresh.get(refresh_token)
            if tok is None:
                return None
            if tok.refresh_revoked:
                if smart.profile.refresh_reuse_detection:
                    smart.store.revoke_family(tok.family)
                return None
            tok.refresh_revoked = True  # rotated now, under the lock: two racing refreshes can't both win
            smart.store.refresh_grants += 1  # tests count refreshes (the app's refresh is single-flight)
            return tok

    def authenticate_user(self, refresh_token: Token) -> SandboxUser:
        return refresh_token.user or SandboxUser(None)

    def revoke_old_credential(self, refresh_token: Token) -> None:
        refresh_token.refresh_revoked = True


class BackendGrant(grants.ClientCredentialsGrant):
    """SMART Backend Services: client_credentials with system/ scopes only."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]  # noqa: RUF012

    def generate_token(self, user: Any = None, scope: str | None = None, grant_type: str | None = None,
                       expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        system = " ".join(s for s in (scope or "").split() if s.startswith("system/"))
        if not system or not self.request.client.get_allowed_scope(system):
            raise InvalidScopeError("client_credentials grants only system/ scopes this client is allowed")
        return super().generate_token(user, system, grant_type, expires_in, include_refresh_token=False)


class PrivateKeyJwt(JWTBearerClientAssertion):
    """private_key_jwt (RFC 7523) as SMART Backend Services profiles it: RS384/ES384, jti once, exp <= 5 min."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, smart: SmartAuth):
        super().__init__(validate_jti=True, leeway=30)
        self.smart = smart

    def get_audiences(self) -> list[str]:
        return [self.smart.token_url]

    def validate_jti(self, claims: Any, jti: str) -> bool:
        return self.smart.store.use_jti(claims["sub"], jti, float(claims["exp"]))

    def resolve_client_public_key(self, client: Client) -> KeySet:
        conf = client.conf
        jwks = conf.jwks
        if jwks is None and conf.jwks_url:
            try:
                jwks = requests.get(conf.jwks_url, timeout=10).json()
            except (requests.RequestException, ValueError) as exc:
                raise InvalidClientError(description=error_text(f"cannot fetch jwks_url: {exc}")) from exc
        if not jwks:
            raise InvalidClientError(description="client has no registered keys")
        return KeySet.import_key_set(jwks)  # type: ignore[arg-type]

    def process_assertion_claims(self, assertion: str, resolve_key: Key | KeySet) -> Any:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=error_text(f"client assertion: {exc}")) from exc
        self.verify_claims(token.claims)
        if float(token.claims["exp"]) > time.time() + 300 + self.leeway:
            raise InvalidClientError(description="client assertion exp is more than 5 minutes ahead")
        return token.claims


class SmartOpenID(OpenIDCode):
    """id_token RS256 signed with the EHR key, with fhirUser (absolute URL) when the fhirUser scope was granted."""

    def __init__(self, smart: SmartAuth):
        super().__init__(require_nonce=False)
        self.smart = smart

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        with self.smart.store.lock:
            return any(c.nonce == nonce and c.client_id == request.payload.client_id
                       for c in self.smart.store.codes.values())

    def resolve_client_private_key(self, client: Client) -> Key:
        if self.smart.profile.id_token_fault == "bad-signature":
            return self.smart.impostor_key
        return self.smart.key

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": self.smart.key.kid or "", "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.smart.issuer, "aud": client.get_client_id(), "iat": now, "exp": now + 3600}
        fault = self.smart.profile.id_token_fault
        if fault == "expired":
            claims.update(iat=now - 7200, exp=now - 3600)
        elif fault == "wrong-aud":
            claims["aud"] = "some-other-app"
        elif fault == "wrong-issuer":
            claims["iss"] = "https://impostor.example"
        return claims

    def generate_user_info(self, user: SandboxUser, scope: str) -> dict[str, Any]:
        info: dict[str, Any] = {"sub": user.sub}
        if user.fhir_user and "fhirUser" in scope.split():
            info["fhirUser"] = f"{self.smart.iss}/{user.fhir_user}"
        return info


class LaunchContextInResponse:
    """Adds SMART launch context (patient, encounter, need_patient_banner, ...) to token responses."""

    def __init__(self, smart: SmartAuth):
        self.smart = smart

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_create_token_response", self.process_token)

    def process_token(self, grant: Any, response: tuple[int, dict[str, Any], Any]) -> None:
        _, token, _ = response
        stored = self.smart.store.by_access.get(token.get("access_token", ""))
        user = stored.user if stored else None
        if user is None:
            return
        if user.patient:
            token["patient"] = user.patient
        if user.encounter:
            token["encounter"] = user.encounter
        token["need_patient_banner"] = user.need_patient_banner
        token["smart_style_url"] = f"{self.smart.ehr_url}/smart-style.json"
        token["fhirContext"] = [{"reference": f"Encounter/{user.encounter}"}] if user.encounter else []


def build_server(smart: SmartAuth) -> SandboxAuthorizationServer:
    server = SandboxAuthorizationServer(smart)
    server.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(smart))
    context = LaunchContextInResponse(smart)
    server.register_grant(CodeGrant, [S256Only(required=True), SmartOpenID(smart), context])
    server.register_grant(RefreshGrant, [context])
    server.register_grant(BackendGrant)
    return server


def refresh_wanted(scope: str) -> bool:
    return any(s in scope.split() for s in REFRESH_SCOPES)


def new_token(token: dict[str, Any], request: OAuth2Request, lifetime: int) -> Token:
    """Turn Authlib's token dict into our Token, inheriting user and family from the code or refresh token."""
    code: AuthCode | None = getattr(request, "authorization_code", None)
    previous: Token | None = getattr(request, "refresh_token", None)
    user: SandboxUser | None
    if code is not None:
        user, family = code.user, code.code
    elif previous is not None:
        user, family = previous.user, previous.family
    else:
        user, family = None, generate_token(16)
    scope = token.get("scope", "")
    if not refresh_wanted(scope):
        token.pop("refresh_token", None)
    return Token(access_token=token["access_token"], client_id=request.client.get_client_id(), scope=scope,
                 expires_in=int(token.get("expires_in", lifetime)), family=family, user=user,
                 refresh_token=token.get("refresh_token"))
