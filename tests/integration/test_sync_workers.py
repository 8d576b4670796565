"""The sync as deployed: two Celery workers on Redis share the streams through PostgreSQL leases.

Both workers run from the start. The one holding the Encounter stream is killed (SIGKILL, its whole process
group) while one of its page requests is in flight at the EHR, after pages of that stream were committed. The
other takes the stream over only once the dead holder's lease has lapsed, and goes on from the committed
cursor, not from the start. Redis is then restarted while the survivor is syncing that stream: it syncs on,
its EHR limits kept per process until Redis is back. At the end the snapshot's (type, id, versionId) equals
the server's exactly.

The EHR is the sandbox behind a fault-injecting proxy that holds each Encounter search for a moment, so a
stream outlasts the moment of the kill and the proxy sees which searches came when.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlmodel import select

from ehr_sandbox.config import SandboxConfig
from prm.models import Lease
from prm.snapshot_models import SyncStream
from tests.integration.sync_env import SyncEnv, small_dataset, sync_database
from tests.support.fault_proxy import FaultyEhr
from tests.support.ports import free_port
from tests.support.processes import Process, RedisServer, prm_process, stop_all, wait_until
from tests.support.settings import env_for
from workers.sync_run import iso

pytestmark = pytest.mark.serial  # a 6 s lease and a killed worker: alone, after the parallel part

TYPES = ("Organization", "Location", "PractitionerRole", "Patient", "RelatedPerson", "Encounter", "Appointment")
PAGE = 40  # 80 patients' 634 Encounters: 16 pages
SEARCH_HELD_S = 0.25  # each Encounter search held this long at the proxy: the stream takes seconds
LEASE_S = 6.0
ENCOUNTER_SEARCH = r"^/fhir/Encounter\?"
WORKERS = ("worker-1", "worker-2")


class Cluster:
    """The two workers, and what the database says of the Encounter stream and who holds its lease."""

    def __init__(self, env: SyncEnv, workers: dict[str, Process]) -> None:
        self.env = env
        self.workers = workers

    def holder_of(self, lease: Lease | None) -> str | None:
        """The worker whose process group the lease's holder (host:pid:thread) runs in."""
        if lease is None:
            return None
        try:
            group = os.getpgid(int(lease.holder.split(":")[1]))
        except ProcessLookupError:  # its process is gone
            return None
        return next((name for name, p in self.workers.items() if p.proc is not None and p.proc.pid == group), None)

    def lease(self, resource_type: str = "Encounter") -> Lease | None:
        with self.env.ctx.db.session() as session:
            return session.exec(select(Lease).where(Lease.name.endswith(f":{resource_type}"))).first()  # type: ignore[attr-defined]

    def encounters(self) -> SyncStream:
        with self.env.ctx.db.session() as session:
            return session.exec(select(SyncStream).where(SyncStream.resource_type == "Encounter")).one()


