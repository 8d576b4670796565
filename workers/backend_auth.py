"""A connection's backend-services client as plain values for the connector (secrets decrypted only here)."""

from __future__ import annotations

from sqlmodel import Session

from connector.backend import BackendCredentials
from prm import keys
from prm.crypto import SecretBox
from prm.errors import LaunchError
from prm.models import Connection


def backend_credentials(session: Session, box: SecretBox, row: Connection,
                        token_endpoint: str = "") -> BackendCredentials | None:
    """The connector's plain-value view of the connection's backend client (secrets decrypted only here)."""
    if not row.backend_auth or not row.backend_client_id or row.id is None:
        return None
    if row.backend_auth == "private_key_jwt":
        key = keys.active_key(session, row.id)
        return BackendCredentials(
            client_id=row.backend_client_id, token_endpoint=token_endpoint, auth=row.backend_auth,
            alg=key.alg if key else row.signing_alg, kid=key.kid if key else None,
            private_key_pem=keys.private_pem(box, key) if key else None)
    return BackendCredentials(client_id=row.backend_client_id, token_endpoint=token_endpoint, auth=row.backend_auth,
                              client_secret=box.open(row.backend_client_secret_enc))


def launch_signer(session: Session, box: SecretBox, row: Connection, token_endpoint: str) -> BackendCredentials | None:
    """The key a user launch's client signs its token requests with, where it authenticates with
    `private_key_jwt` (the same key the backend client uses, published at /.well-known/jwks.json)."""
    if row.client_auth != "private_key_jwt" or row.id is None:
        return None
    key = keys.active_key(session, row.id)
    if key is None:
        raise LaunchError("client_key_missing", f"connection {row.name!r} signs its launches (private_key_jwt) but "
                                                f"has no signing key: prm connection rotate-key {row.name}")
    return BackendCredentials(client_id=row.client_id, token_endpoint=token_endpoint, auth="private_key_jwt",
                              alg=key.alg, kid=key.kid, private_key_pem=keys.private_pem(box, key))
