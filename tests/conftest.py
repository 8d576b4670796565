"""Shared fixtures: a database on each backend, migrated; the process time zone set to a non-UTC one."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prm.config import Settings
from prm.db import Database
from prm.migrate import upgrade
from tests.support.postgres import fresh_database
from tests.support.settings import make_settings

# Naive local times are a bug; a non-UTC zone with DST makes them show (STYLE.md, "Tests").
os.environ.setdefault("TZ", "Pacific/Auckland")
time.tzset()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database per test, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'prm.db'}"
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path / "instance")


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = Database(settings.database_url)
    upgrade(db)
    yield db
    db.dispose()
