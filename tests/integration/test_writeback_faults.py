"""The write-back drain when things go wrong: the EHR fails writes (500, 503, 429), answers are lost after the
EHR committed, a `prm worker` is SIGKILLed between the EHR's commit and ours, Redis restarts mid-drain, and two
drains run at once against an EHR whose conditional creates race.

After recovery, every scenario checks the same thing on its own business keys: the FHIR server holds exactly one
resource per outbox row (counted by identifier, entered-in-error copies included, so no duplicate was ever made),
every outbox row is `done` with the id that resource has, and no row was lost (one row per item created).

One sandbox EHR behind a fault proxy is shared by scenarios 1-4 (each has a fresh database and keys of its own);
the racing-EHR scenario starts its own sandbox with profile racy-conditional-create.

Time: the drain's clock is a running PRM_NOW, as every process gets. Retry-After waits (2 s) are waited for real;
the 30 s backoff of a 500 or a lost answer is skipped by moving that clock on 31 s (`advance_clock`), not by editing
`due_at`: the product's own backoff then decides when a row is due again, and a drain before it is checked to claim
nothing.
"""

from __future__ import annotations

import io
import itertools
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlmodel import col, select

from ehr_sandbox.config import SandboxConfig
from ehr_sandbox.stack import SandboxStack
from prm import connections, jobs, outbox, streams
from prm.clock import running_from
from prm.models import Job, OutboxRow
from tests.integration.sync_env import SyncEnv, small_dataset, sync_database
from tests.integration.writeback_env import (
    checked,
    drain,
    on_server,
    open_tickets,
    outbox_rows,
    record_messages,
)
from tests.support.fault_proxy import FaultProxy, FaultyEhr, _Handler
from tests.support.ports import free_port
from tests.support.processes import Process, RedisServer, prm_process, wait_until
from tests.support.settings import env_for
from workers import runtime
from workers.ehr_access import access_for
from workers.writeback import drain_connection
from workers.writeback_engine import DrainRun

BUNDLE = r"^/fhir/?$"  # a batch or transaction Bundle is POSTed to the base
TASKS = r"^/fhir/Task$"
BLOCKS = itertools.count(1000, 100)  # each scenario's business keys: care-ticket/test-N, outreach/test-N


# ---------------- a fault the shared proxy lacks: forward first (the EHR commits), then lose the answer ----------


@dataclass
class LateFault:
    """Forward the request, so the EHR commits it; hold its answer until `release` (or `hold_s`), then drop the
    connection without a word (`drop`) or pass the answer on."""

    pattern: re.Pattern[str]
    method: str
    times: int
    drop: bool
    hold_s: float
    forwarded: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    ehr_statuses: list[int] = field(default_factory=list)  # what the EHR answered to the requests held


class LateFaultProxy(FaultProxy):
    """FaultProxy plus late faults (answer lost, or held, after the EHR committed)."""

    def __init__(self, target: str, port: int = 0) -> None:
        super().__init__(target, port)
        self._late: list[LateFault] = []

    @classmethod
    def replacing(cls, proxy: FaultProxy) -> LateFaultProxy:
        return cls(f"http://{proxy.target_host}:{proxy.target_port}", port=proxy.port)

    def add_late_fault(self, path_regex: str, *, method: str = "POST", times: int = 1, drop: bool = True,
                       hold_s: float = 0.0) -> LateFault:
        fault = LateFault(re.compile(path_regex), method, times, drop, hold_s)
        with self._lock:
            self._late.append(fault)
        return fault

    def take_late(self, method: str, target: str) -> LateFault | None:
        with self._lock:
            for fault in self._late:
                if fault.times > 0 and fault.method == method and fault.pattern.search(target):
                    fault.times -= 1
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            for fault in self._late:
                fault.release.set()
            self._late.clear()
        super().clear()

    @staticmethod
    def handler() -> type[BaseHTTPRequestHandler]:
        return _LateHandler


