"""The EHR's own signing key (id_tokens), from a PEM file or made in memory so a sandbox never needs key files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from joserfc.jwk import KeyParameters, RSAKey


def load_or_generate(path: str | None) -> RSAKey:
    key = RSAKey.import_key(Path(path).read_bytes()) if path else RSAKey.generate_key(2048, private=True)
    kid = key.thumbprint()
    return RSAKey.import_key(key.as_dict(private=True), parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def impostor_of(key: RSAKey) -> RSAKey:
    """A different private key carrying `key`'s kid: its signatures fail against the published JWKS."""
    other = RSAKey.generate_key(2048, private=True)
    parameters: KeyParameters = {"kid": key.kid or "", "use": "sig", "alg": "RS256"}
    return RSAKey.import_key(other.as_dict(private=True), parameters=parameters)


def public_jwks(key: RSAKey) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False)]}
