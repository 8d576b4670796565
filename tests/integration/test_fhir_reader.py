"""FhirReader and BulkExport against the real sandbox EHR, and through the fault proxy: every fault retried
to the right answer, or surfaced as the right error. Backend Services tokens come from connector.backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from joserfc.jwk import RSAKey

from connector.backend import BackendCredentials, BackendTokens
from connector.bulk import BulkExport
from connector.fhir_reader import FhirReader, Page
from connector.polite import PoliteClient
from ehr_sandbox.config import SandboxClient, SandboxConfig
from ehr_sandbox.ehr_app import EhrServer
from ehr_sandbox.stack import SandboxStack
from prm.errors import AuthExpiredError, PermanentEhrError, ValidationError
from tests.support.fault_proxy import FaultyEhr
from tests.support.ports import free_port
from tests.support.processes import wait_until

CLIENT = "fhir-reader-tests"
SCOPE = "system/*.rs"
ENCOUNTERS, PATIENTS = 2294, 300


@pytest.fixture(scope="module")
def key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "reader-1", "alg": "RS384", "use": "sig"}, private=True)


def backend_client(key: RSAKey) -> SandboxClient:
    return SandboxClient(CLIENT, [], scopes="system/*.rs system/Appointment.d", auth_method="private_key_jwt",
                         jwks={"keys": [key.as_dict(private=False)]}, grant_types=["client_credentials"])


@dataclass
class Conn:
    """What the sync will hold per connection: a PoliteClient and a token source that can start over."""

    ehr_url: str
    iss: str
    key: RSAKey
    scope: str = SCOPE
    sleeps: list[float] = field(default_factory=list)
    reauths: int = 0

    def __post_init__(self) -> None:
        self.creds = BackendCredentials(client_id=CLIENT, token_endpoint=f"{self.ehr_url}/oauth/token",
                                        auth="private_key_jwt", alg="RS384", kid=self.key.kid,
                                        private_key_pem=self.key.as_pem(private=True).decode())
        self.tokens = BackendTokens(margin_s=0)

    def token(self) -> str:
        return self.tokens.get(self.creds, self.scope, 30).access_token

    def reauthenticate(self) -> None:
        self.reauths += 1
        self.tokens.invalidate(self.creds, self.scope)

    def client(self, real_sleep: bool = False, **options: Any) -> PoliteClient:
        return PoliteClient(requests.Session(), sleep=time.sleep if real_sleep else self.sleeps.append, **options)

    def reader(self, **options: Any) -> FhirReader:
        return FhirReader(self.iss, self.client(**options), self.token, self.reauthenticate)

    def bulk(self, real_sleep: bool = True, **options: Any) -> BulkExport:
        return BulkExport(self.iss, self.client(real_sleep, **options), self.token, self.reauthenticate)


def all_pages(reader: FhirReader, first: Page) -> list[dict[str, Any]]:
    found, page = list(first.resources), first
    while page.next_url:
        page = reader.follow(page.next_url)
        found += page.resources
    return found


@pytest.fixture(scope="module")
def conn(sandbox: SandboxStack, key: RSAKey) -> Conn:
    sandbox.register_client(backend_client(key))
    return Conn(sandbox.ehr_url, sandbox.iss, key)


@pytest.fixture(scope="module")
def faulty(key: RSAKey) -> Iterator[FaultyEhr]:
    """A sandbox of our own behind the fault proxy (it also takes the test's deletes)."""
    with FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0, clients=[backend_client(key)])) as ehr:
        yield ehr


@pytest.fixture
def fconn(faulty: FaultyEhr, key: RSAKey) -> Iterator[Conn]:
    faulty.proxy.clear()
    yield Conn(faulty.ehr_url, faulty.iss, key)
    faulty.proxy.clear()


# ---------------- reads against the sandbox ----------------

def test_paging_through_every_encounter(conn: Conn) -> None:
    reader = conn.reader()
    first = reader.search("Encounter", [("_count", "500")])
    assert first.total == ENCOUNTERS and len(first.resources) == 500
    encounters = all_pages(reader, first)
    assert len({e["id"] for e in encounters}) == ENCOUNTERS == len(encounters)
    assert {e["resourceType"] for e in encounters} == {"Encounter"}