class _LateHandler(_Handler):
    def _handle_late(self) -> None:
        proxy: LateFaultProxy = self.server.proxy  # type: ignore[attr-defined]
        fault = proxy.take_late(self.command, self.path)
        if fault is None:
            self._handle()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        client, buffer = self.wfile, io.BytesIO()
        self.wfile = buffer  # the EHR's whole answer lands here instead of on the client's socket
        try:
            self._forward(proxy, self.command, body, None)
        finally:
            self.wfile = client
        answer = buffer.getvalue()
        fault.ehr_statuses.append(int(answer.split(b" ", 2)[1]))
        fault.forwarded.set()
        fault.release.wait(fault.hold_s)
        try:
            if fault.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.wfile.write(answer)
        except OSError:  # the client is gone (killed): nobody to tell
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle_late


# ---------------- helpers ----------------


@dataclass
class Items:
    """What one scenario created: the business keys its outbox rows carry, per FHIR type."""

    keys: dict[str, list[str]]

    @property
    def count(self) -> int:
        return sum(len(k) for k in self.keys.values())

    def all(self) -> set[str]:
        return {k for keys in self.keys.values() for k in keys}


def create_items(env: SyncEnv, tickets: int, messages: int) -> Items:
    """Open tickets (-> Task) and record messages (-> Communication) as the producers do, on keys of their own."""
    start = next(BLOCKS)
    task_keys = [t.business_key for t in open_tickets(env, tickets, start=start)]
    message_keys = [m.business_key for m in record_messages(env, messages, start=start)]
    assert len(set(task_keys)) == tickets and len(set(message_keys)) == messages
    return Items({"Task": task_keys, "Communication": message_keys})


def server_copies(env: SyncEnv, resource_type: str, keys: set[str]) -> dict[str, list[tuple[str, str]]]:
    """(id, versionId) of every resource (entered-in-error too) carrying each of `keys`, on the FHIR server."""
    found: dict[str, list[tuple[str, str]]] = {}
    url: str | None = (f"{env.stack.fhir_internal_url}/{resource_type}?identifier={outbox.IDENTIFIER_SYSTEM}|"
                       f"&_count=1000")
    while url:
        bundle = requests.get(url, timeout=60).json()
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            for identifier in resource.get("identifier", []):
                if identifier.get("system") == outbox.IDENTIFIER_SYSTEM and identifier.get("value") in keys:
                    found.setdefault(identifier["value"], []).append(
                        (resource["id"], str(resource.get("meta", {}).get("versionId"))))
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
        if url:
            url = url.replace(env.stack.iss, env.stack.fhir_internal_url)
    return found


def assert_exactly_once(env: SyncEnv, items: Items) -> list[OutboxRow]:
    """One resource per outbox row on the server (live, and no entered-in-error copy either), every row done with
    that resource's id and current version, and one row per item created (nothing lost, nothing extra)."""
    rows = outbox_rows(env)
    assert sorted(r.identifier_value for r in rows) == sorted(items.all()), "an outbox row was lost or added"
    assert [(r.identifier_value, r.status) for r in rows if r.status != "done" or not r.fhir_id] == []
    for resource_type, keys in items.keys.items():
        mine = set(keys)
        live = on_server(env, resource_type)
        assert {k: n for k, n in live.items() if k in mine} == dict.fromkeys(keys, 1), resource_type
        copies = server_copies(env, resource_type, mine)
        assert {k: len(v) for k, v in copies.items()} == dict.fromkeys(keys, 1), f"{resource_type}: a copy was made"
        recorded = {r.identifier_value: (r.written_type, r.fhir_id, r.version_id) for r in rows
                    if r.identifier_value in mine}
        assert recorded == {k: (resource_type, *copies[k][0]) for k in keys}, "a row names another resource/version"
    assert all(r.duplicates == [] and not r.outcome_unknown for r in rows)
    return rows


def on_server_of(env: SyncEnv, items: Items) -> Counter[str]:
    """How many resources (entered-in-error too) carry each of the scenario's keys right now."""
    counts: Counter[str] = Counter()
    for resource_type, keys in items.keys.items():
        counts.update({k: len(v) for k, v in server_copies(env, resource_type, set(keys)).items()})
    return counts


