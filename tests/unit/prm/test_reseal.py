"""`prm keys reencrypt`: every stored secret re-sealed with the newest key, so the old key can go."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlmodel import select

from prm import connections, keys
from prm.config import Settings
from prm.crypto import SecretBox, new_key
from prm.db import Database
from prm.errors import ConfigError
from prm.models import Connection, Launch, SigningKey
from prm.reseal import reseal_all


def test_every_secret_is_resealed_with_the_newest_key(database: Database, settings: Settings) -> None:
    old = SecretBox(settings.encryption_keys)
    spec = connections.ConnectionSpec(name="riverside", iss="https://ehr.example/fhir", client_id="fhir-prm",
                                      client_auth="client_secret", client_secret="user-secret",
                                      backend_client_id="prm-backend", backend_auth="private_key_jwt")
    with database.session() as session:
        row = connections.upsert(session, settings.clock, old, spec)
        assert row.id is not None
        keys.ensure_active(session, settings.clock, old, row.id, "RS384")
        session.add(Launch(handle="h1", connection_id=row.id, access_token_enc=old.seal("access"),
                           refresh_token_enc=old.seal("refresh"), code_verifier_enc=None,
                           created_at=datetime(2026, 11, 20, tzinfo=UTC)))
    newest = new_key()
    with database.session() as session:
        counts = reseal_all(session, SecretBox((newest, *settings.encryption_keys)))
    assert counts["connection.client_secret_enc"] == 1 and counts["launch.access_token_enc"] == 1
    assert counts["launch.code_verifier_enc"] == 0 and counts["signing_key.private_key_enc"] == 1
    only_new = SecretBox((newest,))
    with database.session() as session:
        row = session.exec(select(Connection)).one()
        launch = session.exec(select(Launch)).one()
        key = session.exec(select(SigningKey)).one()
        assert only_new.open(row.client_secret_enc) == "user-secret"
        assert only_new.open(launch.access_token_enc) == "access"
        assert only_new.open(launch.refresh_token_enc) == "refresh"
        assert "PRIVATE KEY" in keys.private_pem(only_new, key)
        with pytest.raises(ConfigError):
            old.open(row.client_secret_enc)
