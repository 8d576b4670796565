"""A throwaway PostgreSQL database per test run on the machine's cluster (role prm, see scripts/provision)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg.errors

ADMIN_URL = os.environ.get("PRM_TEST_PG_ADMIN_URL", "postgresql://prm:prm@127.0.0.1:5432/postgres")


@contextmanager
def fresh_database(prefix: str = "prm_test") -> Iterator[str]:
    """Create an empty database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        drop_database(name)


def drop_database(name: str, attempts: int = 20) -> None:
    """DROP ... WITH (FORCE) ends our own sessions, but role prm may not end an autovacuum worker (a superuser
    process) that has just started on the database: wait for it briefly and drop again; fail if it stays."""
    for attempt in range(attempts):
        try:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