def advance_clock(env: SyncEnv, seconds: float) -> None:
    """Time passes: the drain's running clock jumps `seconds` ahead (and keeps running)."""
    settings = env.ctx.settings
    env.ctx.settings = replace(settings, now=running_from(settings.clock() + timedelta(seconds=seconds)))


def wait_until_due(env: SyncEnv) -> None:
    """Really wait until the last pending row falls due (a short Retry-After)."""
    due = max(r.due_at for r in outbox_rows(env) if r.status == "pending" and r.due_at is not None)
    time.sleep(max(0.0, (due - env.ctx.settings.clock()).total_seconds()) + 0.2)


# ---------------- fixtures ----------------


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyEhr]:
    ehr = FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0), dataset=small_dataset(80))
    ehr.proxy = LateFaultProxy.replacing(ehr.proxy)
    with ehr:
        yield ehr


@contextmanager
def faulty_env(faulty: FaultyEhr, tmp_path: Path, **overrides: Any) -> Iterator[tuple[SyncEnv, LateFaultProxy]]:
    """A fresh database whose connection is the shared EHR behind the proxy, capability-checked, no faults yet."""
    proxy = faulty.proxy
    assert isinstance(proxy, LateFaultProxy)
    proxy.clear()
    try:
        with sync_database(faulty.stack, tmp_path, **overrides) as env:
            checked(env)
            proxy.clear()
            yield env, proxy
    finally:
        proxy.clear()


class Fleet:
    """`prm beat` and `prm worker` processes (Celery on a private Redis) on the scenario's database."""

    def __init__(self, env: SyncEnv, tmp_path: Path, redis: RedisServer, **extra: str) -> None:
        with env.ctx.db.session() as session:  # the sync is not under test: the workers' time goes to write-back
            for stream in streams.ensure(session, env.connection_id):
                stream.enabled = False
                session.add(stream)
        settings = env.ctx.settings
        self.tmp_path = tmp_path
        self.env = env_for(settings.database_url, tmp_path / "instance", PRM_REDIS_URL=redis.url,
                           PRM_NOW=settings.now or "", PRM_SWEEP_INTERVAL_S="0.5",
                           PRM_HEALTH_CHECK_INTERVAL_S="3600", **extra)
        self.processes: list[Process] = []

    def start(self, name: str, *args: str) -> Process:
        process = prm_process(name, list(args), self.tmp_path / "logs", self.env, self.tmp_path).start()
        self.processes.append(process)
        return process

    def worker(self, name: str) -> Process:
        return self.start(name, "worker", "--concurrency", "1")

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        for process in self.processes:
            print(f"--- {process.name} ---\n{process.log_tail(25)}")


@contextmanager
def fleet(env: SyncEnv, tmp_path: Path, **extra: str) -> Iterator[tuple[Fleet, RedisServer]]:
    redis = RedisServer(free_port(), tmp_path / "logs").start()
    processes: Fleet | None = None
    try:
        processes = Fleet(env, tmp_path, redis, **extra)
        yield processes, redis
    finally:
        if processes is not None:
            processes.stop()
        redis.stop()


def rows_done(env: SyncEnv, keys: set[str]) -> bool:
    return all(r.status == "done" for r in outbox_rows(env) if r.identifier_value in keys)


# ---------------- 1. the EHR fails the writes ----------------


