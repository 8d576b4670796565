"""Losing Redis loses no pending work: due health checks wait in PostgreSQL and each runs exactly once.

Real parts only: a private redis-server, `prm worker` and `prm beat` (Celery) as processes, PostgreSQL,
and the sandbox EHR as the connection being checked.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import col, select

from ehr_sandbox.stack import SandboxStack
from prm import connections
from prm.clock import clock_from_setting, running_from
from prm.crypto import SecretBox
from prm.db import Database
from prm.migrate import upgrade
from prm.models import Connection, Job
from tests.support.ports import free_port
from tests.support.postgres import fresh_database
from tests.support.processes import Process, RedisServer, prm_process, wait_until
from tests.support.settings import TEST_KEY, env_for

pytestmark = pytest.mark.serial  # Redis stopped under a 2 s check interval: alone, after the parallel part

INTERVAL_S = 2.0


@pytest.fixture
def pg_database() -> Iterator[Database]:
    with fresh_database() as url:
        db = Database(url)
        upgrade(db)
        yield db
        db.dispose()


def done_jobs(db: Database) -> list[Job]:
    with db.session() as session:
        return list(session.exec(select(Job).where(Job.status == "done")))


def start_workers(db: Database, sandbox: SandboxStack, tmp_path: Path,
                  redis: RedisServer) -> tuple[list[Process], Callable[[], datetime]]:
    """Two connections (the sandbox and one nobody answers), health checks every INTERVAL_S, and the
    processes `prm worker` and `prm beat`, not yet started."""
    now_setting = running_from(datetime(2026, 11, 20, 12, tzinfo=UTC))
    with db.session() as session:
        box = SecretBox((TEST_KEY,))
        for name, iss in (("sandbox", sandbox.iss), ("unreachable", f"http://127.0.0.1:{free_port()}/fhir")):
            connections.upsert(session, clock_from_setting(now_setting), box,
                               connections.ConnectionSpec(name=name, iss=iss, client_id="c"))
    env = env_for(db.url, tmp_path / "instance", PRM_REDIS_URL=redis.url, PRM_NOW=now_setting,
                  PRM_HEALTH_CHECK_INTERVAL_S=str(INTERVAL_S), PRM_SWEEP_INTERVAL_S="0.5", PRM_JOB_LEASE_S="8",
                  PRM_HTTP_TIMEOUT_S="2")
    return [
        prm_process("worker", ["worker", "--concurrency", "2"], tmp_path / "logs", env, tmp_path),
        prm_process("beat", ["beat"], tmp_path / "logs", env, tmp_path),
    ], clock_from_setting(now_setting)


def stop_and_show(workers: list[Process], redis: RedisServer) -> None:
    for process in workers:
        process.stop()
    redis.stop()
    for process in workers:
        print(f"--- {process.name} log tail ---\n{process.log_tail(60)}")


def test_stopping_redis_loses_no_due_health_check(pg_database: Database, sandbox: SandboxStack,
                                                  tmp_path: Path) -> None:
    redis = RedisServer(free_port(), tmp_path / "logs").start()
    workers, clock = start_workers(pg_database, sandbox, tmp_path, redis)
    try:
        for process in workers:
            process.start()
        wait_until(lambda: {j.subject_id for j in done_jobs(pg_database)} >= {1, 2}, 60,
                   what="first health checks of both connections")

        redis.stop()
        stopped_at = clock()
        time.sleep(3 * INTERVAL_S)
        with pg_database.session() as session:
            waiting = list(session.exec(select(Job).where(Job.status == "pending", col(Job.due_at) <= clock())))
        assert {j.subject_id for j in waiting} == {1, 2}, "each connection has a check due while Redis is down"
        ran_during_outage = [j for j in done_jobs(pg_database)
                             if j.finished_at and (j.finished_at - stopped_at).total_seconds() > 2]
        assert ran_during_outage == []

        redis.start()
        waiting_ids = {j.id for j in waiting}
        # Celery's reconnect back-off grows while Redis is down, and a loaded 2-core CI machine is slow to
        # restart it: the wait is generous; the assertions below are what matter.
        wait_until(lambda: waiting_ids <= {j.id for j in done_jobs(pg_database)}, 240,
                   what="the checks that fell due during the outage")
        time.sleep(1.5)  # give any duplicate wake-up the chance to (wrongly) run a job again
        with pg_database.session() as session:
            jobs = list(session.exec(select(Job)))
            health = {c.name: c for c in session.exec(select(Connection))}
        assert all(j.runs <= 1 for j in jobs), [(j.id, j.runs) for j in jobs if j.runs > 1]
        assert all(j.runs == 1 for j in jobs if j.id in waiting_ids)
        assert health["sandbox"].health_status == "ok"
        assert health["unreachable"].health_status == "failing"
        assert all(c.health_checked_at and c.health_checked_at > stopped_at for c in health.values())
    finally:
        stop_and_show(workers, redis)


def celery_child(supervisor: Process) -> int:
    """The pid of the Celery process `prm worker` runs under its supervisor."""
    pid = supervisor.proc.pid if supervisor.proc else 0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_a_worker_that_ends_by_itself_is_started_again(pg_database: Database, sandbox: SandboxStack,
                                                       tmp_path: Path) -> None:
    """What a broker restart can do to Celery (see workers.supervisor): its worker ends with status 0.

    The end is provoked here the same way, a warm shutdown of the Celery process alone, not of `prm worker`.
    """
    redis = RedisServer(free_port(), tmp_path / "logs").start()
    workers, _clock = start_workers(pg_database, sandbox, tmp_path, redis)
    worker = workers[0]
    try:
        for process in workers:
            process.start()
        wait_until(lambda: {j.subject_id for j in done_jobs(pg_database)} >= {1, 2}, 60,
                   what="first health checks of both connections")
        first_celery = celery_child(worker)
        os.kill(first_celery, signal.SIGTERM)
        wait_until(lambda: "ended by itself with status 0" in worker.log_tail(400), 30,
                   what="the supervisor to see the worker end")
        done_before = {j.id for j in done_jobs(pg_database)}
        wait_until(lambda: {j.subject_id for j in done_jobs(pg_database) if j.id not in done_before} >= {1, 2}, 90,
                   what="health checks run by the restarted worker")
        assert worker.alive()
        assert celery_child(worker) != first_celery
        with pg_database.session() as session:
            jobs = list(session.exec(select(Job)))
        assert all(j.runs <= 1 for j in jobs), [(j.id, j.runs) for j in jobs if j.runs > 1]
    finally:
        stop_and_show(workers, redis)
