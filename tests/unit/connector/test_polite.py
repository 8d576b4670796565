"""PoliteClient over real HTTP (a tiny local server behind the fault proxy); sleeps are recorded, not slept."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests

from connector.polite import PoliteClient, TokenBucket
from prm.errors import WITHHELD, AuthExpiredError, EhrError, PermanentEhrError, TransientEhrError, loggable
from tests.support.counting_server import Target, counting_server
from tests.support.fault_proxy import FaultProxy


@pytest.fixture
def target() -> Iterator[Target]:
    with counting_server() as server:
        yield server


@pytest.fixture
def proxy(target: Target) -> Iterator[FaultProxy]:
    with FaultProxy(f"http://127.0.0.1:{target.server_address[1]}") as running:
        yield running


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(**options: Any) -> tuple[PoliteClient, Sleeps]:
    sleeps = Sleeps()
    options = {"requests_per_minute": 60_000, **options}
    return PoliteClient(requests.Session(), sleep=sleeps, **options), sleeps


def test_a_429_waits_exactly_its_retry_after(proxy: FaultProxy) -> None:
    polite, sleeps = client()
    proxy.add_fault(r"^/fhir/Patient", status=429, retry_after="3")
    body = polite.request_json("GET", f"{proxy.url}/fhir/Patient", params=[("name", "x")])
    assert body["path"] == "/fhir/Patient" and sleeps == [3.0]
    assert [h[2] for h in proxy.hits] == [429, 200]


def test_a_503_with_an_http_date_waits_until_then(proxy: FaultProxy) -> None:
    polite, sleeps = client()
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    proxy.add_fault(r"^/fhir/Encounter", status=503, retry_after=when)
    assert polite.request("GET", f"{proxy.url}/fhir/Encounter").status_code == 200
    assert len(sleeps) == 1 and 8.0 <= sleeps[0] <= 10.0


def test_a_retry_after_beyond_the_cap_is_handed_back_not_slept(proxy: FaultProxy) -> None:
    polite, sleeps = client(retry_after_cap_s=120)
    proxy.add_fault(r"^/fhir/Encounter", status=429, retry_after="200")
    with pytest.raises(TransientEhrError) as raised:
        polite.request("GET", f"{proxy.url}/fhir/Encounter")
    assert raised.value.retry_after_s == 200.0 and sleeps == [] and len(proxy.hits) == 1


def test_server_errors_back_off_exponentially_with_full_jitter_then_give_up(proxy: FaultProxy) -> None:
    polite, sleeps = client(max_attempts=6, backoff_base_s=0.5, backoff_cap_s=4.0)
    proxy.add_fault(r"^/fhir/Patient", status=500, times=6)
    with pytest.raises(TransientEhrError) as raised:
        polite.request("GET", f"{proxy.url}/fhir/Patient")
    assert "HTTP 500" in str(raised.value) and raised.value.retry_after_s is None
    assert len(proxy.hits) == 6 and len(sleeps) == 5
    for attempt, slept in enumerate(sleeps, 1):
        assert 0.0 <= slept <= min(4.0, 0.5 * 2 ** (attempt - 1))
    draws = {round(polite.backoff_delay(5), 6) for _ in range(20)}
    assert len(draws) > 10 and max(draws) <= 4.0  # jittered, and capped


def test_a_server_error_then_success(proxy: FaultProxy) -> None:
    polite, sleeps = client()
    proxy.add_fault(r"^/fhir/Patient", status=502, times=2)
    assert polite.request_json("GET", f"{proxy.url}/fhir/Patient")["resourceType"] == "Bundle"
    assert len(sleeps) == 2 and [h[2] for h in proxy.hits] == [502, 502, 200]


def test_timeouts_dropped_connections_and_cut_bodies_are_retried(proxy: FaultProxy) -> None:
    polite, sleeps = client(timeout_s=0.3)
    proxy.add_fault(r"^/fhir/A", delay_s=1.0)
    proxy.add_fault(r"^/fhir/B", drop_connection=True)
    proxy.add_fault(r"^/fhir/C", truncate_body_at=20)
    proxy.add_fault(r"^/fhir/D", body='{"resourceType": "Bun')
    for path in ("A", "B", "C", "D"):
        assert polite.request_json("GET", f"{proxy.url}/fhir/{path}")["path"] == f"/fhir/{path}"
    # each fault cost at least one retry; the delayed answer can cost two (the proxy may still be sleeping
    # on the first when the quick retry arrives)
    assert 4 <= len(sleeps) <= 5


def test_401_is_auth_expired_and_other_4xx_permanent_neither_retried(proxy: FaultProxy) -> None:
    polite, sleeps = client()
    proxy.add_fault(r"^/fhir/Patient", status=401)
    with pytest.raises(AuthExpiredError):
        polite.request("GET", f"{proxy.url}/fhir/Patient")
    proxy.add_fault(r"^/fhir/Patient", status=410)
    with pytest.raises(PermanentEhrError) as raised:
        polite.request("GET", f"{proxy.url}/fhir/Patient")
    assert raised.value.status == 410 and sleeps == [] and len(proxy.hits) == 2


def test_post_is_retried_only_when_asked(proxy: FaultProxy) -> None:
    polite, sleeps = client()
    proxy.add_fault(r"^/fhir/Task", status=503, times=2)
    with pytest.raises(TransientEhrError):
        polite.request("POST", f"{proxy.url}/fhir/Task", json_body={"resourceType": "Task"})
    assert polite.request("POST", f"{proxy.url}/fhir/Task", json_body={}, retry=True).status_code == 200
    assert len(sleeps) == 1 and [h[2] for h in proxy.hits] == [503, 503, 200]
    proxy.add_fault(r"^/fhir/Task", status=503)
    with pytest.raises(TransientEhrError):
        polite.request("GET", f"{proxy.url}/fhir/Task", retry=False)


def test_the_budget_makes_callers_wait_and_never_errors(proxy: FaultProxy) -> None:
    polite, sleeps = client(requests_per_minute=60)  # one a second, a burst of one
    for _ in range(3):
        polite.request("GET", f"{proxy.url}/fhir/Patient")
    assert len(sleeps) == 2 and 0.8 <= sleeps[0] <= 1.0 and 1.8 <= sleeps[1] <= 2.0


def test_the_bucket_refills_with_time() -> None:
    now = [0.0]
    bucket = TokenBucket(120, clock=lambda: now[0])  # two a second, burst two
    assert [bucket.reserve(), bucket.reserve()] == [0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.5)
    now[0] = 10.0
    assert bucket.reserve() == 0.0


def test_requests_in_flight_are_bounded(target: Target) -> None:
    polite, _ = client(max_in_flight=2)
    url = f"http://127.0.0.1:{target.server_address[1]}/fhir/Patient?wait=0.2"
    threads = [threading.Thread(target=polite.request, args=("GET", url)) for _ in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.peak == 2 and time.monotonic() - started >= 0.55


def test_logs_carry_no_query_strings_or_ids(proxy: FaultProxy, caplog: pytest.LogCaptureFixture) -> None:
    polite, _ = client()
    proxy.add_fault(r"^/fhir/Patient/pat-000001", status=500, times=2)
    proxy.add_fault(r"^/fhir/Encounter", status=429, retry_after="1")
    with caplog.at_level(logging.INFO, logger="connector"):
        polite.request("GET", f"{proxy.url}/fhir/Patient/pat-000001")
        polite.request("GET", f"{proxy.url}/fhir/Encounter", params=[("patient", "pat-000001")])
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(messages) == 3 and all("pat-000001" not in m and "?" not in m for m in messages), messages


def test_the_ehrs_own_words_are_kept_with_the_error_and_out_of_logs(proxy: FaultProxy,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """An EHR's diagnostics are free text that may name a patient: the error carries them (IT reads it where it
    is stored), a log line made with `loggable` does not, whatever the status."""
    said = "Patient Jessica Green (MRN 8812, born 1970-08-20) is locked by another user"
    outcome = json.dumps({"resourceType": "OperationOutcome",
                          "issue": [{"severity": "error", "code": "lock-error", "diagnostics": said}]})
    polite, _ = client(max_attempts=2)
    proxy.add_fault(r"^/fhir/Patient", status=409, body=outcome)
    proxy.add_fault(r"^/fhir/Encounter", status=503, body=outcome, times=2)
    proxy.add_fault(r"^/fhir/Task", status=401, body=outcome)
    errors: list[EhrError] = []
    with caplog.at_level(logging.DEBUG):
        for path in ("Patient", "Encounter", "Task"):
            with pytest.raises(EhrError) as raised:
                polite.request_json("GET", f"{proxy.url}/fhir/{path}")
            errors.append(raised.value)
            logging.getLogger("workers.test").warning("failed: %s", loggable(raised.value))
    assert [type(e) for e in errors] == [PermanentEhrError, TransientEhrError, AuthExpiredError]
    assert all(said in str(e) and said not in loggable(e) and WITHHELD in loggable(e) for e in errors)
    assert caplog.records and said not in caplog.text and "Jessica" not in caplog.text
