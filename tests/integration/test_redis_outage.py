"""Losing Redis loses no pending work: due health checks wait in PostgreSQL and each runs exactly once.

Real parts only: a private redis-server, `prm worker` and `prm beat` (Celery) as processes, PostgreSQL,
and the sandbox EHR as the connection being checked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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


def test_stopping_redis_loses_no_due_health_check(pg_database: Database, sandbox: SandboxStack,
                                                  tmp_path: Path) -> None:
    redis = RedisServer(free_port(), tmp_path / "logs").start()
    now_setting = running_from(datetime(2026, 11, 20, 12, tzinfo=UTC))
    clock = clock_from_setting(now_setting)
    with pg_database.session() as session:
        box = SecretBox((TEST_KEY,))
        for name, iss in (("sandbox", sandbox.iss), ("unreachable", f"http://127.0.0.1:{free_port()}/fhir")):
            connections.upsert(session, clock, box, connections.ConnectionSpec(name=name, iss=iss, client_id="c"))
    env = env_for(pg_database.url, tmp_path / "instance", PRM_REDIS_URL=redis.url, PRM_NOW=now_setting,
                  PRM_HEALTH_CHECK_INTERVAL_S=str(INTERVAL_S), PRM_SWEEP_INTERVAL_S="0.5", PRM_JOB_LEASE_S="8",
                  PRM_HTTP_TIMEOUT_S="2")
    workers: list[Process] = [
        prm_process("worker", ["worker", "--concurrency", "2"], tmp_path / "logs", env, tmp_path),
        prm_process("beat", ["beat"], tmp_path / "logs", env, tmp_path),
    ]
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
        for process in workers:
            process.stop()
        redis.stop()
        for process in workers:
            print(f"--- {process.name} log tail ---\n{process.log_tail(60)}")
