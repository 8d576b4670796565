"""One engine per database URL, one session per unit of work, and work enqueued only after commit.

Enqueueing after commit matters: a worker woken before the commit would find no row, and a row
rolled back must never have been announced. Pending work itself lives in the database, so an
enqueue that fails (Redis down) loses nothing: the sweeper finds the row later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import cast, event, exists, false, func, literal, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Session, create_engine, select

from prm.errors import StorageError
from prm.sqlite_writer import WAIT_S, WriterConnection

log = logging.getLogger(__name__)

_AFTER_COMMIT_KEY = "prm_after_commit"


def json_text(value: Any) -> str:
    """JSON columns as orjson writes them: a sync page stores thousands of small lists, and the standard
    encoder was a tenth of its cost. Non-string keys become strings, as `json.dumps` makes them."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone; we restore UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database: use aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whichever spelling the user wrote."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


_SQLITE_SYNC = "FULL"  # every commit reaches the disk before it returns (WAL is appended and synced)
_RELAXED_KEY = "prm_relaxed_commit"


def _relax_commit(session: Session) -> None:
    """This transaction's commit returns before its WAL reaches the disk (SQLite `synchronous=NORMAL`,
    PostgreSQL `synchronous_commit=off`): a power cut may lose it, never corrupt it, and every commit after
    it that does wait brings it to the disk too. The write-ahead log keeps commits in order, so whatever
    survives has everything committed before it (a page's audit record, the cursor it moved)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
        connection.info[_RELAXED_KEY] = True  # restored when the connection goes back to the pool
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")  # this transaction only


def configure_sqlite(engine: Engine) -> None:
    """The pragmas every SQLite connection gets (WAL, foreign keys, busy timeout, durable commits)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(WAIT_S * 1000)}")
        cursor.execute(f"PRAGMA synchronous={_SQLITE_SYNC}")  # said, not assumed: a relaxed commit restores it
        cursor.close()

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        if record.info.pop(_RELAXED_KEY, False):  # the pool never hands out a relaxed connection
            dbapi_connection.execute(f"PRAGMA synchronous={_SQLITE_SYNC}")


def offline_dialect(name: str) -> Dialect:
    """The dialect an engine for `name` ("sqlite" or "postgresql") binds values with, built without a database:
    a page helper process encodes snapshot rows with it exactly as the worker's engine would."""
    drivers = {"sqlite": "sqlite://", "postgresql": "postgresql+psycopg://"}
    if name not in drivers:
        raise ValueError(f"no offline dialect for {name!r}")
    return create_engine(drivers[name], json_serializer=json_text).dialect  # connects to nothing


class Database:
    """The engine and the unit-of-work helper for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        if self.url.startswith("sqlite"):
            self._make_parent_folder()
            self.engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": WAIT_S,
                                                                "factory": WriterConnection},
                                        json_serializer=json_text)
            configure_sqlite(self.engine)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=10, max_overflow=10,
                                        json_serializer=json_text)

    def _make_parent_folder(self) -> None:
        """The embedded default keeps its SQLite file in the instance folder; create it on first use."""
        from pathlib import Path

        from sqlalchemy.engine import make_url

        database = make_url(self.url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def ping(self) -> None:
        """Fail with StorageError (one line, no traceback needed) when the database is unreachable."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StorageError(f"database unreachable ({self.engine.url.render_as_string()}): "
                               f"{error_line(exc)}") from exc

    @contextmanager
    def session(self, *, refetchable: bool = False) -> Iterator[Session]:
        """A session that commits on success, rolls back on error, and then runs after-commit hooks.

        `refetchable`: the transaction writes only what the EHR hands over again if it is lost (a sync page,
        with its cursor and its audit record), so its commit does not wait for the disk (`_relax_commit`).
        A bulk first load commits a page every few milliseconds; waiting for the disk each time cost more than
        storing the page. Everything else, PRM work above all, is committed durably."""
        session = Session(self.engine, expire_on_commit=False)
        try:
            if refetchable:
                _relax_commit(session)
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            session.info.pop(_AFTER_COMMIT_KEY, None)
            raise
        finally:
            hooks: list[Callable[[], None]] = session.info.pop(_AFTER_COMMIT_KEY, [])
            session.close()
        for hook in hooks:
            try:
                hook()
            except Exception:
                # The row is committed and the sweeper will find it; say so loudly, do not fail the request.
                log.exception("after-commit hook failed; the sweeper will pick the work up")

    def dispose(self) -> None:
        self.engine.dispose()


