"""FhirWriter's pure parts: Location/ETag/status parsing, identifier escaping and chunking, the error table,
bundle entry answers; and, through canned answers of the fault proxy, the OperationOutcome code of a 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote_plus

import pytest
import requests

from connector.fhir_writer import (
    BundleWrite,
    FhirWriter,
    MultipleMatches,
    PreconditionFailed,
    WriteOutcome,
    WriteRefused,
    _entry_outcome,
    chunk_tokens,
    escape_token,
    identifier_query,
    identifier_token,
    outcome_issues,
    parse_etag,
    parse_location,
    parse_status,
    write_error,
)
from connector.polite import PoliteClient
from prm.errors import PermanentEhrError, TransientEhrError, ValidationError
from tests.support.fault_proxy import FaultProxy
from tests.support.ports import free_port

SYSTEM = "https://fhir-prm.org/fhir/sid/business-key"


def oo(code: str, text: str = "nope") -> dict[str, object]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


@pytest.mark.parametrize(("location", "expected"), [
    ("Communication/abc/_history/3", ("Communication", "abc", "3")),
    ("http://ehr.example:8080/fhir/Task/t-1/_history/12", ("Task", "t-1", "12")),
    ("https://ehr.example/fhir/Task/t-1", ("Task", "t-1", None)),
    ("Task/t-1/_history/", ("Task", "t-1", None)),
    ("https://ehr.example/fhir/Task/t-1/_history/2?x=1", ("Task", "t-1", "2")),
    ("", None), (None, None), ("https://ehr.example/fhir", None), ("task/t-1", None), ("Task/bad id", None),
])
def test_location(location: str | None, expected: tuple[str, str, str | None] | None) -> None:
    assert parse_location(location) == expected


def test_etag_and_status() -> None:
    assert parse_etag('W/"3"') == parse_etag('"3"') == parse_etag("3") == parse_etag(' w/"3" ') == "3"
    assert parse_etag(None) is None and parse_etag('W/""') is None and parse_etag('W/"a b"') is None
    assert parse_status("201 Created") == 201 and parse_status("412") == 412 and parse_status(" 200 OK") == 200
    assert parse_status(None) == 0 and parse_status("Created") == 0


def test_identifier_escaping_survives_the_query() -> None:
    assert escape_token(r"a,b|c$d\e") == r"a\,b\|c\$d\\e"
    assert identifier_token(SYSTEM, "care-ticket-1") == f"{SYSTEM}|care-ticket-1"
    query = identifier_query(SYSTEM, "a+b c,d")
    assert "\n" not in query and " " not in query
    assert parse_qsl(query) == [("identifier", f"{SYSTEM}|a+b c\\,d")]


def test_chunks_fit_the_budget_and_keep_order() -> None:
    tokens = [identifier_token(SYSTEM, f"care-ticket-{i:04d}") for i in range(100)]
    budget = 1000
    chunks = chunk_tokens(tokens, budget)
    assert [t for c in chunks for t in c] == tokens and len(chunks) > 1
    for chunk in chunks:
        assert len(quote_plus(",".join(chunk))) <= budget
    assert len(quote_plus(",".join(chunks[0] + [chunks[1][0]]))) > budget  # each chunk is as full as it can be
    long = "x" * 2000
    assert chunk_tokens(["a", long, "b"], 100) == [["a"], [long], ["b"]]
    assert chunk_tokens([], 100) == []


@pytest.mark.parametrize(("status", "codes", "create", "kind"), [
    (412, (), True, MultipleMatches),
    (412, ("multiple-matches",), False, MultipleMatches),
    (412, ("conflict",), False, PreconditionFailed),
    (409, ("conflict",), False, PreconditionFailed),
    (409, ("duplicate",), True, PermanentEhrError),
    (403, ("forbidden",), False, WriteRefused),
    (405, (), True, WriteRefused),
    (404, ("not-supported",), True, WriteRefused),
    (404, (), True, WriteRefused),
    (404, ("not-found",), False, PermanentEhrError),
    (422, ("not-supported",), True, WriteRefused),
    (400, ("structure", "forbidden"), False, WriteRefused),
    (400, ("structure",), True, PermanentEhrError),
    (422, ("processing",), False, PermanentEhrError),
    (410, (), False, PermanentEhrError),
])
def test_the_error_table(status: int, codes: tuple[str, ...], create: bool, kind: type[Exception]) -> None:
    error = write_error(status, codes, "why", create=create)
    assert type(error) is kind and error.status == status and isinstance(error, PermanentEhrError)


def test_outcome_issues() -> None:
    assert outcome_issues(oo("forbidden", "no Task writes")) == ("no Task writes", ("forbidden",))
    assert outcome_issues({"resourceType": "OperationOutcome", "issue": [{"code": "conflict"}]}) == (
        "conflict", ("conflict",))
    assert outcome_issues({"resourceType": "Task"}) == ("", ()) and outcome_issues(None) == ("", ())


def test_bundle_entry_answers() -> None:
    comm = {"resourceType": "Communication", "id": "c-1", "status": "completed"}
    create, update = BundleWrite.create(comm, "identifier=x"), BundleWrite.update(comm, "2")
    made = _entry_outcome(create, {"response": {"status": "201 Created", "location": "Communication/n/_history/1",
                                                "etag": 'W/"1"'}})
    assert made == WriteOutcome(201, "Communication", "n", "1", True, None, None, "create") and made.error() is None
    found = _entry_outcome(create, {"resource": {"resourceType": "Communication", "id": "old", "meta": {
        "versionId": "4"}}, "response": {"status": "200 OK"}})
    assert (found.status, found.id, found.version_id, found.created) == (200, "old", "4", False)
    etag_only = _entry_outcome(update, {"response": {"status": "200 OK", "etag": 'W/"3"'}})
    assert (etag_only.id, etag_only.version_id, etag_only.action) == ("c-1", "3", "update")
    stale = _entry_outcome(update, {"response": {"status": "412 Precondition Failed",
                                                 "outcome": oo("conflict", "Version conflict")}})
    assert (stale.ok, stale.id, stale.detail, stale.code) == (False, "c-1", "Version conflict", "conflict")
    assert type(stale.error()) is PreconditionFailed
    many = _entry_outcome(create, {"response": {"status": "412"}})
    assert many.code == "multiple-matches" and type(many.error()) is MultipleMatches and many.id is None
    refused = _entry_outcome(create, {"response": {"status": "403 Forbidden", "outcome": oo("forbidden")}})
    assert type(refused.error()) is WriteRefused
    busy = _entry_outcome(create, {"response": {"status": "503"}})
    assert isinstance(busy.error(), TransientEhrError)
    with pytest.raises(PermanentEhrError, match="no response"):
        _entry_outcome(create, {"resource": comm})


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as running:  # nothing behind it: faults answer
        yield running


def writer(proxy: FaultProxy) -> FhirWriter:
    return FhirWriter(f"{proxy.url}/fhir", PoliteClient(requests.Session(), sleep=lambda s: None),
                      lambda: "t", lambda: None)


COMM = {"resourceType": "Communication", "id": "c-1", "status": "completed",
        "identifier": [{"system": SYSTEM, "value": "k"}]}


def test_a_4xx_is_classified_by_its_operation_outcome_code(proxy: FaultProxy) -> None:
    w = writer(proxy)
    proxy.add_fault(r"^/fhir/Communication$", status=422, body=json.dumps(oo("not-supported", "no such writes")))
    with pytest.raises(WriteRefused, match="no such writes") as refused:
        w.create(COMM, identifier_query(SYSTEM, "k"))
    assert refused.value.status == 422
    proxy.add_fault(r"^/fhir/Communication$", status=422, body=json.dumps(oo("required", "status is required")))
    with pytest.raises(PermanentEhrError) as invalid:
        w.create(COMM, identifier_query(SYSTEM, "k"))
    assert type(invalid.value) is PermanentEhrError and invalid.value.status == 422
    proxy.add_fault(r"^/fhir/Communication/c-1$", status=412, body=json.dumps(oo("conflict")))
    with pytest.raises(PreconditionFailed) as stale:
        w.update(COMM, "1")
    assert type(stale.value) is PreconditionFailed
    proxy.add_fault(r"^/fhir/Communication/c-1$", status=404, body=json.dumps(oo("not-found")))
    with pytest.raises(PermanentEhrError) as gone:
        w.update(COMM, None)
    assert type(gone.value) is PermanentEhrError
    proxy.add_fault(r"^/fhir$", status=405, body="not here")
    with pytest.raises(WriteRefused):
        w.post_bundle("batch", [BundleWrite.create(COMM, identifier_query(SYSTEM, "k"))])
    assert proxy.count("POST", r"^/fhir") == 3 and proxy.count("PUT", r"^/fhir") == 2


def test_writes_are_sent_once_and_answers_checked(proxy: FaultProxy) -> None:
    w = writer(proxy)
    proxy.add_fault(r"^/fhir/Communication", status=503, times=5)
    with pytest.raises(TransientEhrError):
        w.create(COMM, identifier_query(SYSTEM, "k"))
    with pytest.raises(TransientEhrError):
        w.update(COMM, "1")
    assert proxy.count("POST", "Communication") == 1 and proxy.count("PUT", "Communication") == 1
    proxy.add_fault(r"^/fhir$", body=json.dumps({"resourceType": "Bundle", "type": "batch-response", "entry": []}))
    with pytest.raises(PermanentEhrError, match="not a matching Bundle"):
        w.post_bundle("batch", [BundleWrite.create(COMM, identifier_query(SYSTEM, "k"))])


def test_bad_input_never_reaches_the_ehr(proxy: FaultProxy) -> None:
    w = writer(proxy)
    for criteria in ("", "?identifier=x", "identifier", "identifier=a\r\nX-Evil: 1"):
        with pytest.raises(ValidationError):
            w.create(COMM, criteria)
    with pytest.raises(ValidationError):
        w.update({**COMM, "id": "../metadata"}, None)
    with pytest.raises(ValidationError):
        w.update(COMM, 'W/"1"')
    with pytest.raises(ValidationError):
        w.create({**COMM, "resourceType": "communication"}, "identifier=x")
    with pytest.raises(ValidationError):
        w.post_bundle("collection", [])  # type: ignore[arg-type]
    assert w.post_bundle("batch", []) == [] and proxy.hits == []