@pytest.mark.parametrize(("bundle", "path", "fault", "retry_in_s"), [
    pytest.param("auto", BUNDLE, {"status": 500}, 30.0, id="500-on-the-transaction"),
    pytest.param("auto", BUNDLE, {"status": 503, "retry_after": "2"}, 2.0, id="503-retry-after-on-the-transaction"),
    pytest.param("none", TASKS, {"status": 429, "retry_after": "2", "times": 3}, 2.0, id="429-retry-after-on-creates"),
])
def test_failed_writes_are_retried_when_due_and_written_once(bundle: str, path: str, fault: dict[str, Any],
                                                             retry_in_s: float, faulty: FaultyEhr,
                                                             tmp_path: Path) -> None:
    with faulty_env(faulty, tmp_path, writeback_bundle=bundle) as (env, proxy):
        items = create_items(env, 6, 4)
        injected = proxy.add_fault(path, method="POST", **fault)

        first = drain(env)
        failing = 3 if bundle == "none" else items.count  # three Task creates refused, or the one transaction
        assert injected.times == 0 and proxy.count("POST", path, fault["status"]) == fault.get("times", 1)
        assert (first.failed, first.written, first.dead) == (failing, items.count - failing, 0), first
        failed = [r for r in outbox_rows(env) if r.status != "done"]
        assert len(failed) == failing
        assert not on_server_of(env, Items({t: [r.identifier_value for r in failed if r.resource_type == t]
                                            for t in items.keys}))  # the fault answered: the EHR never saw them
        for row in failed:  # recorded, not lost: pending again after Retry-After, or the first backoff step
            assert row.status == "pending" and row.attempts == 1 and row.fhir_id is None
            assert f"HTTP {fault['status']}" in (row.last_error or ""), row.last_error
            assert row.due_at and row.updated_at and (row.due_at - row.updated_at).total_seconds() == retry_in_s
        assert drain(env).claimed == 0  # not due yet: nothing is hammered

        if retry_in_s > 5:
            advance_clock(env, retry_in_s + 1)
        else:
            wait_until_due(env)
        second = drain(env)
        assert (second.claimed, second.written, second.failed) == (failing, failing, 0), second
        assert_exactly_once(env, items)
        assert drain(env).claimed == 0


def test_a_real_worker_honours_retry_after_and_writes_once(faulty: FaultyEhr, tmp_path: Path) -> None:
    """The same faults through `prm beat` + `prm worker` on Redis: the job wiring, not only the drain."""
    with faulty_env(faulty, tmp_path) as (env, proxy), fleet(env, tmp_path) as (ps, _):
        items = create_items(env, 4, 4)
        busy = proxy.add_fault(BUNDLE, method="POST", status=503, retry_after="1")
        limited = proxy.add_fault(BUNDLE, method="POST", status=429, retry_after="1")
        ps.start("beat", "beat")
        ps.worker("worker")
        wait_until(lambda: rows_done(env, items.all()), 60, interval_s=0.3, what="the worker writing past 503 and 429")
        assert busy.times == 0 and limited.times == 0  # both faults were met, then waited out
        assert proxy.count("POST", BUNDLE, 503) == 1 and proxy.count("POST", BUNDLE, 429) == 1
        rows = assert_exactly_once(env, items)
        assert all(r.attempts == 0 and r.last_error is None for r in rows)


# ---------------- 2. the answer is lost after the EHR committed ----------------


@pytest.mark.parametrize(("bundle", "path"), [
    pytest.param("auto", BUNDLE, id="transaction"),
    pytest.param("none", TASKS, id="single-create"),
])
def test_a_lost_answer_is_looked_up_by_identifier_not_written_again(bundle: str, path: str, faulty: FaultyEhr,
                                                                    tmp_path: Path) -> None:
    with faulty_env(faulty, tmp_path, writeback_bundle=bundle) as (env, proxy):
        items = create_items(env, 5, 3)
        lost = proxy.add_late_fault(path, drop=True)

        first = drain(env)
        assert lost.forwarded.is_set() and lost.ehr_statuses and all(200 <= s < 300 for s in lost.ehr_statuses)
        unknown = [r for r in outbox_rows(env) if r.status != "done"]
        assert len(unknown) == (items.count if bundle == "auto" else 1) == first.failed, first
        for row in unknown:  # the EHR has it, we do not know it: outcome unknown, nothing recorded
            assert row.status == "pending" and row.outcome_unknown and row.fhir_id is None
        assert on_server_of(env, items) == Counter(dict.fromkeys(items.all(), 1))  # the EHR did commit them

        advance_clock(env, 31)
        searches = proxy.count("GET", r"^/fhir/(Task|Communication)$")
        second = drain(env)
        assert (second.written, second.failed, second.duplicates) == (len(unknown), 0, 0), second
        assert proxy.count("GET", r"^/fhir/(Task|Communication)$") > searches  # looked up before writing
        assert_exactly_once(env, items)


