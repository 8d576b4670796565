"""Every way a snapshot page reaches the database stores exactly what SQLAlchemy's ORM stores, column for
column, on SQLite and PostgreSQL: the page upsert, and rows encoded where they are prepared (a helper process,
with an offline dialect, across a pickle) then stored by the worker."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from prm import connections, snapshots
from prm.crypto import SecretBox
from prm.db import Database, offline_dialect
from prm.migrate import upgrade
from prm.pg_copy import COPY_FROM_ROWS
from prm.snapshot_rows import EncodedRows, encode_rows
from tests.support.postgres import fresh_database
from tests.support.settings import make_settings
from workers.page_prep import MAPPERS

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"
TYPES = ("Patient", "Encounter", "Appointment", "RelatedPerson", "Organization", "Location", "PractitionerRole")
PATHS = ("orm", "upsert_page", "encoded")


@contextmanager
def fresh(backend: str, tmp_path: Path, name: str) -> Iterator[tuple[Database, int]]:
    with (fresh_database() if backend == "postgresql" else _sqlite(tmp_path, name)) as url:
        settings = make_settings(url, tmp_path / f"instance-{name}")
        database = Database(settings.database_url)
        upgrade(database)
        with database.session() as session:
            row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                     connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
        try:
            yield database, row.id or 0
        finally:
            database.dispose()


@contextmanager
def _sqlite(tmp_path: Path, name: str) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / name}.db"


def rows_of(resource_type: str, limit: int = COPY_FROM_ROWS + 40) -> list[dict[str, Any]]:
    """Enough rows that PostgreSQL takes its COPY path for the big types and its statement for the small."""
    with (DATA / f"{resource_type}.ndjson").open() as lines:
        resources = [json.loads(line) for _, line in zip(range(limit), lines, strict=False)]
    return [MAPPERS[resource_type](r).__dict__ for r in resources]


def store(path: str, database: Database, connection_id: int, resource_type: str, rows: list[dict[str, Any]]) -> None:
    with database.session() as session:
        if path == "orm":
            table = snapshots.TABLES[resource_type]
            session.add_all([table(**row, connection_id=connection_id) for row in rows])
        elif path == "upsert_page":
            assert snapshots.upsert_page(session, connection_id, resource_type, rows) == len(rows)
        else:  # as a helper process encodes a page and the worker stores it
            dialect = offline_dialect(session.get_bind().dialect.name)
            crossed = pickle.dumps(encode_rows(dialect, connection_id, resource_type, rows))
            encoded: EncodedRows = pickle.loads(crossed)  # noqa: S301 - made two lines up
            assert snapshots.store_encoded(session, resource_type, encoded) == len(rows)


def dump(database: Database, table: str) -> list[tuple[Any, ...]]:
    with database.engine.connect() as connection:
        result = connection.execute(text(f"SELECT * FROM {table} ORDER BY fhir_id"))  # noqa: S608 (our names)
        columns = list(result.keys())
        return [tuple(v for c, v in zip(columns, row, strict=True) if c != "id") for row in result]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_path_stores_what_the_orm_stores(backend: str, tmp_path: Path) -> None:
    with fresh(backend, tmp_path, "orm") as (orm_db, cid), fresh(backend, tmp_path, "upsert") as (upsert_db, cid2), \
            fresh(backend, tmp_path, "encoded") as (encoded_db, cid3):
        assert cid == cid2 == cid3
        databases = dict(zip(PATHS, (orm_db, upsert_db, encoded_db), strict=True))
        for resource_type in TYPES:
            rows = rows_of(resource_type)
            assert len({r["fhir_id"] for r in rows}) == len(rows), resource_type
            for path, database in databases.items():
                store(path, database, cid, resource_type, rows)
            name = snapshots.TABLES[resource_type].__tablename__  # type: ignore[attr-defined]
            expected = dump(orm_db, name)
            assert len(expected) == len(rows)
            for path in PATHS[1:]:
                assert dump(databases[path], name) == expected, (path, resource_type)


def test_rows_encoded_for_one_database_are_refused_by_another(tmp_path: Path) -> None:
    with fresh("sqlite", tmp_path, "x") as (database, cid):
        encoded = encode_rows(offline_dialect("postgresql"), cid, "Location", rows_of("Location", 3))
        with pytest.raises(TypeError, match="encoded for postgresql"), database.session() as session:
            snapshots.store_encoded(session, "Location", encoded)
        with database.session() as session:
            assert snapshots.versions(session, cid, "Location") == set()
