"""The sync's fault scenarios of test_sync_faults, run as deployed: `prm beat` plans the sync jobs and a real
`prm worker` (Celery on a private Redis) runs them, against the sandbox EHR behind a fault-injecting proxy.

During the first load the proxy answers 429 with Retry-After, 500, 503, a body cut mid-transfer (Content-Length
promises more), a complete answer whose JSON is cut short, a body that never comes (timeout), a dropped connection
and invalid resources, and on the search path the EHR changes and deletes Encounters between two windows; on the
bulk path also a 503 on the kick-off, a 429 on the status, an NDJSON file cut mid-transfer and a garbled NDJSON
line.

Nobody drives the sync but the worker: the test only waits until every stream has finished its first load, then
checks that each fault was served, that the snapshot's (type, id, versionId) equals the server's exactly (less the
quarantined resources), that the invalid resources are quarantined, and that the faults were absorbed by polite
retries: no stream run ever ended in an error.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from ehr_sandbox.config import SandboxConfig
from prm import connections, streams
from tests.integration.sync_env import SyncEnv, small_dataset, sync_database
from tests.support.fault_proxy import Fault, FaultProxy, FaultyEhr
from tests.support.ports import free_port
from tests.support.processes import Process, RedisServer, prm_process, stop_all, wait_until
from tests.support.settings import env_for
from workers.connection_check import check_connection

TYPES = ("Organization", "Location", "PractitionerRole", "Patient", "RelatedPerson", "Encounter", "Appointment")
PAGE = 40  # 80 patients: several windows for Encounter (634) and Appointment (278), two for Patient
HTTP_TIMEOUT_S = 2.5
FIRST_PATIENT_WINDOW = rf"^/fhir/Patient\?_sort=_lastUpdated&_count={PAGE}$"
LATER_WINDOW = r"^/fhir/{}\?.*_lastUpdated=ge"  # a window from a committed cursor: mid-sync, or after an export


@dataclass
class Injected:
    """The faults one scenario put in the proxy, the hits they must leave, and what must end in quarantine."""

    faults: dict[str, Fault] = field(default_factory=dict)
    hits: list[tuple[str, int]] = field(default_factory=list)  # (path regex, status; 0 = dropped), each seen
    quarantined: list[str] = field(default_factory=list)  # Patient ids ("" for a line that is not JSON)
    stamps: list[float] = field(default_factory=list)  # when the 429 was answered, then when it was retried


def patients_on_server(env: SyncEnv, query: str) -> dict[str, Any]:
    bundle = requests.get(f"{env.stack.fhir_internal_url}/Patient?{query}", timeout=30).json()
    assert isinstance(bundle, dict) and len(bundle.get("entry", [])) > 3
    return bundle


def cut_json(env: SyncEnv) -> str:
    """A search page the EHR declares complete (its Content-Length matches) whose JSON stops halfway."""
    text = requests.get(f"{env.stack.fhir_internal_url}/RelatedPerson?_count={PAGE}", timeout=30).text
    return text[:len(text) // 2]


def change_while_paging(env: SyncEnv) -> Callable[[], None]:
    """What the EHR does between two windows of a first load: it updates the Encounter the load read first
    (behind the cursor: its new version is ahead of it now), updates one it has not reached, and deletes the
    newest (ahead of the cursor, never read)."""
    def ids(order: str, count: int) -> list[str]:
        bundle = requests.get(f"{env.stack.fhir_internal_url}/Encounter?_sort={order}&_count={count}&_elements=id",
                              timeout=30).json()
        return [e["resource"]["id"] for e in bundle["entry"]]

    def change() -> None:
        behind, *_, ahead = ids("_lastUpdated", 300)
        newest = ids("-_lastUpdated", 1)[0]
        for resource_id in (behind, ahead):
            resource = env.read("Encounter", resource_id)
            resource["status"] = "cancelled" if resource["status"] != "cancelled" else "finished"
            env.put(resource)
        env.delete("Encounter", newest)

    return change


def search_faults(env: SyncEnv, proxy: FaultProxy) -> Injected:
    """First load by paged searches: every fault on a window the worker asks for."""
    done = Injected()

    def stamp() -> None:
        done.stamps.append(time.monotonic())

    broken = copy.deepcopy(patients_on_server(env, f"_sort=_lastUpdated&_count={PAGE}"))
    bad = broken["entry"][3]["resource"]
    bad["birthDate"] = "the year the river froze"
    done.quarantined = [bad["id"]]
    # Faults match in the order added: the first window for Patient is refused, and its retry gets the broken page.
    done.faults["429 with Retry-After"] = proxy.add_fault(FIRST_PATIENT_WINDOW, status=429, retry_after="1",
                                                          before=stamp)
    done.faults["invalid resource"] = proxy.add_fault(FIRST_PATIENT_WINDOW, body=json.dumps(broken), before=stamp)
    done.faults["500 twice"] = proxy.add_fault(LATER_WINDOW.format("Encounter"), status=500, times=2)
    done.faults["changed and deleted while paging"] = proxy.add_fault(LATER_WINDOW.format("Encounter"),
                                                                      before=change_while_paging(env))
    done.faults["503"] = proxy.add_fault(LATER_WINDOW.format("Appointment"), status=503)
    done.faults["cut mid-transfer"] = proxy.add_fault(LATER_WINDOW.format("Appointment"), truncate_body_at=700)
    done.faults["truncated JSON"] = proxy.add_fault(r"^/fhir/RelatedPerson\?", body=cut_json(env))
    done.faults["timeout"] = proxy.add_fault(r"^/fhir/Location\?", delay_s=HTTP_TIMEOUT_S + 1.5)
    done.faults["dropped connection"] = proxy.add_fault(r"^/fhir/PractitionerRole\?", drop_connection=True)
    done.hits = [(r"^/fhir/Patient$", 429), (r"^/fhir/Encounter$", 500), (r"^/fhir/Appointment$", 503),
                 (r"^/fhir/PractitionerRole$", 0)]
    return done


def bulk_faults(env: SyncEnv, proxy: FaultProxy) -> Injected:
    """First load by one Bulk $export (or more, when two jobs start at once): faults on the kick-off, the status,
    the NDJSON files, and on the windows that read what changed since the export."""
    done = Injected()
    resources = [e["resource"] for e in patients_on_server(env, "_count=200")["entry"]]
    bad = resources[3]
    bad["birthDate"] = "the year the river froze"
    lines = [json.dumps(r) for r in resources]
    lines.insert(10, '{"resourceType": "Patient", "id": "cut-off-he')  # a garbled line
    done.quarantined = [bad["id"], ""]
    done.faults["503 on the kick-off"] = proxy.add_fault(r"^/fhir/\$export\?", status=503)
    done.faults["429 with Retry-After on the status"] = proxy.add_fault(r"^/fhir/bulk-status/", method="GET",
                                                                        status=429, retry_after="1")
    done.faults["cut NDJSON file"] = proxy.add_fault(r"^/fhir/bulk-files/.*/Encounter\.ndjson$",
                                                     truncate_body_at=200_000)
    done.faults["dropped connection"] = proxy.add_fault(r"^/fhir/bulk-files/.*/Appointment\.ndjson$",
                                                        drop_connection=True)
    done.faults["invalid resources"] = proxy.add_fault(r"^/fhir/bulk-files/.*/Patient\.ndjson$",
                                                       body="\n".join(lines) + "\n")
    done.faults["500 twice"] = proxy.add_fault(LATER_WINDOW.format("Encounter"), status=500, times=2)
    done.faults["timeout"] = proxy.add_fault(LATER_WINDOW.format("Location"), delay_s=HTTP_TIMEOUT_S + 1.5)
    done.faults["cut mid-transfer"] = proxy.add_fault(LATER_WINDOW.format("Appointment"), truncate_body_at=60)
    done.faults["truncated JSON"] = proxy.add_fault(LATER_WINDOW.format("RelatedPerson"), body=cut_json(env))
    done.hits = [(r"^/fhir/\$export$", 503), (r"^/fhir/bulk-status/", 429), (r"^/fhir/Encounter$", 500),
                 (r"^/fhir/bulk-files/.*/Appointment\.ndjson$", 0)]
    return done


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyEhr]:
    with FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0), dataset=small_dataset(80)) as ehr:
        yield ehr


@contextmanager
def worker_and_beat(env: SyncEnv, tmp_path: Path, http_timeout_s: float = HTTP_TIMEOUT_S) -> Iterator[None]:
    """`prm beat` and one `prm worker` on a private Redis, stopped before the database goes; their logs printed."""
    redis = RedisServer(free_port(), tmp_path / "logs").start()
    settings = env.ctx.settings
    process_env = env_for(settings.database_url, tmp_path / "instance", PRM_REDIS_URL=redis.url,
                          PRM_NOW=settings.now or "", PRM_SWEEP_INTERVAL_S="0.5", PRM_JOB_LEASE_S="30",
                          PRM_SYNC_PAGE_SIZE=str(PAGE), PRM_HTTP_TIMEOUT_S=str(http_timeout_s),
                          PRM_HEALTH_CHECK_INTERVAL_S="3600")
    processes: list[Process] = []
    try:
        for name, args in (("beat", ["beat"]), ("worker", ["worker", "--concurrency", "2"])):
            processes.append(prm_process(name, args, tmp_path / "logs", process_env, tmp_path).start())
        yield
    finally:
        stop_all(processes, redis, {"beat": 10, "worker": 50})


def first_loads_done(env: SyncEnv) -> bool:
    with env.ctx.db.session() as session:
        rows = streams.of_connection(session, env.connection_id)
    return len(rows) == len(streams.SYNC_TYPES) and all(
        s.phase == "incremental" and s.last_success_at is not None for s in rows)


@pytest.mark.parametrize("path", ["search", "bulk"])
def test_a_real_worker_syncs_through_every_fault_and_ends_in_step(path: str, faulty: FaultyEhr,
                                                                  tmp_path: Path) -> None:
    proxy = faulty.proxy
    proxy.clear()
    try:
        with sync_database(faulty.stack, tmp_path, http_timeout_s=HTTP_TIMEOUT_S, sync_page_size=PAGE) as env:
            profile = check_connection(env.ctx, env.connection_id)  # as IT does before a connection syncs
            assert profile["sync"]["strategy"]["initial"] == "bulk-export-system"
            with env.ctx.db.session() as session:
                for stream in streams.ensure(session, env.connection_id):
                    stream.strategy = "search" if path == "search" else "auto"  # IT may force paged searches
                    session.add(stream)
            proxy.clear()
            inject: Callable[[SyncEnv, FaultProxy], Injected] = search_faults if path == "search" else bulk_faults
            injected = inject(env, proxy)

            with worker_and_beat(env, tmp_path):  # nobody but the worker syncs: the test only waits and looks
                wait_until(lambda: first_loads_done(env), 150, interval_s=0.5, what="every stream's first load")

            assert {name: f.times for name, f in injected.faults.items() if f.times} == {}, "faults never served"
            for pattern, status in injected.hits:
                assert proxy.count("GET", pattern, status) >= 1, (pattern, status)
            if injected.stamps:  # the 429's Retry-After was waited out before the same window was asked again
                answered, retried = injected.stamps
                assert retried - answered >= 0.95, injected.stamps
            if path == "bulk":
                assert proxy.count("GET", r"^/fhir/bulk-files/.*/Encounter\.ndjson$") >= 2  # cut, then re-read

            with env.ctx.db.session() as session:
                rows = streams.of_connection(session, env.connection_id)
                held = streams.quarantined(session, env.connection_id)
            failed = {s.resource_type: s.last_error for s in rows if s.last_error or s.last_error_at}
            assert failed == {}, "a run ended in an error instead of retrying"
            assert sorted((q.resource_type, q.fhir_id) for q in held) == sorted(
                ("Patient", i) for i in injected.quarantined)
            assert [s.quarantined for s in rows if s.resource_type == "Patient"] == [len(injected.quarantined)]

            for resource_type in TYPES:
                server = env.server(resource_type)
                if resource_type == "Patient":
                    server = {v for v in server if v[0] not in injected.quarantined}
                assert env.snapshot(resource_type) == server, resource_type
    finally:
        proxy.clear()


def test_tokens_that_expire_mid_sync_are_renewed_and_one_that_expires_on_its_way_costs_a_reauthentication(
        tmp_path: Path) -> None:
    """The EHR's access tokens live 5 s (sandbox profile `short-token`) and its Encounter searches are slow, so
    the first load outlasts several tokens. The worker renews each before it expires, not for every request;
    one search held at the proxy past its token's life is refused by the EHR (401), which costs a new token
    and the same search again. Nothing is flagged for IT, and the snapshot equals the server."""
    with FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0, profile="short-token"),
                   dataset=small_dataset(80)) as ehr:
        proxy = ehr.proxy
        with sync_database(ehr.stack, tmp_path, sync_page_size=PAGE) as env:
            late = proxy.add_fault(LATER_WINDOW.format("Encounter"), delay_s=6.0)  # its token expires on the way
            proxy.add_fault(r"^/fhir/Encounter\?", times=10**6, delay_s=0.3)
            began = time.monotonic()
            with worker_and_beat(env, tmp_path, http_timeout_s=15.0):
                wait_until(lambda: first_loads_done(env), 150, interval_s=0.5, what="every stream's first load")
                took = time.monotonic() - began
            assert late.times == 0 and proxy.count("GET", r"^/fhir/Encounter$", 401) >= 1
            arrivals = list(proxy.arrivals)
            [held, *_] = [(at, target) for at, method, target in arrivals
                          if method == "GET" and re.search(LATER_WINDOW.format("Encounter"), target)]
            again = [at for at, method, target in arrivals if target == held[1] and at > held[0] + 6.0]
            tokens = [at for at, method, target in arrivals if method == "POST" and target == "/oauth/token"]
            assert again, "the refused search was asked again"
            assert any(held[0] + 6.0 <= at <= again[0] for at in tokens), "with a new token, fetched after the 401"
            # Renewed as they run out: each of the worker's two pool processes keeps its own token, for 3.75 s of
            # its 5 (the old one-minute margin fetched one for each request: 35 for 39 reads).
            assert len(tokens) <= 2 * (took / 3.75 + 1) + 1 < proxy.count("GET", r"^/fhir/"), (len(tokens), took)
            with env.ctx.db.session() as session:
                rows = streams.of_connection(session, env.connection_id)
                connection = connections.get(session, env.connection_id)
            assert {s.resource_type: s.last_error for s in rows if s.last_error} == {}
            assert connection is not None and connection.needs_it is None
            for resource_type in TYPES:
                assert env.snapshot(resource_type) == env.server(resource_type), resource_type