def test_two_workers_share_the_sync_and_a_killed_holders_stream_goes_on_from_its_cursor_through_a_redis_restart(
        tmp_path: Path) -> None:
    redis = RedisServer(free_port(), tmp_path / "logs").start()
    ehr = FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0), dataset=small_dataset(80)).start()
    processes: list[Process] = []
    try:
        with sync_database(ehr.stack, tmp_path) as env:
            settings = env.ctx.settings
            process_env = env_for(settings.database_url, tmp_path / "instance", PRM_REDIS_URL=redis.url,
                                  PRM_NOW=settings.now or "", PRM_SWEEP_INTERVAL_S="0.5", PRM_JOB_LEASE_S=str(LEASE_S),
                                  PRM_SYNC_PAGE_SIZE=str(PAGE), PRM_HEALTH_CHECK_INTERVAL_S="3600")
            workers = {name: prm_process(name, ["worker", "--concurrency", "2"], tmp_path / "logs", process_env,
                                         tmp_path) for name in WORKERS}
            cluster = Cluster(env, workers)
            held_by: set[str] = set()  # the workers seen holding a stream's lease before the kill
            killed: dict[str, object] = {}
            kill_lock = threading.Lock()

            def kill_the_holder_mid_page() -> None:
                """Run by the proxy as an Encounter search comes in, before it reaches the EHR: once pages of the
                stream are committed, the worker asking (the lease holder) is killed with this request in
                flight."""
                with kill_lock:
                    if killed:
                        return
                    stream = cluster.encounters()
                    holder = cluster.holder_of(cluster.lease())
                    if stream.phase != "initial" or stream.pages < 3 or holder is None:
                        return
                    workers[holder].stop(signal.SIGKILL)
                    killed.update(worker=holder, at=time.monotonic(), pages=stream.pages)

            ehr.proxy.add_fault(ENCOUNTER_SEARCH, times=10**6, delay_s=SEARCH_HELD_S, before=kill_the_holder_mid_page)
            ehr.proxy.add_fault(r"^/fhir/\w+\?", times=10**6, delay_s=0.1)  # every stream's lease held long enough
            # for the watch below to see who holds it
            for process in (prm_process("beat", ["beat"], tmp_path / "logs", process_env, tmp_path),
                            *workers.values()):
                processes.append(process.start())

            def watch_leases() -> bool:
                with env.ctx.db.session() as session:
                    for lease in session.exec(select(Lease).where(Lease.name.contains(":"))):  # type: ignore[attr-defined]
                        if (name := cluster.holder_of(lease)) is not None:
                            held_by.add(name)
                return bool(killed)

            wait_until(watch_leases, 90, interval_s=0.05, what="the Encounter stream's holder killed mid-page")
            dead = str(killed["worker"])
            survivor = next(name for name in WORKERS if name != dead)
            assert held_by == set(WORKERS), "both workers took streams before the kill"
            assert not workers[dead].alive() and workers[survivor].alive()
            time.sleep(0.5)  # a COMMIT the dead worker sent just before the kill has landed; its lease has 4.5 s left
            stale = cluster.lease()  # the dead holder's: it renews no more
            committed = cluster.encounters()
            assert stale is not None and stale.expires_at is not None and committed.cursor is not None
            assert committed.phase == "initial" and committed.pages >= int(str(killed["pages"]))

            wait_until(lambda: cluster.holder_of(cluster.lease()) == survivor, 60, interval_s=0.05,
                       what=f"{survivor} taking the Encounter stream over")
            taken = cluster.lease()
            assert taken is not None and taken.expires_at is not None
            assert taken.expires_at - timedelta(seconds=LEASE_S) >= stale.expires_at, \
                "taken over only once the dead holder's lease had lapsed"
            killed_at = float(str(killed["at"]))
            after_kill = [(at, target) for at, method, target in list(ehr.proxy.arrivals)
                          if method == "GET" and at > killed_at + 1.0 and target.startswith("/fhir/Encounter?")]
            assert after_kill, "the survivor's first Encounter search has come"
            first = parse_qs(urlsplit(after_kill[0][1]).query)
            assert f"ge{iso(committed.cursor)}" in first["_lastUpdated"], \
                "the survivor went on from the committed cursor, not from the start"

            assert cluster.encounters().phase == "initial", "Redis goes while the survivor syncs the stream"
            redis.stop()
            outage = (time.monotonic(), 0.0)
            time.sleep(2.0)
            outage = (outage[0], time.monotonic())
            redis.start()
            during = [at for at, method, target in list(ehr.proxy.arrivals)
                      if outage[0] <= at <= outage[1] and target.startswith("/fhir/Encounter?")]
            assert during, "the survivor went on syncing while Redis was away"

            wait_until(lambda: all(env.snapshot(t) == env.server(t) for t in TYPES), 180, interval_s=2,
                       what="the snapshot to equal the server")
            finished = cluster.encounters()
            assert finished.phase == "incremental" and finished.last_success_at is not None
            assert "Redis unreachable" in workers[survivor].log_path.read_text(errors="replace")
    finally:
        stop_all(processes, redis, tails={name: 20 for name in ("beat", *WORKERS)})
        ehr.stop()
