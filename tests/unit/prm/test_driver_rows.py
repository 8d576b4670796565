"""SQLite's driver path for snapshot pages stores exactly what SQLAlchemy's ORM stores, column for column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import text

from prm import connections, snapshots
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.migrate import upgrade
from tests.support.settings import make_settings
from workers.page_prep import MAPPERS

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"
TYPES = ("Patient", "Encounter", "Appointment", "RelatedPerson", "Organization", "Location", "PractitionerRole")


def fresh(tmp_path: Path, name: str) -> tuple[Database, Settings, int]:
    settings = make_settings(f"sqlite:///{tmp_path / name}", tmp_path / f"instance-{name}")
    database = Database(settings.database_url)
    upgrade(database)
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
    return database, settings, row.id or 0


def rows_of(resource_type: str, limit: int = 120) -> list[dict[str, Any]]:
    with (DATA / f"{resource_type}.ndjson").open() as lines:
        resources = [json.loads(line) for _, line in zip(range(limit), lines, strict=False)]
    return [MAPPERS[resource_type](r).__dict__ for r in resources]


def dump(database: Database, table: str) -> list[tuple[Any, ...]]:
    with database.engine.connect() as connection:
        result = connection.execute(text(f"SELECT * FROM {table} ORDER BY fhir_id"))  # noqa: S608 (our names)
        columns = list(result.keys())
        return [tuple(v for c, v in zip(columns, row, strict=True) if c != "id") for row in result]


def test_the_driver_path_stores_what_the_orm_stores(tmp_path: Path) -> None:
    driver_db, _, driver_cid = fresh(tmp_path, "driver.db")
    orm_db, _, orm_cid = fresh(tmp_path, "orm.db")
    assert driver_cid == orm_cid
    for resource_type in TYPES:
        rows = rows_of(resource_type)
        assert rows, resource_type
        with driver_db.session() as session:
            assert snapshots.upsert_page(session, driver_cid, resource_type, rows) == len(rows)
        with orm_db.session() as session:
            table = snapshots.TABLES[resource_type]
            session.add_all([table(**row, connection_id=orm_cid) for row in rows])
        name = snapshots.TABLES[resource_type].__tablename__  # type: ignore[attr-defined]
        stored = dump(driver_db, name)
        assert len(stored) == len({r["fhir_id"] for r in rows})
        assert stored == dump(orm_db, name), resource_type
    driver_db.dispose()
    orm_db.dispose()