def test_a_lost_create_the_ehr_withdrew_meanwhile_is_not_brought_back(faulty: FaultyEhr, tmp_path: Path) -> None:
    """The EHR commits a ticket's Task, the answer is lost, and before the drain looks it up staff mark it
    entered-in-error. Found by identifier, it is not adopted and updated (that would revive it): the write is
    dead with the reason, and the Task stays withdrawn."""
    with faulty_env(faulty, tmp_path, writeback_bundle="none") as (env, proxy):
        items = create_items(env, 1, 0)
        proxy.add_late_fault(TASKS, drop=True)
        assert drain(env).failed == 1
        [(task_id, _)] = server_copies(env, "Task", set(items.all()))[items.keys["Task"][0]]
        env.put(env.read("Task", task_id) | {"status": "entered-in-error"})
        advance_clock(env, 31)
        second = drain(env)
        assert (second.written, second.dead) == (0, 1), second
        [row] = outbox_rows(env)
        assert row.status == "dead" and f"withdrew this item's Task/{task_id}" in (row.last_error or "")
        assert env.read("Task", task_id)["status"] == "entered-in-error"
        assert on_server_of(env, items) == Counter(dict.fromkeys(items.all(), 1)), "no copy made either"


# ---------------- 3. the worker dies between the EHR's commit and ours ----------------


@pytest.mark.serial
def test_a_worker_killed_after_the_ehr_committed_is_taken_over_without_a_copy(faulty: FaultyEhr,
                                                                             tmp_path: Path) -> None:
    with faulty_env(faulty, tmp_path) as (env, proxy), fleet(env, tmp_path, PRM_JOB_LEASE_S="5") as (ps, _):
        items = create_items(env, 8, 4)
        held = proxy.add_late_fault(BUNDLE, drop=False, hold_s=120)
        ps.start("beat", "beat")
        first = ps.worker("worker-1")
        assert held.forwarded.wait(60), f"worker-1 never wrote:\n{first.log_tail()}"
        first.stop(signal.SIGKILL)  # the whole group: the pool child waiting for the EHR's answer too
        held.release.set()

        assert on_server_of(env, items) == Counter(dict.fromkeys(items.all(), 1))  # the EHR committed...
        rows = outbox_rows(env)  # ...and we did not: every row still in flight under worker-1's claim
        assert {(r.status, r.fhir_id) for r in rows} == {("in_flight", None)}
        killed_at = env.ctx.settings.clock()
        searches = proxy.count("GET", r"^/fhir/(Task|Communication)$")

        ps.worker("worker-2")
        wait_until(lambda: rows_done(env, items.all()), 90, interval_s=0.3, what="worker-2 finishing the rows")
        rows = assert_exactly_once(env, items)
        assert all(r.updated_at and r.updated_at > killed_at for r in rows)  # recorded by worker-2...
        assert proxy.count("GET", r"^/fhir/(Task|Communication)$") > searches  # ...after looking them up


# ---------------- 4. Redis restarts mid-drain ----------------


@pytest.mark.serial
def test_a_redis_restart_mid_drain_loses_nothing(faulty: FaultyEhr, tmp_path: Path) -> None:
    with faulty_env(faulty, tmp_path) as (env, proxy), \
            fleet(env, tmp_path, PRM_JOB_LEASE_S="10", PRM_HTTP_TIMEOUT_S="20") as (ps, redis):
        before = create_items(env, 6, 4)
        held = proxy.add_late_fault(BUNDLE, drop=False, hold_s=15)
        ps.start("beat", "beat")
        ps.worker("worker")
        assert held.forwarded.wait(60), "the worker never wrote"

        redis.stop()  # mid-drain: the transaction is at the EHR, its answer not yet back
        held.release.set()
        wait_until(lambda: rows_done(env, before.all()), 30, interval_s=0.2, what="the drain in hand finishing")

        def drain_running() -> bool:
            with env.ctx.db.session() as session:
                return session.exec(select(Job).where(Job.kind == jobs.WRITEBACK_DRAIN,
                                                      col(Job.status) == "running")).first() is not None

        wait_until(lambda: not drain_running(), 30, interval_s=0.2, what="the drain job finishing")
        during = create_items(env, 5, 3)  # queued while Redis is down: only PostgreSQL holds them
        time.sleep(2.5)
        assert {r.status for r in outbox_rows(env) if r.identifier_value in during.all()} == {"pending"}

        redis.start()  # empty: whatever Redis held is gone
        wait_until(lambda: rows_done(env, during.all()), 60, interval_s=0.3, what="the rows queued during the outage")
        assert_exactly_once(env, Items({t: before.keys[t] + during.keys[t] for t in before.keys}))


