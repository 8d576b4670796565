"""The sync as deployed: Celery workers on Redis share the streams through PostgreSQL leases.

A worker killed (SIGKILL) mid-page while it holds a stream's lease is replaced by another that takes over
from the last committed cursor; Redis restarted mid-sync loses nothing. After each, the snapshot's
(type, id, versionId) equals the server's exactly.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sqlmodel import select

from prm.models import Lease
from prm.snapshot_models import SyncStream
from tests.integration.sync_env import sync_env
from tests.support.ports import free_port
from tests.support.processes import Process, RedisServer, prm_process, wait_until
from tests.support.settings import env_for

pytestmark = pytest.mark.serial  # a 6 s lease and a killed worker: alone, after the parallel part

TYPES = ("Organization", "Location", "PractitionerRole", "Patient", "RelatedPerson", "Encounter", "Appointment")


def test_a_killed_lease_holder_and_a_redis_restart_lose_nothing(tmp_path: Path) -> None:
    redis = RedisServer(free_port(), tmp_path / "logs").start()
    with sync_env(tmp_path) as env:
        settings = env.ctx.settings
        process_env = env_for(settings.database_url, tmp_path / "instance", PRM_REDIS_URL=redis.url,
                              PRM_NOW=settings.now or "", PRM_SWEEP_INTERVAL_S="0.5", PRM_JOB_LEASE_S="6",
                              PRM_SYNC_PAGE_SIZE="40", PRM_HEALTH_CHECK_INTERVAL_S="3600")

        def worker(name: str) -> Process:
            return prm_process(name, ["worker", "--concurrency", "2"], tmp_path / "logs", process_env, tmp_path)

        beat = prm_process("beat", ["beat"], tmp_path / "logs", process_env, tmp_path).start()
        first = worker("worker-1").start()
        second: Process | None = None
        try:
            def encounter_lease_holder() -> str | None:
                with env.ctx.db.session() as session:
                    lease = session.exec(select(Lease).where(Lease.name.endswith(":Encounter"))).first()  # type: ignore[attr-defined]
                    return lease.holder if lease is not None else None

            wait_until(lambda: encounter_lease_holder() is not None, 90, interval_s=0.05,
                       what="worker-1 syncing Encounters")
            time.sleep(0.3)  # mid-page, most likely
            first.stop(signal.SIGKILL)
            killed_at = settings.clock()  # the whole process group: main process and pool (leases stay behind)
            second = worker("worker-2").start()

            redis.stop()  # and Redis goes away mid-sync too
            time.sleep(2)
            redis.start()

            def in_step() -> bool:
                return all(env.snapshot(t) == env.server(t) for t in TYPES)

            wait_until(in_step, 180, interval_s=2, what="the snapshot to equal the server")
            with env.ctx.db.session() as session:  # the stream worker-1 held was finished by worker-2
                encounters = session.exec(select(SyncStream).where(SyncStream.resource_type == "Encounter")).one()
            assert encounters.last_success_at is not None and encounters.last_success_at > killed_at
        finally:
            for process in (beat, first, second):
                if process is not None:
                    process.stop()
            redis.stop()
            for process in (beat, first, second):
                if process is not None:
                    print(f"--- {process.name} ---\n{process.log_tail(20)}")
