"""Each migration applies on a database that already holds rows of the revision before it."""

from __future__ import annotations

from sqlalchemy import text

from prm.db import Database
from prm.migrate import pending_revisions, upgrade
from tests.support.settings import make_settings


def test_0002_upgrades_a_database_with_connections_and_launches(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, tmp_path)
    database = Database(settings.database_url)
    upgrade(database, "0001")
    with database.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO connection (name, iss, client_id, client_auth, scopes, default_role, enabled, frame_origins,"
            " role_mapping, health_status, health_detail, created_at, updated_at) VALUES ('a', 'https://a/fhir', 'c',"
            " 'public', '', 'clinician', true, '[]', '{}', 'unknown', '{}', '2026-11-20 12:00:00+00',"
            " '2026-11-20 12:00:00+00')"))
    upgrade(database)
    assert pending_revisions(database) == []
    with database.engine.connect() as conn:
        row = conn.execute(text("SELECT signing_alg, backend_scopes FROM connection")).one()
    assert tuple(row) == ("RS384", "")
    database.dispose()
