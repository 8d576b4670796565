"""In-memory OAuth state (clients, launches, codes, tokens) behind one lock: the sandbox is one process."""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin

from .config import SandboxClient
from .scopes import grant

LAUNCH_TTL_S = 600
CODE_TTL_S = 300
JTI_TTL_S = 600


class Client(ClientMixin):
    """Authlib's view of a SandboxClient."""

    def __init__(self, conf: SandboxClient, v1_only: bool):
        self.conf = conf
        self.client_id = conf.client_id
        self.v1_only = v1_only

    def get_client_id(self) -> str:
        return self.conf.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # SMART apps always send redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str | None:
        if not scope:
            return None
        return grant(scope, self.conf.scopes, self.v1_only)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.conf.redirect_uris  # exact string match, no prefixes

    def check_client_secret(self, client_secret: str) -> bool:
        return bool(self.conf.secret) and hmac.compare_digest(self.conf.secret or "", client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        mine = self.conf.auth_method
        if mine in ("client_secret_basic", "client_secret_post"):
            return method in ("client_secret_basic", "client_secret_post")
        return method == mine

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.conf.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.conf.grant_types


@dataclass(frozen=True)
class SandboxUser:
    """Who is "logged into the EHR" for one authorization, and the launch context the app gets."""

    fhir_user: str | None
    patient: str | None = None
    encounter: str | None = None
    need_patient_banner: bool = False

    @property
    def sub(self) -> str:
        return self.fhir_user or "sandbox-system"


@dataclass
class LaunchContext:
    patient: str
    encounter: str | None
    fhir_user: str
    created: float = field(default_factory=time.time)


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: SandboxUser
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    auth_time: int
    created: float = field(default_factory=time.time)
    used: bool = False

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass
class Token(TokenMixin):
    """One issued access token (and its refresh token); `family` links a code's tokens and their refreshes."""

    access_token: str
    client_id: str
    scope: str
    expires_in: int
    family: str
    user: SandboxUser | None = None
    refresh_token: str | None = None
    issued_at: float = field(default_factory=time.time)
    access_revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.access_revoked

    def get_user(self) -> SandboxUser | None:
        return self.user

    def get_client(self) -> Any:
        return None


class OAuthStore:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.clients: dict[str, SandboxClient] = {}
        self.launches: dict[str, LaunchContext] = {}
        self.codes: dict[str, AuthCode] = {}
        self.by_access: dict[str, Token] = {}
        self.by_refresh: dict[str, Token] = {}
        self.jtis: dict[str, float] = {}
        self.refresh_grants = 0

    def put_client(self, client: SandboxClient) -> None:
        with self.lock:
            self.clients[client.client_id] = client

    def create_launch(self, patient: str, encounter: str | None, fhir_user: str) -> str:
        launch_id = secrets.token_urlsafe(24)
        with self.lock:
            self.launches[launch_id] = LaunchContext(patient, encounter, fhir_user)
        return launch_id

    def get_launch(self, launch_id: str) -> LaunchContext | None:
        """Reusable for LAUNCH_TTL_S, like a real EHR's launch token (the iframe may reload)."""
        with self.lock:
            ctx = self.launches.get(launch_id)
        return ctx if ctx and time.time() - ctx.created < LAUNCH_TTL_S else None

    def save_code(self, code: AuthCode) -> None:
        with self.lock:
            self.codes[code.code] = code

    def redeem_code(self, code: str, client_id: str) -> AuthCode | None:
        """The code if fresh, spent at once (two racing requests can't both win); a replayed code revokes
        every token issued from it (RFC 6749 4.1.2)."""
        with self.lock:
            found = self.codes.get(code)
            if found is None or found.client_id != client_id:
                return None
            if found.used:
                self.revoke_family(found.code)
                return None
            found.used = True
            if time.time() - found.created > CODE_TTL_S:
                return None
            return found

    def save_token(self, token: Token) -> None:
        with self.lock:
            self.by_access[token.access_token] = token
            if token.refresh_token:
                self.by_refresh[token.refresh_token] = token

    def revoke_family(self, family: str) -> None:
        with self.lock:
            for tok in self.by_access.values():
                if tok.family == family:
                    tok.access_revoked = tok.refresh_revoked = True

    def use_jti(self, client_id: str, jti: str, exp: float) -> bool:
        """False if this client already used this jti (a replayed assertion)."""
        key = f"{client_id}\x00{jti}"
        now = time.time()
        with self.lock:
            for k in [k for k, v in self.jtis.items() if v < now]:
                del self.jtis[k]
            if key in self.jtis:
                return False
            self.jtis[key] = max(exp, now) + JTI_TTL_S
            return True

    def active_token(self, access_token: str) -> Token | None:
        with self.lock:
            tok = self.by_access.get(access_token)
        if tok is None or tok.access_revoked or tok.is_expired():
            return None
        return tok