# ---------------- 5. two drains at once, on an EHR whose conditional creates race ----------------


@pytest.fixture(scope="module")
def racy_stack() -> Iterator[SandboxStack]:
    config = SandboxConfig(profile="racy-conditional-create", port=0, fhir_internal_port=0)
    with SandboxStack(config, dataset=small_dataset(80)) as stack:
        yield stack


def test_two_drains_at_once_split_the_rows_and_make_no_copy(racy_stack: SandboxStack, tmp_path: Path) -> None:
    with sync_database(racy_stack, tmp_path, writeback_batch_size=5) as env:
        checked(env)
        contexts = [runtime.build(env.ctx.settings) for _ in range(2)]
        for name, ctx in zip(("drain-a", "drain-b"), contexts, strict=True):
            ctx.name = name  # two workers: own engines, HTTP clients and tokens

        # The control: this EHR does make copies when two conditional creates of one identifier race.
        with env.ctx.db.session() as session:
            row = connections.get(session, env.connection_id)
            assert row is not None
        writers = [access_for(ctx, row).writer for ctx in contexts]
        for writer in writers:  # each has its token before the race starts
            assert writer.search_by_identifier("Task", outbox.IDENTIFIER_SYSTEM, ["control/race-1"]) == []
        control = {"resourceType": "Task", "status": "requested", "intent": "order",
                   "identifier": [{"system": outbox.IDENTIFIER_SYSTEM, "value": "control/race-1"}]}
        racing = [threading.Thread(target=w.create, args=(control, f"identifier={outbox.IDENTIFIER_SYSTEM}|"
                                                                    "control/race-1"), daemon=True) for w in writers]
        for thread in racing:
            thread.start()
        for thread in racing:
            thread.join(30)
        assert on_server(env, "Task")["control/race-1"] == 2

        items = create_items(env, 40, 20)
        runs: dict[str, DrainRun] = {}
        gate = threading.Barrier(2)

        def due(ctx: runtime.WorkerContext) -> bool:
            with ctx.db.session() as session:
                return session.exec(select(OutboxRow.id).where(
                    OutboxRow.status == "pending", col(OutboxRow.due_at) <= ctx.settings.clock())).first() is not None

        def work(ctx: runtime.WorkerContext) -> None:
            """A worker woken for the connection's drain, again while rows are pending (as the job is re-planned)."""
            total = DrainRun()
            runs[ctx.name] = total
            gate.wait(10)
            for _ in range(100):
                one = drain_connection(ctx, env.connection_id, time_budget_s=120)
                assert one is not None, "the connection is enabled"
                total.claimed += one.claimed
                total.written += one.written
                total.failed += one.failed
                total.duplicates += one.duplicates
                if not one.claimed and not due(ctx):
                    return

        threads = [threading.Thread(target=work, args=(ctx,), daemon=True) for ctx in contexts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        try:
            assert not any(t.is_alive() for t in threads)
            a, b = runs["drain-a"], runs["drain-b"]
            assert a.written > 0 and b.written > 0, runs  # both drains wrote rows...
            assert a.claimed + b.claimed == a.written + b.written == items.count, runs  # ...and no row twice
            assert a.failed == b.failed == a.duplicates == b.duplicates == 0, runs
            assert_exactly_once(env, items)  # on an EHR where racing conditional creates do make copies
        finally:
            for ctx in contexts:
                ctx.db.dispose()
