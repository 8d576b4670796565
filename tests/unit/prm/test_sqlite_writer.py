"""SQLite writers of one process queue on the file's lock: held from a transaction's first write to its end."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from prm import sqlite_writer
from prm.db import Database
from prm.sqlite_writer import WriterConnection, lock_for


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    file = tmp_path / "writers.db"
    setup = sqlite3.connect(file)
    setup.executescript("PRAGMA journal_mode=WAL; CREATE TABLE counter (k INTEGER PRIMARY KEY, v INTEGER);"
                        "INSERT INTO counter VALUES (1, 0);")
    setup.close()
    yield file


def connect(path: Path, busy_timeout_s: float = 5.0) -> WriterConnection:
    return sqlite3.connect(path, factory=WriterConnection, check_same_thread=False, timeout=busy_timeout_s)


def test_the_lock_is_held_from_the_first_write_to_commit_and_reads_never_take_it(path: Path) -> None:
    lock, connection = lock_for(path), connect(path)
    connection.execute("SELECT v FROM counter").fetchall()
    assert not lock.locked()
    connection.execute("UPDATE counter SET v = v + 1")
    assert lock.locked()
    connection.execute("update counter set v = v + 1")  # the same transaction: taken once, still held
    connection.commit()
    assert not lock.locked()
    assert connection.execute("SELECT v FROM counter").fetchone() == (2,)


@pytest.mark.parametrize("end", ["rollback", "close"])
def test_a_rolled_back_or_closed_transaction_gives_the_lock_back(path: Path, end: str) -> None:
    connection = connect(path)
    connection.cursor().executemany("INSERT INTO counter VALUES (?, 0)", [(2,), (3,)])
    assert lock_for(path).locked()
    getattr(connection, end)()
    assert not lock_for(path).locked()
    assert connect(path).execute("SELECT count(*) FROM counter").fetchone() == (1,)


def test_a_write_that_fails_before_its_transaction_begins_gives_the_lock_back(path: Path) -> None:
    connection = connect(path)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        connection.execute("DELETE FROM no_such_table")
    assert not connection.in_transaction
    assert not lock_for(path).locked()


def test_a_second_write_in_the_same_thread_says_locked_instead_of_waiting_forever(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_writer, "WAIT_S", 0.05)
    first, second = connect(path), connect(path)
    first.execute("UPDATE counter SET v = 1")
    with pytest.raises(sqlite3.OperationalError, match="another thread of this process"):
        second.execute("UPDATE counter SET v = 2")
    first.commit()
    second.execute("UPDATE counter SET v = 2")
    second.commit()
    assert first.execute("SELECT v FROM counter").fetchone() == (2,)


def test_a_writer_in_another_thread_goes_on_once_the_holder_commits(path: Path) -> None:
    """SQLite's own busy handler is off (timeout 0: it would say "locked" at once): the queue does the waiting."""
    holder = connect(path, busy_timeout_s=0)
    holder.execute("UPDATE counter SET v = 10")
    started, wrote = threading.Event(), threading.Event()

    def write() -> None:
        other = connect(path, busy_timeout_s=0)
        started.set()
        other.execute("UPDATE counter SET v = v + 1")
        other.commit()
        wrote.set()

    thread = threading.Thread(target=write)
    thread.start()
    started.wait()
    assert not wrote.wait(0.2)  # queued behind the holder, not failed
    holder.commit()
    thread.join()
    assert wrote.is_set()
    assert holder.execute("SELECT v FROM counter").fetchone() == (11,)


def test_files_share_a_lock_by_their_real_path_and_memory_databases_share_none(path: Path) -> None:
    link = path.parent / "link.db"
    link.symlink_to(path)
    assert lock_for(path) is lock_for(link) is lock_for(str(path))
    assert lock_for(":memory:") is not lock_for(":memory:")


def test_many_threads_writing_through_the_database_all_commit(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'app.db'}")
    with database.session() as session:
        session.execute(text("CREATE TABLE counter (k INTEGER PRIMARY KEY, v INTEGER)"))
        session.execute(text("INSERT INTO counter VALUES (1, 0)"))
    assert isinstance(database.engine.raw_connection().driver_connection, WriterConnection)
    failures: list[BaseException] = []

    def add(times: int) -> None:
        try:
            for _ in range(times):
                with database.session() as session:
                    session.execute(text("SELECT v FROM counter")).scalar_one()
                    session.execute(text("UPDATE counter SET v = v + 1"))
        except BaseException as exc:  # kept for the assertion below: a thread's exception is otherwise only printed
            failures.append(exc)

    threads = [threading.Thread(target=add, args=(50,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with database.session() as session:
        assert session.execute(text("SELECT v FROM counter")).scalar_one() == 300
    database.dispose()
