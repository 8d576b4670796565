"""SMART Backend Services tokens (client_credentials) for unattended work: sync, write-back, checks.

SMART App Launch 2.2 §backend-services with client-confidential-asymmetric: a client assertion JWT
(iss = sub = client id, aud = token endpoint, exp at most 5 minutes ahead, unique jti, kid header,
RS384 or ES384). Authlib's OAuth2Session sends the token request; its stock PrivateKeyJWT signs for
an hour, which SMART EHRs refuse, so the assertion is ours. Key material comes in as plain values:
the connector knows nothing of how prm stores keys.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from connector.errors import transport_error
from prm.errors import ConfigError, EhrError, PermanentEhrError, TransientEhrError

ASSERTION_LIFETIME_S = 240  # SMART: exp no more than five minutes in the future
EXPIRY_MARGIN_S = 60.0  # a cached token is replaced this long before it expires (a quarter of its life at most)
DEFAULT_LIFETIME_S = 300  # a token answer without expires_in is taken to live this long
ALGS = ("RS384", "ES384")


@dataclass(frozen=True)
class BackendCredentials:
    """How one backend client authenticates at one token endpoint; secrets never show in repr."""

    client_id: str
    token_endpoint: str
    auth: str  # private_key_jwt | client_secret
    alg: str = "RS384"
    kid: str | None = None
    private_key_pem: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BackendToken:
    access_token: str = field(repr=False)
    scope: str
    expires_at: float  # time.time() seconds
    expires_in: int | None = None

    def fresh(self, now: float, margin_s: float = EXPIRY_MARGIN_S) -> bool:
        """Whether to use it still: until `margin_s` before it expires, or a quarter of its life where that is
        shorter. Why: a token that lives less than the margin (an EHR's 60 s tokens) was never fresh, so every
        request fetched a new one; the quarter still leaves a request time to arrive before it expires."""
        lifetime = self.expires_in if self.expires_in is not None else DEFAULT_LIFETIME_S
        return now < self.expires_at - min(margin_s, lifetime / 4)


class BackendAuthError(PermanentEhrError):
    """The token endpoint refused us (invalid_client, invalid_scope, ...); `error` is the OAuth code."""

    def __init__(self, message: str, error: str | None, status: int | None = None) -> None:
        super().__init__(message, status)
        self.error = error


def _load_key(creds: BackendCredentials) -> RSAKey | ECKey:
    if creds.alg not in ALGS:
        raise ConfigError(f"backend signing algorithm must be one of {', '.join(ALGS)}, got {creds.alg!r}")
    if not creds.private_key_pem or not creds.kid:
        raise ConfigError(f"backend client {creds.client_id!r} uses private_key_jwt but has no signing key "
                          "(`prm connection rotate-key` makes one)")
    try:
        return _import_key(creds.alg, creds.private_key_pem)
    except (JoseError, ValueError, TypeError) as exc:
        raise ConfigError(f"the signing key {creds.kid} does not fit {creds.alg}") from exc


@functools.lru_cache(maxsize=64)
def _import_key(alg: str, pem: str) -> RSAKey | ECKey:
    """Parsed once a process: OpenSSL checks an RSA key as it loads it (~50 ms, on a first sync's critical path
    before its export starts). A rotated key is a new PEM, so a new entry; a key that fails is not kept."""
    if alg == "RS384":
        return RSAKey.import_key(pem)
    return ECKey.import_key(pem)


def client_assertion(creds: BackendCredentials, now: int | None = None, jti: str | None = None,
                     lifetime_s: int = ASSERTION_LIFETIME_S) -> str:
    """A signed private_key_jwt client assertion for `creds.token_endpoint`."""
    key = _load_key(creds)
    issued = int(time.time()) if now is None else now
    claims = {"iss": creds.client_id, "sub": creds.client_id, "aud": creds.token_endpoint,
              "iat": issued, "exp": issued + min(lifetime_s, 300), "jti": jti or uuid.uuid4().hex}
    header = {"alg": creds.alg, "kid": creds.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[creds.alg])


class SmartPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's client auth hook, signing with our short-lived SMART assertion (backend clients, and launches
    whose client authenticates with `private_key_jwt`)."""

    def __init__(self, creds: BackendCredentials) -> None:
        super().__init__(creds.token_endpoint)
        self._creds = creds

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return client_assertion(self._creds)


def _session(creds: BackendCredentials) -> OAuth2Session:
    if creds.auth == "private_key_jwt":
        _load_key(creds)  # fail on a bad key before any request
        client = OAuth2Session(client_id=creds.client_id, token_endpoint_auth_method="private_key_jwt")  # noqa: S106
        client.register_client_auth_method(SmartPrivateKeyJWT(creds))
        return client
    if creds.auth == "client_secret":
        if not creds.client_secret:
            raise ConfigError(f"backend client {creds.client_id!r} uses client_secret but has none stored")
        return OAuth2Session(client_id=creds.client_id, client_secret=creds.client_secret,
                             token_endpoint_auth_method="client_secret_basic")  # noqa: S106
    raise ConfigError(f"backend auth must be private_key_jwt or client_secret, got {creds.auth!r}")


def fetch_token(creds: BackendCredentials, scope: str, timeout: float) -> BackendToken:
    """One client_credentials grant, uncached (checks must see the EHR as it is now)."""
    url = creds.token_endpoint
    with _session(creds) as client:
        try:
            token = client.fetch_token(url, grant_type="client_credentials", scope=scope, timeout=timeout)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status is not None and status >= 500:
                raise TransientEhrError(f"POST {url} -> HTTP {status}") from exc
            raise BackendAuthError(f"POST {url} -> HTTP {status}", None, status) from exc
        except requests.RequestException as exc:
            raise transport_error(exc, url) from exc
        except AuthlibBaseError as exc:
            detail = f"{exc.error}: {exc.description}" if exc.description else str(exc.error)
            raise BackendAuthError(f"the EHR refused backend client {creds.client_id!r}: {detail}",
                                   exc.error) from exc
        except ValueError as exc:
            raise PermanentEhrError(f"POST {url}: the token response is not JSON") from exc
    access = token.get("access_token")
    if not access:
        raise PermanentEhrError(f"POST {url}: the token response has no access_token")
    expires_in = int(token["expires_in"]) if str(token.get("expires_in", "")).isdigit() else None
    # SMART: scope is REQUIRED in the response; an EHR that omits it granted what was asked (RFC 6749 §5.1)
    granted = str(token.get("scope") or scope)
    return BackendToken(access_token=str(access), scope=granted, expires_in=expires_in,
                        expires_at=time.time() + (expires_in if expires_in is not None else DEFAULT_LIFETIME_S))


class BackendTokens:
    """Tokens cached per (token endpoint, client, scope) until a minute before expiry (a quarter of a short
    token's life: `BackendToken.fresh`); thread-safe, one fetch at a time per key. After a 401, `invalidate`
    and ask again once: the EHR may have revoked it."""

    def __init__(self, margin_s: float = EXPIRY_MARGIN_S) -> None:
        self._margin = margin_s
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], BackendToken] = {}
        self._key_locks: dict[tuple[str, str, str], threading.Lock] = {}

    @staticmethod
    def _key(creds: BackendCredentials, scope: str) -> tuple[str, str, str]:
        return (creds.token_endpoint, creds.client_id, " ".join(sorted(scope.split())))

    def get(self, creds: BackendCredentials, scope: str, timeout: float) -> BackendToken:
        key = self._key(creds, scope)
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.fresh(time.time(), self._margin):
                return token
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # single flight: whoever waited here finds the token the first thread fetched
            with self._lock:
                token = self._tokens.get(key)
            if token is not None and token.fresh(time.time(), self._margin):
                return token
            token = fetch_token(creds, scope, timeout)
            with self._lock:
                self._tokens[key] = token
            return token

    def invalidate(self, creds: BackendCredentials, scope: str) -> None:
        with self._lock:
            self._tokens.pop(self._key(creds, scope), None)


__all__ = ["BackendAuthError", "BackendCredentials", "BackendToken", "BackendTokens", "EhrError", "client_assertion",
           "fetch_token"]
