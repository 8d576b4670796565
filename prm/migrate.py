"""Schema migrations by Alembic, callable from the CLI, the app's start-up check and the tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from prm.db import Database
from prm.errors import StorageError

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema to `revision`; the same migrations serve SQLite and PostgreSQL."""
    config = alembic_config(database.url)
    try:
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        raise StorageError(f"migration failed: {exc}") from exc


def pending_revisions(database: Database) -> list[str]:
    """Revisions not yet applied; empty means the schema is current."""
    script = ScriptDirectory.from_config(alembic_config(database.url))
    with database.engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    heads = set(script.get_heads())
    if current == heads:
        return []
    return [rev.revision for rev in script.walk_revisions() if rev.revision not in current]
