"""PostgreSQL's fast path for a large snapshot page: COPY the rows into a temporary table, then one
`INSERT ... SELECT ... ON CONFLICT` from it, under the same version rule as the ordinary upsert.

Why: a multi-row INSERT of a 500-row page binds ~10,000 parameters that PostgreSQL parses and plans each
time; COPY streams the rows and the upsert is one short statement. A bulk first load stored pages about
twice as fast this way. Column types come from the real table (`CREATE TEMP TABLE ... AS ... WITH NO
DATA`), and the temporary table lives for the session, emptied at each commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Table
from sqlmodel import Session

COPY_FROM_ROWS = 200  # below this, the ordinary multi-row upsert is as quick


def copy_upsert(session: Session, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                key: list[str]) -> None:
    """Upsert `rows` (tuples of driver values in `columns` order, JSON already text, keys unique; see
    prm.snapshot_rows) into `table`: newer-or-equal wins."""
    staging = sql.Identifier(f"prm_copy_{table.name}")
    target = sql.Identifier(table.name)
    names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    raw = session.connection().connection.dbapi_connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError(f"COPY needs a psycopg connection, not {type(raw).__name__}")
    with raw.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
                               "SELECT {} FROM {} WITH NO DATA").format(staging, names, target))
        with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(staging, names)) as copy:
            for row in rows:
                copy.write_row(row)
        updates = sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                                     for c in columns if c not in key)
        cursor.execute(sql.SQL(
            "INSERT INTO {target} ({names}) SELECT {names} FROM {staging} "
            "ON CONFLICT ({key}) DO UPDATE SET {updates} "
            "WHERE {target}.last_updated IS NULL OR EXCLUDED.last_updated IS NULL "
            "OR EXCLUDED.last_updated >= {target}.last_updated").format(
                target=target, names=names, staging=staging, updates=updates,
                key=sql.SQL(", ").join(sql.Identifier(k) for k in key)))
        cursor.execute(sql.SQL("TRUNCATE {}").format(staging))  # the next page in this transaction starts empty