def test_a_last_updated_window_in_order(conn: Conn) -> None:
    reader = conn.reader()
    stamps = sorted(e["meta"]["lastUpdated"] for e in all_pages(reader, reader.search(
        "Encounter", [("_count", "1000"), ("_elements", "meta")])))
    middle = stamps[len(stamps) // 2]
    window = all_pages(reader, reader.search("Encounter", [("_lastUpdated", f"gt{middle}"),
                                                            ("_sort", "_lastUpdated"), ("_count", "250")]))
    seen = [e["meta"]["lastUpdated"] for e in window]
    assert seen == sorted(seen) and all(s > middle for s in seen)
    assert len(window) == sum(1 for s in stamps if s > middle)


def test_ids_and_reads(conn: Conn) -> None:
    reader = conn.reader()
    ids = list(reader.ids("Patient"))
    assert len(ids) == len(set(ids)) == PATIENTS and "pat-000001" in ids
    assert reader.read("Patient", "pat-000001")["id"] == "pat-000001"
    assert len(list(reader.ids("Encounter", [("patient", "pat-000001")]))) >= 1
    with pytest.raises(ValidationError):
        reader.read("Patient", "../metadata")
    with pytest.raises(PermanentEhrError) as missing:
        reader.read("Patient", "no-such-patient")
    assert missing.value.status == 404


def test_links_off_the_ehr_are_refused_before_any_request(conn: Conn) -> None:
    reader = conn.reader()
    for url in ("http://example.org/fhir/Encounter?_offset=500", f"{conn.iss}-evil/Encounter",
                f"{conn.iss}.example.org/Encounter"):
        with pytest.raises(PermanentEhrError, match="not on the EHR"):
            reader.follow(url)


def test_a_token_revoked_mid_paging_is_replaced_once(conn: Conn, sandbox: SandboxStack) -> None:
    reader = conn.reader()
    first = reader.search("Encounter", [("_count", "1000")])
    sandbox.ehr.smart.store.by_access[conn.token()].access_revoked = True
    assert len(all_pages(reader, first)) == ENCOUNTERS and conn.reauths == 1


def test_a_second_401_is_auth_expired(conn: Conn, sandbox: SandboxStack) -> None:
    stale = conn.token()
    sandbox.ehr.smart.store.by_access[stale].access_revoked = True
    calls: list[str] = []
    reader = FhirReader(conn.iss, conn.client(), lambda: stale, lambda: calls.append("again"))
    with pytest.raises(AuthExpiredError):
        reader.search("Patient", [("_count", "1")])
    assert calls == ["again"]


def test_bulk_export_streams_patients_and_encounters(conn: Conn) -> None:
    bulk = conn.bulk()
    status = bulk.kick_off(["Patient", "Encounter"])
    assert status.startswith(f"{conn.iss}/")
    progress: list[str] = []
    manifest = bulk.wait(status, max_wait_s=120, progress=progress.append)
    assert progress and manifest["error"] == []
    counts: dict[str, int] = {}
    for item in manifest["output"]:
        for resource in bulk.resources(item["url"]):
            assert resource["resourceType"] == item["type"]
            counts[item["type"]] = counts.get(item["type"], 0) + 1
    assert counts == {"Patient": PATIENTS, "Encounter": ENCOUNTERS}
    bulk.delete(status)
    with pytest.raises(PermanentEhrError, match="not on the EHR"):
        next(bulk.resources("http://example.org/bulk-files/x/Patient.ndjson"))


# ---------------- through the fault proxy ----------------

FAULTS: dict[str, dict[str, Any]] = {
    "429 with Retry-After": {"status": 429, "retry_after": "2"},
    "503": {"status": 503},
    "500": {"status": 500},
    "timeout": {"delay_s": 1.5},
    "body cut mid-stream": {"truncate_body_at": 5000},
    "truncated JSON": {"body": '{"resourceType": "Bundle", "entry": [{"resource"'},
    "dropped connection": {"drop_connection": True},
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_fault_on_a_page_is_retried_and_the_result_is_whole(fconn: Conn, faulty: FaultyEhr, fault: str) -> None:
    added = faulty.proxy.add_fault(r"^/fhir/Encounter\?.*_offset=1000", **FAULTS[fault])
    reader = fconn.reader(timeout_s=0.75)
    encounters = all_pages(reader, reader.search("Encounter", [("_count", "500")]))
    assert len({e["id"] for e in encounters}) == len(encounters) == ENCOUNTERS
    assert added.times == 0 and len(fconn.sleeps) == 1
    if fault == "429 with Retry-After":
        assert fconn.sleeps == [2.0]
    # five pages, one of them twice (the timed-out answer is recorded when the proxy gets round to it)
    wait_until(lambda: faulty.proxy.count("GET", r"^/fhir/Encounter$") == 6, timeout_s=5, what="six page requests")


def test_an_expired_paging_link_is_permanent(fconn: Conn, faulty: FaultyEhr) -> None:
    faulty.proxy.add_fault(r"_offset=1000", status=410, body='{"resourceType":"OperationOutcome","issue":[{'
                           '"severity":"error","code":"expired","diagnostics":"paging link expired"}]}')
    reader = fconn.reader()
    with pytest.raises(PermanentEhrError, match="paging link expired") as raised:
        all_pages(reader, reader.search("Encounter", [("_count", "500")]))
    assert raised.value.status == 410 and fconn.sleeps == []


def test_a_401_through_the_proxy_reauthenticates(fconn: Conn, faulty: FaultyEhr) -> None:
    faulty.proxy.add_fault(r"^/fhir/Patient", status=401)
    reader = fconn.reader()
    assert reader.read("Patient", "pat-000002")["id"] == "pat-000002" and fconn.reauths == 1
    assert [s for m, p, s in faulty.proxy.hits if p == "/oauth/token"] == [200, 200]


def test_bulk_export_through_faults(fconn: Conn, faulty: FaultyEhr) -> None:
    bulk = fconn.bulk(real_sleep=True, timeout_s=10)
    faulty.proxy.add_fault(r"^/fhir/\$export", status=503, retry_after="0")
    faulty.proxy.add_fault(r"^/fhir/bulk-status/", status=429, retry_after="0")
    faulty.proxy.add_fault(r"/Encounter\.ndjson$", truncate_body_at=400_000)
    faulty.proxy.add_fault(r"/Encounter\.ndjson$", drop_connection=True)
    status = bulk.kick_off(["Encounter"])
    manifest = bulk.wait(status, max_wait_s=120)
    [output] = manifest["output"]
    encounters = list(bulk.resources(output["url"]))
    assert len({e["id"] for e in encounters}) == len(encounters) == ENCOUNTERS
    assert faulty.proxy.count("GET", r"Encounter\.ndjson$") == 3
    bulk.delete(status)


def test_history_shows_deletions(fconn: Conn, faulty: FaultyEhr) -> None:
    reader = fconn.reader()
    since = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    appointments = set(reader.ids("Appointment"))
    gone = sorted(appointments)[:2]
    conn_token = {"Authorization": f"Bearer {fconn.tokens.get(fconn.creds, 'system/Appointment.d', 30).access_token}"}
    for appointment in gone:
        assert requests.delete(f"{fconn.iss}/Appointment/{appointment}", headers=conn_token,
                               timeout=30).status_code in (200, 204)
    first = reader.history("Appointment", since, count=1)
    assert first.next_url and "_since=" in first.next_url
    pages = [first]
    while pages[-1].next_url:
        pages.append(reader.follow(pages[-1].next_url))
    deleted = [d for page in pages for d in page.deleted]
    assert sorted(deleted) == [("Appointment", a) for a in gone] and not any(p.resources for p in pages)
    assert set(reader.ids("Appointment")) == appointments - set(gone)


def test_the_no_history_profile(faulty: FaultyEhr, key: RSAKey) -> None:
    config = SandboxConfig(profile="no-history", port=free_port(), clients=[backend_client(key)],
                           fhir_internal_port=faulty.stack.config.fhir_internal_port)
    with EhrServer(config) as server:
        conn = Conn(server.url, server.config.iss, key)
        with pytest.raises(PermanentEhrError) as raised:
            conn.reader().history("Encounter", "2020-01-01T00:00:00Z", 10)
        assert raised.value.status == 404
        cap = requests.get(f"{server.config.iss}/metadata", timeout=30).json()["rest"][0]
        codes = {i["code"] for r in cap["resource"] for i in r.get("interaction", [])}
        assert "history-type" not in codes and "read" in codes
        assert "history-system" not in {i["code"] for i in cap.get("interaction", [])}
        assert len(conn.reader().search("Patient", [("_count", "5")]).resources) == 5
