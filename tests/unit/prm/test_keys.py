"""Signing keys: thumbprint kids, sealed private keys, rotation that keeps the old key published until retired."""

from __future__ import annotations

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from prm import connections, keys
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database


def connection_id(database: Database, settings: Settings, name: str = "riverside") -> int:
    spec = connections.ConnectionSpec(name=name, iss=f"https://{name}.example/fhir", client_id="fhir-prm",
                                      backend_client_id="prm-backend", backend_auth="private_key_jwt")
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys), spec)
        assert row.id is not None
        return row.id


def published_kids(database: Database) -> list[str]:
    with database.session() as session:
        return [k["kid"] for k in keys.published_jwks(session)["keys"]]


def test_a_new_key_has_a_thumbprint_kid_and_a_sealed_private_half(database: Database, settings: Settings) -> None:
    box = SecretBox(settings.encryption_keys)
    cid = connection_id(database, settings)
    with database.session() as session:
        row = keys.ensure_active(session, settings.clock, box, cid, "RS384")
        again = keys.ensure_active(session, settings.clock, box, cid, "RS384")
        assert again.kid == row.kid  # idempotent: an active key of the right alg is kept
        pem = keys.private_pem(box, row)
    assert "PRIVATE KEY" not in row.private_key_enc
    private = RSAKey.import_key(pem)
    assert private.thumbprint() == row.kid and private.as_dict(private=False)["n"] == row.public_jwk["n"]
    assert len(private.as_dict(private=False)["n"]) * 6 >= 2048
    assert row.public_jwk["alg"] == "RS384" and row.public_jwk["use"] == "sig" and "d" not in row.public_jwk
    token = jwt.encode({"alg": "RS384", "kid": row.kid}, {"iss": "x"}, private, algorithms=["RS384"])
    verified = jwt.decode(token, KeySet.import_key_set({"keys": [row.public_jwk]}), algorithms=["RS384"])
    assert verified.claims == {"iss": "x"}


def test_es384_keys_use_p384(database: Database, settings: Settings) -> None:
    box = SecretBox(settings.encryption_keys)
    cid = connection_id(database, settings)
    with database.session() as session:
        row = keys.ensure_active(session, settings.clock, box, cid, "ES384")
        pem = keys.private_pem(box, row)
    assert row.public_jwk["crv"] == "P-384" and row.public_jwk["kty"] == "EC"
    assert ECKey.import_key(pem).thumbprint() == row.kid


def test_rotation_keeps_the_old_key_published_until_retired(database: Database, settings: Settings) -> None:
    box = SecretBox(settings.encryption_keys)
    cid = connection_id(database, settings)
    other = connection_id(database, settings, "hudson")
    with database.session() as session:
        first = keys.ensure_active(session, settings.clock, box, cid, "RS384")
        elsewhere = keys.ensure_active(session, settings.clock, box, other, "ES384")
    with database.session() as session:
        second = keys.rotate(session, settings.clock, box, cid)
    with database.session() as session:
        active = keys.active_key(session, cid)
        assert active is not None and active.kid == second.kid and second.alg == "RS384"
        assert {k.kid: k.status for k in keys.keys_of(session, cid)} == {first.kid: "previous", second.kid: "active"}
    assert set(published_kids(database)) == {first.kid, second.kid, elsewhere.kid}
    with database.session() as session:
        assert keys.retire_previous(session, settings.clock, cid) == [first.kid]
    assert set(published_kids(database)) == {second.kid, elsewhere.kid}
    with database.session() as session:
        assert keys.retire_previous(session, settings.clock, cid) == []  # nothing left to retire


def test_a_changed_algorithm_rotates(database: Database, settings: Settings) -> None:
    box = SecretBox(settings.encryption_keys)
    cid = connection_id(database, settings)
    with database.session() as session:
        rsa = keys.ensure_active(session, settings.clock, box, cid, "RS384")
        ec = keys.ensure_active(session, settings.clock, box, cid, "ES384")
    assert ec.alg == "ES384" and ec.kid != rsa.kid
    assert set(published_kids(database)) == {rsa.kid, ec.kid}
