"""A connection's EHR limits are the deployment's, not each worker's: through a real private Redis, clients
standing for separate worker processes (each its own PoliteClient) share one bound on requests in flight and
one budget; a killed worker's slots come free; without Redis each falls back to its own limits and says so."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from connector.polite import LocalGate, PoliteClient
from prm.models import Connection
from tests.support.counting_server import Target, counting_server
from tests.support.ports import free_port
from tests.support.processes import RedisServer
from tests.support.settings import make_settings
from workers import runtime
from workers.ehr_access import polite_client
from workers.shared_gate import RedisGate

CONNECTION = 7


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ehr() -> Iterator[Target]:
    with counting_server() as server:
        yield server


def workers_clients(redis_url: str | None, count: int, **gate: object) -> list[PoliteClient]:
    """`count` clients as `count` worker processes would build them: nothing shared but Redis."""
    def one() -> PoliteClient:
        shared = RedisGate(redis.Redis.from_url(redis_url), CONNECTION, **gate) if redis_url else None  # type: ignore[arg-type]
        return PoliteClient(requests.Session(), max_in_flight=4, gate=shared)
    return [one() for _ in range(count)]


def send_at_once(clients: list[PoliteClient], url: str, per_client: int) -> None:
    errors: list[BaseException] = []

    def send(client: PoliteClient) -> None:
        try:
            client.request("GET", url)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(client,)) for client in clients for _ in range(per_client)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []


def test_workers_share_one_bound_on_requests_in_flight(redis_server: RedisServer, ehr: Target) -> None:
    url = f"http://127.0.0.1:{ehr.server_address[1]}/fhir/Patient?wait=0.15"
    send_at_once(workers_clients(None, 3), url, per_client=6)
    assert ehr.peak > 4, "each worker alone keeps only its own four"
    ehr.peak = 0
    send_at_once(workers_clients(redis_server.url, 3), url, per_client=6)
    assert ehr.peak == 4


def test_workers_share_one_budget(redis_server: RedisServer) -> None:
    """120 a minute: a burst of two, then one every half second, whichever worker asks. Each reservation says
    how long to wait (nothing sleeps here), so nine requests from three workers wait up to 3.5 s."""
    gates = [RedisGate(redis.Redis.from_url(redis_server.url), CONNECTION, requests_per_minute=120) for _ in range(3)]
    waits = [gates[k % 3].reserve() for k in range(9)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.5 * k for k in range(1, 8)], abs=0.05)


def test_a_killed_workers_slots_come_free(redis_server: RedisServer, ehr: Target) -> None:
    dead = RedisGate(redis.Redis.from_url(redis_server.url), CONNECTION, timeout_s=5)
    dead.slot_ttl_s = 1.0
    for _ in range(4):  # four requests in flight when the worker was killed: never given back
        dead.slot().__enter__()
    [live] = workers_clients(redis_server.url, 1, timeout_s=5)
    live.request("GET", f"http://127.0.0.1:{ehr.server_address[1]}/fhir/Patient")
    assert ehr.peak == 1


def test_without_redis_each_worker_keeps_its_own_limits_and_says_so(
        redis_server: RedisServer, ehr: Target, caplog: pytest.LogCaptureFixture) -> None:
    clients = workers_clients(redis_server.url, 2)
    redis_server.stop()
    url = f"http://127.0.0.1:{ehr.server_address[1]}/fhir/Patient?wait=0.15"
    with caplog.at_level(logging.WARNING, logger="workers.shared_gate"):
        send_at_once(clients, url, per_client=6)
    assert 4 < ehr.peak <= 8, "each worker's own four, no more"
    warnings = [r.getMessage() for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 2, "one warning a worker, not one a request"


@pytest.mark.parametrize("with_redis", [True, False])
def test_a_worker_keeps_the_limits_it_set_on_the_connection(with_redis: bool, redis_server: RedisServer,
                                                            tmp_path: Path) -> None:
    """In Redis for every worker when there is Redis; a changed limit takes effect with the next job."""
    settings = make_settings(f"sqlite:///{tmp_path / 'prm.db'}", tmp_path,
                             redis_url=redis_server.url if with_redis else None)
    ctx = runtime.build(settings)
    row = Connection(id=CONNECTION, name="c", iss="https://c.example/fhir", client_id="c", ehr_max_in_flight=2,
                     ehr_requests_per_minute=600)
    try:
        client = polite_client(ctx, row)
        assert polite_client(ctx, row) is client, "one client a connection per process"
        assert isinstance(client.gate, RedisGate if with_redis else LocalGate)
        if isinstance(client.gate, RedisGate):
            assert (client.gate.slots, client.gate.interval_s) == (2, 0.1)
        row.ehr_max_in_flight = 6
        assert polite_client(ctx, row) is not client
    finally:
        ctx.db.dispose()
