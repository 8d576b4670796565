"""SMART discovery: .well-known/smart-configuration, falling back to the CapabilityStatement; cached.

fhirclient only reads the CapabilityStatement, so discovery is ours (SMART App Launch 2.x §2.1).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from connector.errors import raise_for_status, transport_error
from connector.json_get import get_json
from prm.errors import EhrError, PermanentEhrError

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
CACHE_TTL_S = 600.0


@dataclass(frozen=True)
class SmartConfiguration:
    """The endpoints and capabilities an EHR publishes for SMART clients."""

    authorization_endpoint: str
    token_endpoint: str
    source: str  # well-known | capability-statement
    issuer: str | None = None
    jwks_uri: str | None = None
    capabilities: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] | None = None
    code_challenge_methods: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _from_well_known(body: dict[str, Any]) -> SmartConfiguration:
    try:
        return SmartConfiguration(
            authorization_endpoint=body["authorization_endpoint"],
            token_endpoint=body["token_endpoint"],
            source="well-known",
            issuer=body.get("issuer"),
            jwks_uri=body.get("jwks_uri"),
            capabilities=tuple(body.get("capabilities", ())),
            scopes_supported=tuple(body["scopes_supported"]) if "scopes_supported" in body else None,
            code_challenge_methods=tuple(body.get("code_challenge_methods_supported", ())),
            raw=body,
        )
    except (KeyError, TypeError) as exc:
        raise PermanentEhrError(f"smart-configuration lacks {exc}") from exc


def _from_capability_statement(body: dict[str, Any]) -> SmartConfiguration:
    for rest in body.get("rest", []):
        for extension in (rest.get("security") or {}).get("extension", []):
            if extension.get("url") != OAUTH_URIS:
                continue
            uris = {e.get("url"): e.get("valueUri") for e in extension.get("extension", [])}
            if uris.get("authorize") and uris.get("token"):
                return SmartConfiguration(authorization_endpoint=uris["authorize"], token_endpoint=uris["token"],
                                          source="capability-statement", raw=body)
    raise PermanentEhrError("no SMART endpoints: neither .well-known/smart-configuration nor oauth-uris "
                            "in the CapabilityStatement")


def fetch(session: requests.Session, iss: str, timeout: float) -> SmartConfiguration:
    """Discover without the cache (used by health checks, which must see the EHR as it is now)."""
    base = iss.rstrip("/")
    url = f"{base}/.well-known/smart-configuration"
    try:
        response = session.get(url, headers={"Accept": "application/json"}, timeout=timeout)
    except requests.RequestException as exc:
        raise transport_error(exc, url) from exc
    if response.status_code == 200:
        try:
            return _from_well_known(response.json())
        except ValueError as exc:
            raise PermanentEhrError(f"{url} is not JSON") from exc
    if response.status_code not in (404, 410, 403, 401):
        raise_for_status(response)
    statement = get_json(session, f"{base}/metadata", {"Accept": "application/fhir+json"}, timeout)
    return _from_capability_statement(statement)


def openid_jwks_uri(session: requests.Session, issuer: str, timeout: float) -> str:
    """The jwks_uri from OpenID Connect discovery, for EHRs whose SMART discovery names none."""
    url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    body = get_json(session, url, {"Accept": "application/json"}, timeout)
    if body.get("issuer", "").rstrip("/") != issuer.rstrip("/") or not body.get("jwks_uri"):
        raise PermanentEhrError(f"{url} does not describe issuer {issuer} with a jwks_uri")
    return str(body["jwks_uri"])


class DiscoveryCache:
    """Discovery results per iss for a few minutes: every launch needs them, none should wait for them.
    Threads that miss the same iss together share one fetch (a foreground sync starts a thread per stream,
    and each asked the EHR the same question); different EHRs never wait for each other."""

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, SmartConfiguration]] = {}
        self._fetching: dict[str, threading.Lock] = {}  # one lock per iss, held while it is fetched

    def get(self, session: requests.Session, iss: str, timeout: float) -> SmartConfiguration:
        cached = self._fresh(iss)
        if cached is not None:
            return cached
        with self._lock:
            fetching = self._fetching.setdefault(iss, threading.Lock())
        with fetching:
            cached = self._fresh(iss)  # fetched by the thread this one waited for
            if cached is not None:
                return cached
            config = fetch(session, iss, timeout)
            with self._lock:
                self._entries[iss] = (time.monotonic() + self._ttl, config)
        return config

    def _fresh(self, iss: str) -> SmartConfiguration | None:
        with self._lock:
            entry = self._entries.get(iss)
        return entry[1] if entry and entry[0] > time.monotonic() else None

    def forget(self, iss: str) -> None:
        with self._lock:
            self._entries.pop(iss, None)


__all__ = ["DiscoveryCache", "EhrError", "SmartConfiguration", "fetch"]
