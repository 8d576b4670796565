"""Profile racy-conditional-create: If-None-Exist done as a racing EHR does it (search, pause, blind create).

Parallel conditional creates of one identifier make duplicates there, and from then on every conditional
create of that identifier answers 412; the default profile (the FHIR server's own atomic check) makes one.
One FHIR server: the racy EHR's stack, with a default-profile EHR in front of the same server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from joserfc.jwk import RSAKey

from connector.backend import BackendCredentials, fetch_token
from ehr_sandbox.config import SandboxClient, SandboxConfig
from ehr_sandbox.ehr_app import EhrServer
from ehr_sandbox.fhir_server import DEFAULT_DATASET
from ehr_sandbox.stack import SandboxStack
from tests.support.ports import free_port

CLIENT = "racing-tests"
SCOPE = "system/Communication.crs"
BUSINESS_KEY = "https://fhir-prm.org/fhir/sid/business-key"
FHIR_JSON = "application/fhir+json"
PARALLEL = 8


def first_patient_id() -> str:
    with (DEFAULT_DATASET / "Patient.ndjson").open(encoding="utf-8") as lines:
        return str(json.loads(next(lines))["id"])


PATIENT = first_patient_id()


@pytest.fixture(scope="module")
def key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "racing-1", "alg": "RS384", "use": "sig"}, private=True)


def client(key: RSAKey) -> SandboxClient:
    return SandboxClient(CLIENT, [], scopes=SCOPE, auth_method="private_key_jwt",
                         jwks={"keys": [key.as_dict(private=False)]}, grant_types=["client_credentials"])


@pytest.fixture(scope="module")
def racy(key: RSAKey) -> Iterator[SandboxStack]:
    config = SandboxConfig(profile="racy-conditional-create", port=0, fhir_internal_port=0, clients=[client(key)])
    with SandboxStack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def plain(racy: SandboxStack, key: RSAKey) -> Iterator[EhrServer]:
    config = SandboxConfig(port=free_port(), fhir_internal_port=racy.config.fhir_internal_port, clients=[client(key)])
    with EhrServer(config) as server:
        yield server


class Fhir:
    """A backend-services client of one EHR, just enough for these tests."""

    def __init__(self, ehr_url: str, key: RSAKey) -> None:
        creds = BackendCredentials(client_id=CLIENT, token_endpoint=f"{ehr_url}/oauth/token", auth="private_key_jwt",
                                   alg="RS384", kid=key.kid, private_key_pem=key.as_pem(private=True).decode())
        self.iss = f"{ehr_url}/fhir"
        self.headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON,
                        "Authorization": f"Bearer {fetch_token(creds, SCOPE, 30).access_token}"}

    def conditional_create(self, resource: dict[str, Any], criteria: str) -> requests.Response:
        return requests.post(f"{self.iss}/{resource['resourceType']}", json=resource, timeout=60,
                             headers={**self.headers, "If-None-Exist": criteria})

    def bundle(self, kind: str, resource: dict[str, Any], criteria: str) -> requests.Response:
        entry = {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource,
                 "request": {"method": "POST", "url": resource["resourceType"], "ifNoneExist": criteria}}
        return requests.post(self.iss, json={"resourceType": "Bundle", "type": kind, "entry": [entry]},
                             headers=self.headers, timeout=60)

    def count(self, criteria: str) -> int:
        found = requests.get(f"{self.iss}/Communication?{criteria}", headers=self.headers, timeout=60)
        assert found.status_code == 200, found.text
        return int(found.json()["total"])


def communication() -> tuple[dict[str, Any], str]:
    """A Communication as fhir-prm writes one, and its If-None-Exist criteria (a fresh business key)."""
    key = f"outreach-{uuid.uuid4()}"
    resource = {
        "resourceType": "Communication", "status": "completed",
        "identifier": [{"system": BUSINESS_KEY, "value": key}],
        "subject": {"reference": f"Patient/{PATIENT}"},
        "sent": "2025-10-01T09:30:00Z",
        "payload": [{"contentString": "Your check-up is due: call us to book."}],
    }
    return resource, f"identifier={BUSINESS_KEY}|{key}"


def in_parallel(send: Any) -> list[requests.Response]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda _: send(), range(PARALLEL)))


def test_parallel_conditional_creates_make_duplicates_then_412(racy: SandboxStack, key: RSAKey) -> None:
    fhir = Fhir(racy.ehr_url, key)
    resource, criteria = communication()
    answers = in_parallel(lambda: fhir.conditional_create(resource, criteria))
    assert {a.status_code for a in answers} <= {200, 201}, [a.text for a in answers]
    created = [a for a in answers if a.status_code == 201]
    assert len(created) > 1
    assert fhir.count(criteria) == len(created) > 1
    again = fhir.conditional_create(resource, criteria)
    assert again.status_code == 412, again.text
    issue = again.json()["issue"][0]
    assert again.json()["resourceType"] == "OperationOutcome" and issue["code"] == "multiple-matches"
    assert "multiple matches" in issue["diagnostics"]
    assert fhir.count(criteria) == len(created)


def test_one_match_answers_200_with_it_as_the_server_would(racy: SandboxStack, key: RSAKey) -> None:
    fhir = Fhir(racy.ehr_url, key)
    resource, criteria = communication()
    first = fhir.conditional_create(resource, criteria)
    assert first.status_code == 201, first.text
    again = fhir.conditional_create(resource, criteria)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"] == 'W/"1"'
    minimal = requests.post(f"{fhir.iss}/Communication", json=resource, timeout=60,
                            headers={**fhir.headers, "If-None-Exist": criteria, "Prefer": "return=minimal"})
    assert minimal.status_code == 200 and minimal.content == b""
    assert fhir.count(criteria) == 1


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_bundle_conditional_creates_race_too(racy: SandboxStack, key: RSAKey, kind: str) -> None:
    fhir = Fhir(racy.ehr_url, key)
    resource, criteria = communication()
    answers = in_parallel(lambda: fhir.bundle(kind, resource, criteria))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    statuses = [a.json()["entry"][0]["response"]["status"] for a in answers]
    assert statuses.count("201 Created") > 1
    assert fhir.count(criteria) == statuses.count("201 Created")
    again = fhir.bundle("batch", resource, criteria)
    assert again.json()["entry"][0]["response"]["status"].startswith("412")


def test_the_default_profile_makes_exactly_one(plain: EhrServer, key: RSAKey) -> None:
    fhir = Fhir(plain.url, key)
    resource, criteria = communication()
    statuses = [fhir.conditional_create(resource, criteria).status_code for _ in range(PARALLEL)]
    assert statuses == [201] + [200] * (PARALLEL - 1)
    assert fhir.count(criteria) == 1
