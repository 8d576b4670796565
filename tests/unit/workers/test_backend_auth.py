"""The key a launch client signs with (workers.backend_auth.launch_signer), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from prm import connections, keys
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.errors import LaunchError
from workers.backend_auth import launch_signer


def test_a_private_key_jwt_launch_client_signs_with_the_connections_active_key(database: Database,
                                                                                settings: Settings) -> None:
    """No key (a connection saved before the admin form made one): a LaunchError naming the fix, so the launch
    fails on a page and in the audit, not with a 500; once made, the launch client's id and that key."""
    box = SecretBox(settings.encryption_keys)
    with database.session() as session:
        public = connections.upsert(session, settings.clock, box, connections.ConnectionSpec(
            name="open", iss="https://open.example/fhir", client_id="open-client"))
        signed = connections.upsert(session, settings.clock, box, connections.ConnectionSpec(
            name="signed", iss="https://signed.example/fhir", client_id="signed-client", client_auth="private_key_jwt"))
        assert launch_signer(session, box, public, "https://open.example/token") is None
        with pytest.raises(LaunchError, match="prm connection rotate-key signed") as missing:
            launch_signer(session, box, signed, "https://signed.example/token")
        assert missing.value.reason == "client_key_missing"
        key = keys.ensure_for(session, settings.clock, box, signed)
        signer = launch_signer(session, box, signed, "https://signed.example/token")
    assert key is not None and signer is not None
    assert (signer.client_id, signer.token_endpoint, signer.kid, signer.alg) == (
        "signed-client", "https://signed.example/token", key.kid, key.alg)
    assert signer.private_key_pem and "PRIVATE KEY" in signer.private_key_pem
