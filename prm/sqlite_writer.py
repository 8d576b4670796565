"""One writer at a time per SQLite file within this process, queued on a lock rather than in SQLite's busy handler.

Why: SQLite lets one connection write at a time. A second writer that finds the file locked sleeps in SQLite's
busy handler between tries, 1, 2, 5, 10, 15, 20, 25 ms and on, however soon the first one commits, and the
unlucky keep losing to whoever tries in between. Nine sync threads taking their streams' leases at once waited up
to 80 ms for locks held well under a millisecond, in an incremental sync of ~0.1 s. Here the threads of one
process queue on a lock and go on the moment the writer before them commits or rolls back (bench/sqlite_writers.py).
Other processes still meet SQLite's busy handler, as before.

The lock is taken where Python's sqlite3 (legacy transaction control, as SQLAlchemy uses it) opens a transaction
by itself: before an INSERT, UPDATE, DELETE or REPLACE (its first word, as sqlite3 judges) outside one. Reads
never take it (WAL readers need no lock), and it is given back when the transaction ends: commit, rollback, a
statement that failed before it began, or the connection closing.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

WAIT_S = 15.0  # as long as SQLite's own busy timeout (`prm.db`): a writer waits this long before "locked"
_OPENS_TRANSACTION = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def lock_for(database: str | bytes | os.PathLike[Any]) -> threading.Lock:
    """The process's write lock for one SQLite file (found by its real path); a fresh lock for an in-memory or
    URI database, which no other connection can share by name here."""
    name = os.fsdecode(database)
    if name in ("", ":memory:") or name.startswith("file:"):
        return threading.Lock()
    key = os.path.realpath(name)
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


class WriterConnection(sqlite3.Connection):
    """A sqlite3 connection whose write transactions queue on the file's lock (`sqlite3.connect(factory=...)`)."""

    def __init__(self, database: str | bytes | os.PathLike[Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._write_lock = lock_for(database)
        self._holding = False

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or WriterCursor)

    # sqlite3's shortcuts run their statement in C, past the cursor's methods: they go through `cursor()` here.
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def before_statement(self, sql: str) -> None:
        """Take the write lock before a statement that opens a write transaction; "database is locked" (as SQLite
        says it) when another thread of this process has written for longer than WAIT_S."""
        if self._holding or self.in_transaction or not _OPENS_TRANSACTION.match(sql):
            return
        if not self._write_lock.acquire(timeout=WAIT_S):
            raise sqlite3.OperationalError(
                f"database is locked: another thread of this process has held the write lock for {WAIT_S:.0f} s")
        self._holding = True

    def after_statement(self) -> None:
        """Give the lock back if no transaction is open after all (the statement failed before it began)."""
        if self._holding and not self.in_transaction:
            self._release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.after_statement()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.after_statement()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._holding:
                self._release()

    def _release(self) -> None:
        self._holding = False
        self._write_lock.release()


class WriterCursor(sqlite3.Cursor):
    """Runs each statement between its connection's `before_statement` and `after_statement`."""

    connection: WriterConnection

    def execute(self, sql: str, parameters: Any = (), /) -> WriterCursor:
        return self._between(super().execute, sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> WriterCursor:
        return self._between(super().executemany, sql, seq_of_parameters)

    def _between(self, run: Callable[[str, Any], object], sql: str, parameters: Any) -> WriterCursor:
        self.connection.before_statement(sql)
        try:
            run(sql, parameters)
        finally:
            self.connection.after_statement()
        return self
