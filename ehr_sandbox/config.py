"""Sandbox settings as plain dataclasses, so tests and the CLI build an EHR without files or env vars."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AuthMethod = Literal["none", "client_secret_basic", "client_secret_post", "private_key_jwt"]


@dataclass
class SandboxClient:
    """One registered SMART client; `scopes` is the space-separated ceiling of what it may be granted."""

    client_id: str
    redirect_uris: list[str] = field(default_factory=list)
    scopes: str = "launch launch/patient openid fhirUser offline_access online_access patient/*.cruds user/*.cruds"
    auth_method: AuthMethod = "none"
    secret: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code", "refresh_token"])


@dataclass
class SandboxConfig:
    """What one sandbox EHR looks like: ports, behaviour profile, clients, the logged-in user."""

    profile: str = "default"
    port: int = 8790
    fhir_internal_port: int = 8791
    app_launch_url: str = "http://127.0.0.1:8000/launch"
    clients: list[SandboxClient] = field(default_factory=list)
    default_user: str = "Practitioner/prac-rdc-01"
    token_lifetime_s: int = 3600
    signing_key_path: str | None = None  # PEM RSA private key; generated in memory when None
    host: str = "localhost"  # the public host name; the socket always binds 127.0.0.1
    bind_port: int | None = None  # the EHR's socket port when a front (a test's fault proxy) owns `port`; 0 = free

    @property
    def ehr_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def iss(self) -> str:
        return f"{self.ehr_url}/fhir"

    @property
    def fhir_internal_url(self) -> str:
        return f"http://127.0.0.1:{self.fhir_internal_port}/fhir"