def enqueue_after_commit(session: Session, hook: Callable[[], None]) -> None:
    """Run `hook` once the session's transaction has committed (never if it rolls back)."""
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(hook)


def _insert_ignoring(session: Session, table: Any, conflict: list[str] | None) -> Any:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING, in the session's dialect; `None` ignores a conflict with
    any unique index (a partial one included), not just the one named."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=conflict)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=conflict)


def error_line(exc: SQLAlchemyError) -> str:
    """The database's own first line about what went wrong (no SQL, no parameters: those may hold PHI)."""
    original = getattr(exc, "orig", None)
    reason = (str(original) if original is not None else str(exc)).strip()
    return reason.splitlines()[0] if reason else type(exc).__name__


IDS_PER_STATEMENT = 500  # values in one `IN (...)`: far below PostgreSQL's limit (65,535) and SQLite's (by build)


def json_list_has_any(session: Session, column: Any, values: Sequence[str]) -> Any:
    """A condition: the JSON list of strings in `column` holds one of `values`, evaluated by the database
    (PostgreSQL's jsonb `?|`; SQLite's json_each), so a query can order, limit and count by it."""
    if not values:
        return false()  # PostgreSQL cannot type an empty ARRAY[]; nothing is in an empty list anyway
    if session.get_bind().dialect.name == "postgresql":
        return cast(column, JSONB).has_any(postgresql.array(list(values)))
    items = func.json_each(column).table_valued("value")
    return exists(select(literal(1)).select_from(items).where(items.c.value.in_(list(values))))


def json_list_has(session: Session, column: Any, value: Any) -> Any:
    """A condition: the JSON list of strings in `column` holds `value`, an expression of the same row (PostgreSQL's
    jsonb `?`; SQLite's json_each)."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(column, JSONB).has_key(value)
    items = func.json_each(column).table_valued("value")
    return exists(select(literal(1)).select_from(items).where(items.c.value == value))


def in_chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    """`ids` a statement's worth at a time, so a list of any length stays under the limits on bound parameters
    (a mass deletion at the EHR hands the sync tens of thousands at once)."""
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        yield list(ids[start:start + IDS_PER_STATEMENT])


def insert_ignore(session: Session, table: Any, values: dict[str, Any], conflict: list[str] | None) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on either backend; True when a row was inserted.

    This is how idempotent writes are made without savepoints or read-then-write races.
    """
    stmt = _insert_ignoring(session, table, conflict).values(**values)
    # rowcount is unreliable with implicit RETURNING (psycopg reports -1); ask for the key instead.
    result = session.execute(stmt.returning(*table.primary_key.columns))
    return result.first() is not None


def insert_ignore_many(session: Session, table: Any, rows: list[dict[str, Any]], conflict: list[str]) -> None:
    """`insert_ignore` for many rows in one executemany (rows already there are left as they are)."""
    if rows:
        session.execute(_insert_ignoring(session, table, conflict), rows)


def insert_once(session: Session, model: Any, values: dict[str, Any], key: list[str]) -> tuple[Any, bool]:
    """Insert a row unless one with the same `key` columns exists; (the row, True when inserted now).

    The idempotent creation every producer needs: a retried request finds the first row, never a second.
    """
    created = insert_ignore(session, model.__table__, values, key)
    query = select(model).where(*(getattr(model, column) == values[column] for column in key))
    return session.exec(query).one(), created
