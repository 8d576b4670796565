"""FhirWriter against the real sandbox EHR (sekmet-fhir behind the SMART proxy), and through the fault proxy:
exactly-once creates, versioned updates, identifier lookups, batch and transaction Bundles, refusals."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from joserfc.jwk import RSAKey

from connector.backend import BackendCredentials, BackendTokens
from connector.fhir_writer import (
    BundleWrite,
    FhirWriter,
    MultipleMatches,
    PreconditionFailed,
    WriteRefused,
    identifier_query,
)
from connector.polite import PoliteClient
from ehr_sandbox.config import SandboxClient, SandboxConfig
from ehr_sandbox.ehr_app import EhrServer
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.errors import PermanentEhrError, TransientEhrError
from tests.support.fault_proxy import FaultyEhr
from tests.support.ports import free_port

CLIENT = "fhir-writer-tests"
SCOPE = "system/*.rs system/Task.cru system/Communication.cru"
PATIENT = "pat-000001"


@pytest.fixture(scope="module")
def key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "writer-1", "alg": "RS384", "use": "sig"}, private=True)


def backend_client(key: RSAKey) -> SandboxClient:
    return SandboxClient(CLIENT, [], scopes=SCOPE, auth_method="private_key_jwt",
                         jwks={"keys": [key.as_dict(private=False)]}, grant_types=["client_credentials"])


@dataclass
class Conn:
    ehr_url: str
    iss: str
    key: RSAKey
    reauths: int = 0

    def __post_init__(self) -> None:
        self.creds = BackendCredentials(client_id=CLIENT, token_endpoint=f"{self.ehr_url}/oauth/token",
                                        auth="private_key_jwt", alg="RS384", kid=self.key.kid,
                                        private_key_pem=self.key.as_pem(private=True).decode())
        self.tokens = BackendTokens(margin_s=0)

    def token(self) -> str:
        return self.tokens.get(self.creds, SCOPE, 30).access_token

    def reauthenticate(self) -> None:
        self.reauths += 1
        self.tokens.invalidate(self.creds, SCOPE)

    def writer(self, **options: Any) -> FhirWriter:
        client = PoliteClient(requests.Session(), sleep=lambda s: None)
        return FhirWriter(self.iss, client, self.token, self.reauthenticate, **options)


@pytest.fixture(scope="module")
def faulty(key: RSAKey) -> Iterator[FaultyEhr]:
    """The one sandbox of this module, behind the fault proxy (the writes stay in its throwaway database)."""
    with FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0, clients=[backend_client(key)])) as ehr:
        yield ehr


@pytest.fixture
def conn(faulty: FaultyEhr, key: RSAKey) -> Iterator[Conn]:
    faulty.proxy.clear()
    yield Conn(faulty.ehr_url, faulty.iss, key)
    faulty.proxy.clear()


@pytest.fixture(scope="module")
def refusing(faulty: FaultyEhr, key: RSAKey) -> Iterator[Conn]:
    """A second EHR front, profile task-writes-refused, on the same FHIR server (no second data load)."""
    config = SandboxConfig(profile="task-writes-refused", port=free_port(), clients=[backend_client(key)],
                           fhir_internal_port=faulty.stack.config.fhir_internal_port)
    with EhrServer(config) as server:
        yield Conn(server.url, server.config.iss, key)


def key_of(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def communication(business_key: str, status: str = "in-progress") -> dict[str, Any]:
    return {
        "resourceType": "Communication", "status": status,
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": business_key}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                  "code": "reminder"}]}],
        "medium": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
                                "code": "SMSWRIT"}]}],
        "subject": {"reference": f"Patient/{PATIENT}"}, "recipient": [{"reference": f"Patient/{PATIENT}"}],
        "sent": "2026-03-02T09:30:00Z", "payload": [{"contentString": "Your six-month check-up is due."}],
    }


def task(business_key: str, status: str = "requested") -> dict[str, Any]:
    return {
        "resourceType": "Task", "status": status, "intent": "order", "priority": "routine",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": business_key}],
        "code": {"text": "Call the patient back"}, "description": "Patient asked about a follow-up visit.",
        "for": {"reference": f"Patient/{PATIENT}"}, "authoredOn": "2026-03-02T09:30:00Z",
    }


def ours(business_key: str) -> str:
    return identifier_query(IDENTIFIER_SYSTEM, business_key)


# ---------------- single writes ----------------

def test_a_conditional_create_twice_is_one_resource(conn: Conn) -> None:
    writer, key = conn.writer(), key_of("outreach-message")
    first = writer.create(communication(key), ours(key))
    assert (first.status, first.created, first.version_id, first.resource_type) == (201, True, "1", "Communication")
    again = writer.create(communication(key), ours(key))
    assert (again.status, again.created, again.id, again.version_id) == (200, False, first.id, "1")
    assert first.id is not None
    stored = writer.read("Communication", first.id)
    assert stored["identifier"][0]["value"] == key and stored["meta"]["versionId"] == "1"
    assert [r["id"] for r in writer.search_by_identifier("Communication", IDENTIFIER_SYSTEM, [key])] == [first.id]


def test_updates_carry_the_version_and_a_stale_one_is_refused(conn: Conn) -> None:
    writer, key = conn.writer(), key_of("care-ticket")
    made = writer.create(task(key), ours(key))
    assert made.id is not None and made.version_id == "1"
    current = writer.read("Task", made.id)
    updated = writer.update({**current, "status": "in-progress"}, current["meta"]["versionId"])
    assert (updated.status, updated.created, updated.id, updated.version_id) == (200, False, made.id, "2")
    with pytest.raises(PreconditionFailed) as stale:
        writer.update({**current, "status": "completed"}, "1")
    assert type(stale.value) is PreconditionFailed and stale.value.status == 412
    assert writer.read("Task", made.id)["status"] == "in-progress"
    blind = writer.update({**current, "status": "completed"}, None)
    assert (blind.status, blind.version_id) == (200, "3")


def test_an_identifier_on_two_resources_is_multiple_matches(conn: Conn) -> None:
    writer, key = conn.writer(), key_of("care-ticket")
    for other in ("a", "b"):  # criteria that never match, so both copies get in
        assert writer.create(communication(key), ours(f"{key}-{other}")).status == 201
    with pytest.raises(MultipleMatches) as many:
        writer.create(communication(key), ours(key))
    assert many.value.status == 412 and "matched 2" in str(many.value)


def test_search_finds_several_values_at_once(conn: Conn, faulty: FaultyEhr) -> None:
    writer = conn.writer()
    keys = [key_of("outreach-message") for _ in range(3)]
    ids = {writer.create(communication(k, status), ours(k)).id
           for k, status in zip(keys, ["completed", "entered-in-error", "in-progress"], strict=True)}
    faulty.proxy.clear()
    found = writer.search_by_identifier("Communication", IDENTIFIER_SYSTEM, [*keys, "no-such-key", keys[0]])
    assert {r["id"] for r in found} == ids and len(found) == 3
    assert {r["status"] for r in found} == {"completed", "entered-in-error", "in-progress"}
    assert faulty.proxy.count("GET", r"^/fhir/Communication$") == 1  # sekmet ORs comma-separated tokens
    faulty.proxy.clear()
    chunked = conn.writer(max_url=len(conn.iss) + 200).search_by_identifier("Communication", IDENTIFIER_SYSTEM, keys)
    assert {r["id"] for r in chunked} == ids and faulty.proxy.count("GET", r"^/fhir/Communication$") == 3
    one_by_one = conn.writer(or_search=False).search_by_identifier("Communication", IDENTIFIER_SYSTEM, keys)
    assert {r["id"] for r in one_by_one} == ids


def test_a_token_revoked_before_a_write_is_replaced_once(conn: Conn, faulty: FaultyEhr) -> None:
    writer, key = conn.writer(), key_of("outreach-message")
    faulty.proxy.add_fault(r"^/fhir/Communication$", method="POST", status=401)
    assert writer.create(communication(key), ours(key)).status == 201 and conn.reauths == 1
    assert len(writer.search_by_identifier("Communication", IDENTIFIER_SYSTEM, [key])) == 1


def test_a_503_is_transient_and_not_resent(conn: Conn, faulty: FaultyEhr) -> None:
    writer, key = conn.writer(), key_of("outreach-message")
    faulty.proxy.add_fault(r"^/fhir/Communication$", method="POST", status=503, retry_after="1", times=3)
    with pytest.raises(TransientEhrError) as busy:
        writer.create(communication(key), ours(key))
    assert busy.value.retry_after_s == 1.0 and faulty.proxy.count("POST", r"^/fhir/Communication$") == 1
    faulty.proxy.add_fault(r"^/fhir$", method="POST", status=503)
    with pytest.raises(TransientEhrError):
        writer.post_bundle("batch", [BundleWrite.create(communication(key), ours(key))])
    assert faulty.proxy.count("POST", r"^/fhir$") == 1
    assert writer.search_by_identifier("Communication", IDENTIFIER_SYSTEM, [key]) == []


# ---------------- Bundles ----------------

def test_a_batch_of_three_creates_and_an_update(conn: Conn) -> None:
    writer = conn.writer()
    keys = [key_of("outreach-message") for _ in range(3)]
    existing_key = key_of("care-ticket")
    existing = writer.create(task(existing_key), ours(existing_key))
    assert existing.id is not None
    current = writer.read("Task", existing.id)
    entries = [BundleWrite.create(communication(k), ours(k)) for k in keys]
    entries.append(BundleWrite.update({**current, "status": "in-progress"}, current["meta"]["versionId"]))
    outcomes = writer.post_bundle("batch", entries)
    assert [(o.status, o.created, o.resource_type) for o in outcomes] == [
        (201, True, "Communication")] * 3 + [(200, False, "Task")]
    assert all(o.ok and o.version_id and o.error() is None for o in outcomes)
    assert outcomes[3].id == existing.id and outcomes[3].version_id == "2"
    # sent again (say, after a lost answer): the creates find theirs, the stale update alone fails
    again = writer.post_bundle("batch", entries)
    assert [o.status for o in again] == [200, 200, 200, 412]
    assert [o.id for o in again[:3]] == [o.id for o in outcomes[:3]]
    assert type(again[3].error()) is PreconditionFailed and again[3].code == "conflict"
    assert again[3].detail and "Version conflict" in again[3].detail
    assert writer.read("Task", existing.id)["meta"]["versionId"] == "2"


def test_a_transaction_is_all_or_nothing(conn: Conn) -> None:
    writer = conn.writer()
    key_a, key_b, ticket = key_of("outreach-message"), key_of("outreach-message"), key_of("care-ticket")
    made = writer.create(task(ticket), ours(ticket))
    assert made.id is not None
    current = writer.read("Task", made.id)
    outcomes = writer.post_bundle("transaction", [
        BundleWrite.create(communication(key_a), ours(key_a)),
        BundleWrite.update({**current, "status": "accepted"}, "1"),
    ])
    assert [(o.status, o.created) for o in outcomes] == [(201, True), (200, False)]
    assert outcomes[1].version_id == "2" and outcomes[0].id is not None
    with pytest.raises(PreconditionFailed) as failed:
        writer.post_bundle("transaction", [
            BundleWrite.create(communication(key_b), ours(key_b)),
            BundleWrite.create(communication(key_a), ours(key_a)),
            BundleWrite.update({**current, "status": "completed"}, "1"),  # stale: now 2
        ])
    assert failed.value.status == 412 and "rolled back" in str(failed.value)
    assert writer.search_by_identifier("Communication", IDENTIFIER_SYSTEM, [key_b]) == []
    assert writer.read("Task", made.id)["status"] == "accepted"


# ---------------- refusals ----------------

def test_task_writes_refused(refusing: Conn, conn: Conn) -> None:
    writer, key = refusing.writer(), key_of("care-ticket")
    with pytest.raises(WriteRefused) as refused:
        writer.create(task(key), ours(key))
    assert refused.value.status == 403 and "does not accept writes of Task" in str(refused.value)
    made = conn.writer().create(task(key), ours(key))  # the same Task through the default EHR front
    assert made.id is not None
    with pytest.raises(WriteRefused):
        writer.update({**conn.writer().read("Task", made.id), "status": "cancelled"}, made.version_id)
    # the sandbox refuses a Bundle holding a Task write as a whole (403), batch or transaction alike
    comm_key = key_of("outreach-message")
    for kind in ("batch", "transaction"):
        with pytest.raises(WriteRefused) as whole:
            writer.post_bundle(kind, [BundleWrite.create(communication(comm_key), ours(comm_key)),
                                      BundleWrite.create(task(key), ours(key))])
        assert whole.value.status == 403
    assert writer.create(communication(comm_key), ours(comm_key)).status == 201  # Communication still welcome


def test_a_refused_entry_of_a_batch(conn: Conn, faulty: FaultyEhr) -> None:
    """An EHR that refuses entry by entry (as HAPI does): the refusal is the entry's, the others go through."""
    writer, key = conn.writer(), key_of("care-ticket")
    answer = {"resourceType": "Bundle", "type": "batch-response", "entry": [
        {"response": {"status": "201 Created", "location": "Communication/c-9/_history/1", "etag": 'W/"1"'}},
        {"response": {"status": "403 Forbidden", "outcome": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "forbidden", "diagnostics": "Task writes are not allowed"}]}}}]}
    faulty.proxy.add_fault(r"^/fhir$", method="POST", body=json.dumps(answer))
    made, refused = writer.post_bundle("batch", [BundleWrite.create(communication(key), ours(key)),
                                                 BundleWrite.create(task(key), ours(key))])
    assert (made.status, made.id, made.version_id, made.created) == (201, "c-9", "1", True)
    assert (refused.status, refused.id, refused.code) == (403, None, "forbidden")
    error = refused.error()
    assert isinstance(error, WriteRefused) and "Task writes are not allowed" in str(error)


def test_a_type_outside_the_granted_scopes_is_refused(conn: Conn) -> None:
    key = key_of("care-ticket")
    flag = {"resourceType": "Flag", "status": "active", "code": {"text": "Prefers morning calls"},
            "subject": {"reference": f"Patient/{PATIENT}"},
            "identifier": [{"system": IDENTIFIER_SYSTEM, "value": key}]}
    with pytest.raises(WriteRefused) as refused:
        conn.writer().create(flag, ours(key))
    assert refused.value.status == 403 and isinstance(refused.value, PermanentEhrError)

