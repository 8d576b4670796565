"""A search names fifty patients only where the EHR answered two patients' list with exactly both patients'
visits; a refusal, a short answer or nobody to compare means one patient a search. And a pass's steps name a
batch of patients a search, read-before ones since the cursor, new ones whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connector.fhir_reader import Page
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.errors import PermanentEhrError, TransientEhrError
from workers.patient_lists import LIST_SIZE, PROBE_CANDIDATES, needs_asking, probe
from workers.sync_patients import _steps

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
VISITS = {"p1": ["e1", "e2"], "p2": [], "p3": ["e3"], "p4": ["e4", "e5"]}


class Ehr:
    """Encounters by patient; `lists` says how a list of patients is answered: in full, first-only, refused."""

    def __init__(self, lists: str = "any", page_size: int = 100, failure: Exception | None = None) -> None:
        self.lists, self.page_size, self.failure = lists, page_size, failure
        self.asked: list[str] = []
        self.followed = 0

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page:
        assert resource_type == "Encounter"
        named = dict(params)["patient"]
        self.asked.append(named)
        patients = [ref.removeprefix("Patient/") for ref in named.split(",")]
        if len(patients) > 1 and self.failure is not None:
            raise self.failure
        if self.lists == "first-only":
            patients = patients[:1]
        if self.lists == "ignored" and len(patients) > 1:  # every visit it holds
            return self._page([v for visits in VISITS.values() for v in visits] + [f"x{i}" for i in range(500)], 0)
        ids = [visit for patient in patients for visit in VISITS.get(patient, [])]
        return self._page(ids, 0)

    def follow(self, next_url: str) -> Page:
        self.followed += 1
        ids, start = next_url.split("|")
        return self._page(ids.split(","), int(start))

    def _page(self, ids: list[str], start: int) -> Page:
        end = start + self.page_size
        link = f"{','.join(ids)}|{end}" if end < len(ids) else None
        return Page([{"resourceType": "Encounter", "id": i} for i in ids[start:end]], link, None)


def test_a_list_answered_with_both_patients_visits_allows_fifty_a_search() -> None:
    ehr = Ehr()
    verdict = probe(ehr, ["p1", "p2", "p3", "p4"], NOW)
    assert verdict == {"asked_at": NOW.isoformat(), "probe": "Encounter?patient=<2 patients>", "allowed": True,
                       "detail": f"answered in full: {LIST_SIZE} patients a search"}
    assert ehr.asked == ["Patient/p1", "Patient/p2", "Patient/p3", "Patient/p1,Patient/p3"], \
        "a patient without visits proves nothing: the next one is asked"
    paged = Ehr(page_size=2)  # the list's answer spans pages: all are read before comparing
    assert probe(paged, ["p1", "p4"], NOW)["allowed"] is True


def test_a_list_answered_with_the_first_patients_visits_alone_means_one_patient_a_search() -> None:
    verdict = probe(Ehr("first-only"), ["p1", "p3"], NOW)
    assert verdict["allowed"] is False
    assert verdict["detail"] == "answered with 2 visits, not the 3 the two patients have: one patient a search"
    assert "p1" not in str(verdict) and "p3" not in str(verdict), "IT's words name no patient"


def test_a_list_answered_with_more_than_both_patients_visits_is_read_no_further_than_that() -> None:
    ignoring = Ehr("ignored", page_size=2)
    verdict = probe(ignoring, ["p1", "p3"], NOW)
    assert (verdict["allowed"], verdict["detail"]) == (
        False, "answered with 4+ visits, not the 3 the two patients have: one patient a search")
    assert ignoring.followed == 1, "not the 250 pages of every visit the server holds"


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_a_refused_list_means_one_patient_a_search(status: int) -> None:
    verdict = probe(Ehr(failure=PermanentEhrError("one patient", status)), ["p1", "p3"], NOW)
    assert (verdict["allowed"], verdict["detail"]) == (False, f"refused ({status}): one patient a search")


def test_a_failing_ehr_gives_no_verdict_and_the_run_fails_as_any_run_would() -> None:
    for failure in (TransientEhrError("busy"), PermanentEhrError("gone", 410)):
        with pytest.raises(type(failure)):
            probe(Ehr(failure=failure), ["p1", "p3"], NOW)


def test_nobody_to_compare_is_no_answer_asked_again_a_day_later() -> None:
    crowded = Ehr(page_size=1)  # p1's and p4's visits do not fit a page: no exact comparison
    verdict = probe(crowded, ["p1", "p2", "p4"] + [f"q{i}" for i in range(20)], NOW)
    assert verdict["allowed"] is None and "asked again in a day" in verdict["detail"]
    assert len(crowded.asked) == PROBE_CANDIDATES, "a bounded number of patients is tried"
    assert needs_asking(None, NOW)
    assert not needs_asking(verdict, NOW + timedelta(hours=23))
    assert needs_asking(verdict, NOW + timedelta(hours=25))
    assert not needs_asking({**verdict, "allowed": False}, NOW + timedelta(days=30)), "an answer stands"
    assert not needs_asking({**verdict, "allowed": True}, NOW + timedelta(days=30))


def test_a_pass_names_a_batch_of_patients_a_search_the_known_since_the_cursor_the_new_whole() -> None:
    since = [("_lastUpdated", "ge2026-11-20T11:00:00.000Z")]
    steps = _steps("Encounter", ["p1", "p2", "p3"], {"p1", "p3"}, since, per_search=2)
    assert steps == [
        ("p2", [([("patient", "Patient/p1"), ("_sort", "_lastUpdated"), *since], []),
                ([("patient", "Patient/p2"), ("_sort", "_lastUpdated")], ["p2"])]),
        ("p3", [([("patient", "Patient/p3"), ("_sort", "_lastUpdated"), *since], [])]),
    ]
    [(last, [(params, whole)])] = _steps("Task", ["p1", "p2"], {"p1", "p2"}, since, per_search=LIST_SIZE)
    assert (last, whole) == ("p2", [])
    assert params == [("patient", "Patient/p1,Patient/p2"), ("_sort", "_lastUpdated"),
                      ("identifier", f"{IDENTIFIER_SYSTEM}|"), *since]
    one_each = _steps("Encounter", ["p1", "p2"], set(), [], per_search=1)
    assert [last for last, _ in one_each] == ["p1", "p2"], "where the EHR takes no list: a patient a step"
