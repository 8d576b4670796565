"""Bundle pages as the sync sees them, the iss fence, and NDJSON lines that are not resources."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from connector.bulk import BulkExport
from connector.fhir_reader import (
    Authed,
    GroupRoster,
    _keep_since,
    group_roster,
    in_last_updated_order,
    page_of,
)
from connector.polite import PoliteClient
from prm.errors import PermanentEhrError
from tests.support.fault_proxy import FaultProxy
from tests.support.ports import free_port

ISS = "https://ehr.example/fhir"


def test_search_pages_keep_matches_in_order_and_drop_outcomes_and_includes() -> None:
    page = page_of({"resourceType": "Bundle", "type": "searchset", "total": 7, "entry": [
        {"resource": {"resourceType": "Encounter", "id": "b"}, "search": {"mode": "match"}},
        {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
        {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        {"resource": {"resourceType": "OperationOutcome"}},
        {"resource": {"resourceType": "Encounter", "id": "a"}},
    ], "link": [{"relation": "self", "url": f"{ISS}/Encounter"}, {"relation": "next", "url": f"{ISS}/Encounter?p=2"}]})
    assert [r["id"] for r in page.resources] == ["b", "a"]
    assert page.next_url == f"{ISS}/Encounter?p=2" and page.total == 7 and page.deleted == []


def test_history_pages_keep_each_resources_newest_entry() -> None:
    page = page_of({"resourceType": "Bundle", "type": "history", "entry": [
        {"request": {"method": "DELETE", "url": "Encounter/x"}},
        {"resource": {"resourceType": "Encounter", "id": "x", "meta": {"versionId": "1"}},
         "request": {"method": "PUT", "url": "Encounter/x"}},
        {"resource": {"resourceType": "Encounter", "id": "y", "meta": {"versionId": "3"}}},
        {"resource": {"resourceType": "Encounter", "id": "y", "meta": {"versionId": "2"}}},
        {"request": {"method": "DELETE", "url": "Encounter/z/_history/4"}},
    ]})
    assert [(r["id"], r["meta"]["versionId"]) for r in page.resources] == [("y", "3")]
    assert page.deleted == [("Encounter", "x"), ("Encounter", "z")] and page.next_url is None


def test_a_groups_patients_are_its_active_patient_members() -> None:
    group = {"resourceType": "Group", "member": [
        {"entity": {"reference": "Patient/p-1"}},
        {"entity": {"reference": "https://ehr.example/fhir/Patient/p-2"}},
        {"entity": {"reference": "Patient/p-3"}, "inactive": True},
        {"entity": {"reference": "Practitioner/x"}},
        {"entity": {"reference": "Patient/p-1"}},
        {"entity": {"display": "no reference"}},
        {"entity": {"reference": "Patient/p-4/_history/2"}},
        {"entity": {"identifier": {"system": "urn:mrn", "value": "123"}}},
        {"entity": {"reference": "urn:uuid:5a0c"}},
    ]}
    assert list(group_roster(group).patients) == ["p-1", "p-2", "p-4"]
    assert group_roster(group) == GroupRoster(("p-1", "p-2", "p-4"), unresolved=3), \
        "members it cannot tell are counted: who they are is unknown"


def test_anything_but_a_bundle_is_permanent() -> None:
    with pytest.raises(PermanentEhrError):
        page_of({"resourceType": "OperationOutcome"})


def test_a_history_link_that_lost_since_gets_it_back() -> None:
    asked = f"{ISS}/Encounter/_history?_since=2026-11-01T00%3A00%3A00Z&_count=3"
    assert _keep_since(f"{ISS}/Encounter/_history?_count=3&_offset=3", asked) == (
        f"{ISS}/Encounter/_history?_count=3&_offset=3&_since=2026-11-01T00%3A00%3A00Z")
    kept = f"{ISS}/Encounter/_history?_since=x&_offset=3"
    assert _keep_since(kept, asked) == kept and _keep_since(None, asked) is None
    assert _keep_since(f"{ISS}/Encounter?_offset=3", f"{ISS}/Encounter?_count=3") == f"{ISS}/Encounter?_offset=3"


@pytest.mark.parametrize("url", [f"{ISS}/Encounter?_offset=3", ISS, f"{ISS}?_getpages=1"])
def test_urls_on_the_ehr_pass(url: str) -> None:
    assert Authed(ISS + "/", PoliteClient(requests.Session()), str, lambda: None).on_ehr(url, "link") == url


@pytest.mark.parametrize("url", ["https://ehr.example/fhir-other/x", "https://ehr.example.evil/fhir/x",
                                 "http://ehr.example/fhir/x", "/fhir/Encounter", "https://ehr.example/"])
def test_urls_off_the_ehr_are_refused(url: str) -> None:
    with pytest.raises(PermanentEhrError):
        Authed(ISS, PoliteClient(requests.Session()), str, lambda: None).on_ehr(url, "link")


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as running:  # nothing behind it: faults answer
        yield running


def test_ndjson_lines_that_are_not_resources_come_out_marked(proxy: FaultProxy) -> None:
    lines = ['{"resourceType":"Patient","id":"a"}', "", "{not json", "[1, 2]", '{"resourceType":"Patient","id":"b"}']
    proxy.add_fault(r"^/fhir/bulk-files/1/Patient\.ndjson$", body="\n".join(lines) + "\n")
    bulk = BulkExport(f"{proxy.url}/fhir", PoliteClient(requests.Session()), lambda: "t", lambda: None)
    got = list(bulk.resources(f"{proxy.url}/fhir/bulk-files/1/Patient.ndjson"))
    assert [g.get("id") for g in got] == ["a", None, None, "b"]
    assert [(g["resourceType"], g["line"]) for g in got[1:3]] == [("__invalid__", 3), ("__invalid__", 4)]
    assert "{not json" not in str(got)  # the bad line's content stays out of what gets stored and logged


def stamped(*instants: str | None) -> list[dict[str, object]]:
    return [{"resourceType": "Encounter", "id": f"e{n}", **({"meta": {"lastUpdated": t}} if t else {})}
            for n, t in enumerate(instants)]


def test_in_last_updated_order() -> None:
    assert in_last_updated_order(stamped("2026-11-20T10:00:00Z", "2026-11-20T10:00:00Z", "2026-11-20T10:00:01Z"))
    assert not in_last_updated_order(stamped("2026-11-20T10:00:01Z", "2026-11-20T10:00:00.5Z"))
    # offsets compare as instants, not as text: 11:00+01:00 is 10:00Z
    assert in_last_updated_order(stamped("2026-11-20T10:00:00.5Z", "2026-11-20T11:00:01+01:00"))
    assert not in_last_updated_order(stamped("2026-11-20T10:00:02Z", "2026-11-20T11:00:01+01:00"))
    # no instant, or one that does not parse (or has no zone), is passed over rather than guessed at
    assert in_last_updated_order(stamped("2026-11-20T10:00:00Z", None, "garbage", "2026-11-20T09:00",
                                         "2026-11-20T10:00:01Z"))
    assert in_last_updated_order([]) and in_last_updated_order(stamped(None))
