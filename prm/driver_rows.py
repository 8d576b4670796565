"""Many rows through one compiled statement, without SQLAlchemy's per-row parameter bookkeeping (SQLite).

Why: executing a statement for a list of dicts, SQLAlchemy builds and processes every row's parameters in
Python, ~50 µs a snapshot row; on SQLite a bulk load's pages spent more time there than in the database.
Here SQLAlchemy still builds and compiles the statement (the SQL is the same), and every value still goes
through its column type's own bind processor (the stored values are the same); only the per-row
bookkeeping is skipped, and `exec_driver_sql` hands the tuples to the driver's `executemany`.
PostgreSQL has its own fast path (prm.pg_copy); a dialect with named parameters is not served here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlmodel import Session


@dataclass(frozen=True)
class DriverStatement:
    """A compiled statement's SQL, its parameters' row keys in order, and each one's bind processor."""

    sql: str
    keys: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def parameters(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Each row as the driver's positional tuple (a missing key is a KeyError, as in SQLAlchemy)."""
        pairs = list(zip(self.keys, self.processors, strict=True))
        return [tuple(row[key] if process is None else process(row[key]) for key, process in pairs)
                for row in rows]

    def execute(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        session.connection().exec_driver_sql(self.sql, self.parameters(rows))


def driver_statement(statement: ClauseElement, dialect: Dialect, column_keys: Sequence[str]) -> DriverStatement | None:
    """`statement` compiled for rows with `column_keys`; None when the dialect's parameters are not positional."""
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(column_keys))
    if not compiled.positional or compiled.positiontup is None:
        return None
    binds = [compiled.binds[name] for name in compiled.positiontup]
    return DriverStatement(
        sql=compiled.string,
        keys=tuple(bind.key for bind in binds),
        processors=tuple(bind.type.dialect_impl(dialect).bind_processor(dialect) for bind in binds),
    )
