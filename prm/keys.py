"""fhir-prm's own signing keys (private_key_jwt), rotated without downtime: the old key stays published a while.

A key is active (signs and is published), previous (published only, so an EHR holding a cached JWKS
keeps verifying our assertions during a rotation) or retired (neither). The kid is the RFC 7638
thumbprint; the private key is stored sealed by prm.crypto.SecretBox.
"""

from __future__ import annotations

from typing import Any

from joserfc.jwk import ECKey, RSAKey
from sqlmodel import Session, col, select

from prm.clock import Clock
from prm.crypto import SecretBox
from prm.errors import ConfigError, ValidationError
from prm.models import Connection, SigningKey

ACTIVE, PREVIOUS, RETIRED = "active", "previous", "retired"
RSA_BITS = 2048
EC_CURVE = "P-384"
ALGS = ("RS384", "ES384")


def _generate(alg: str) -> RSAKey | ECKey:
    if alg == "RS384":
        return RSAKey.generate_key(RSA_BITS, private=True)
    if alg == "ES384":
        return ECKey.generate_key(EC_CURVE, private=True)
    raise ValidationError(f"signing algorithm must be one of {', '.join(ALGS)}, got {alg!r}")


def public_jwk(key: RSAKey | ECKey, alg: str) -> dict[str, Any]:
    """The public half as published: key members plus kid (thumbprint), alg and use=sig."""
    return {**key.as_dict(private=False), "kid": key.thumbprint(), "alg": alg, "use": "sig"}


def _new_row(clock: Clock, box: SecretBox, connection_id: int, alg: str) -> SigningKey:
    key = _generate(alg)
    pem = key.as_pem(private=True).decode()
    return SigningKey(connection_id=connection_id, kid=key.thumbprint(), alg=alg, status=ACTIVE,
                      private_key_enc=box.seal(pem) or "", public_jwk=public_jwk(key, alg), created_at=clock())


def keys_of(session: Session, connection_id: int) -> list[SigningKey]:
    """Every key of a connection, newest first."""
    query = (select(SigningKey).where(SigningKey.connection_id == connection_id)
             .order_by(col(SigningKey.created_at).desc(), col(SigningKey.id).desc()))
    return list(session.exec(query))


def active_key(session: Session, connection_id: int) -> SigningKey | None:
    query = select(SigningKey).where(SigningKey.connection_id == connection_id, SigningKey.status == ACTIVE)
    return session.exec(query.order_by(col(SigningKey.id).desc())).first()


def rotate(session: Session, clock: Clock, box: SecretBox, connection_id: int, alg: str | None = None) -> SigningKey:
    """Make a new active key; the old active one becomes previous (still published, no longer signing)."""
    current = active_key(session, connection_id)
    for row in session.exec(select(SigningKey).where(SigningKey.connection_id == connection_id,
                                                     SigningKey.status == ACTIVE)):
        row.status = PREVIOUS
        session.add(row)
    row = _new_row(clock, box, connection_id, alg or (current.alg if current else "RS384"))
    session.add(row)
    session.flush()
    return row


def ensure_active(session: Session, clock: Clock, box: SecretBox, connection_id: int, alg: str) -> SigningKey:
    """The active key if it uses `alg`; otherwise a new one (rotating, so a changed alg has no gap)."""
    current = active_key(session, connection_id)
    if current is not None and current.alg == alg:
        return current
    return rotate(session, clock, box, connection_id, alg)


def ensure_for(session: Session, clock: Clock, box: SecretBox, connection: Connection) -> SigningKey | None:
    """The connection's active key where it signs client assertions (`private_key_jwt`, for launches or the
    backend client), made or rotated to its algorithm; None where nothing signs. Why one place: a connection
    saved from the admin form had none, so its sync could not get a token, and a changed algorithm kept the
    old key signing."""
    if "private_key_jwt" not in (connection.client_auth, connection.backend_auth) or connection.id is None:
        return None
    return ensure_active(session, clock, box, connection.id, connection.signing_alg)


def retire_previous(session: Session, clock: Clock, connection_id: int) -> list[str]:
    """Stop publishing the connection's previous keys; returns their kids."""
    retired = []
    for row in session.exec(select(SigningKey).where(SigningKey.connection_id == connection_id,
                                                     SigningKey.status == PREVIOUS)):
        row.status = RETIRED
        row.retired_at = clock()
        session.add(row)
        retired.append(row.kid)
    return retired


def private_pem(box: SecretBox, row: SigningKey) -> str:
    pem = box.open(row.private_key_enc)
    if not pem:
        raise ConfigError(f"signing key {row.kid} has no private key")
    return pem


def published_jwks(session: Session) -> dict[str, list[dict[str, Any]]]:
    """The JWKS at /.well-known/jwks.json: active and previous public keys of every connection."""
    query = (select(SigningKey).where(col(SigningKey.status).in_((ACTIVE, PREVIOUS)))
             .order_by(col(SigningKey.id)))
    return {"keys": [dict(row.public_jwk) for row in session.exec(query)]}
