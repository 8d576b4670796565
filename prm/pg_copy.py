"""PostgreSQL's fast paths for a large snapshot page.

`copy_upsert`: COPY the rows into a temporary table, then one `INSERT ... SELECT ... ON CONFLICT` from it,
under the same version rule as the ordinary upsert. Why: a multi-row INSERT of a 500-row page binds ~10,000
parameters that PostgreSQL parses and plans each time; COPY streams the rows and the upsert is one short
statement. A bulk first load stored pages about twice as fast this way. Column types come from the real
table (`CREATE TEMP TABLE ... AS ... WITH NO DATA`), and the temporary table lives for the session, emptied
at each commit.

`copy_insert`: a first load's rows are new, so they can go straight into the table, without the staging
table and the upsert (a 500-row Encounter page ~12.3 ms -> ~9 ms, its transaction included). A row already
there (a first load cut off and resumed, an id twice in one export) aborts the COPY: its savepoint is rolled
back, nothing of the page is written, and the caller upserts it instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors, sql
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
    raw = _psycopg(session)
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
        # The next page in this transaction starts empty. DELETE, not TRUNCATE: a TRUNCATE gives the table new
        # files each time (~1.5 ms a page); the few dead rows go at commit (ON COMMIT DELETE ROWS).
        cursor.execute(sql.SQL("DELETE FROM {}").format(staging))


def copy_insert(session: Session, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bool:
    """COPY `rows` (as for `copy_upsert`) straight into `table`: True when every one was new and is now there;
    False when one's key was already taken, with nothing of them written (the caller upserts them)."""
    raw = _psycopg(session)
    with raw.cursor() as cursor:
        cursor.execute("SAVEPOINT prm_copy_insert")
        try:
            with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(table.name), sql.SQL(", ").join(sql.Identifier(c) for c in columns))) as copy:
                for row in rows:
                    copy.write_row(row)
        except errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT prm_copy_insert")
            return False
        cursor.execute("RELEASE SAVEPOINT prm_copy_insert")
    return True


def _psycopg(session: Session) -> psycopg.Connection[Any]:
    raw = session.connection().connection.dbapi_connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError(f"COPY needs a psycopg connection, not {type(raw).__name__}")
    return raw
