"""A search names fifty patients only where the EHR answered a list of fifty (or of the whole population,
where smaller), with two patients whose records differ first and last, with both patients' records and nobody
else's; a refusal, a failure, a short or foreign answer, or nobody to compare means one patient a search. And a
pass's steps name a batch of patients a search, read-before ones since the cursor, new ones whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connector.fhir_reader import Page
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.errors import PermanentEhrError, TransientEhrError
from workers.patient_lists import (
    ANSWER_PAGE_LIMIT,
    ANSWER_PAGES,
    LIST_SIZE,
    PROBE_CANDIDATES,
    needs_asking,
    one_by_one,
    probe,
    type_params,
)
from workers.sync_patients import _one_by_one_after, _steps
from workers.sync_run import StreamRun

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
VISITS = {"p1": ["e1", "e2"], "p2": [], "p3": ["e3"], "p4": ["e4", "e5"], "p5": ["e1"]}  # p5 shares p1's visit
POPULATION = ["p1", "p2", "p3", "p4", "p5"] + [f"q{i:02}" for i in range(60)]
KEPT: list[int] = []


def keep_lease() -> None:  # stands for the stream lease's keep
    KEPT.append(1)


class Ehr:
    """Encounters by patient. `lists`: how a list of patients is answered: "any" (in full), "first-only",
    "capped" (the first ten values read), "ignored" (every visit it holds), "looping" (a next link to itself)."""

    def __init__(self, lists: str = "any", page_size: int = 100, failure: Exception | None = None,
                 visits: dict[str, list[str]] | None = None, by_id: bool = False) -> None:
        self.lists, self.page_size, self.failure, self.by_id = lists, page_size, failure, by_id
        self.visits = VISITS if visits is None else visits
        self.asked: list[list[str]] = []
        self.followed = 0

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page:
        assert resource_type == "Encounter" and ("_sort", "_lastUpdated") in params and "_count" not in dict(params), \
            "asked as a pass asks"
        patients = [ref.removeprefix("Patient/") for ref in dict(params)["patient"].split(",")]
        self.asked.append(patients)
        if len(patients) > 1 and self.failure is not None:
            raise self.failure
        if self.lists == "ignored" and len(patients) > 1:
            return self._page([f"x{i}" for i in range(500)] + [v for ids in self.visits.values() for v in ids], 0)
        patients = {"first-only": patients[:1], "capped": patients[:10]}.get(self.lists, patients) \
            if len(patients) > 1 else patients
        found = list(dict.fromkeys(v for p in patients for v in self.visits.get(p, [])))
        return self._page(sorted(found) if self.by_id else found, 0)

    def follow(self, next_url: str) -> Page:
        self.followed += 1
        ids, start = next_url.split("|")
        return self._page(ids.split(","), 0 if self.lists == "looping" else int(start))

    def _page(self, ids: list[str], start: int) -> Page:
        end = start + self.page_size
        link = f"{','.join(ids)}|{end}" if end < len(ids) else None
        return Page([self._visit(i) for i in ids[start:end]], link, None)

    def _visit(self, fhir_id: str) -> dict[str, Any]:
        holder = next((p for p, ids in self.visits.items() if fhir_id in ids), "stranger")
        return {"resourceType": "Encounter", "id": fhir_id, "subject": {"reference": f"Patient/{holder}"}}


def test_a_list_of_fifty_answered_with_both_patients_records_allows_fifty_a_search() -> None:
    ehr = Ehr()
    verdict = probe(ehr, "Encounter", POPULATION, NOW, keep_lease)
    assert verdict == {"asked_at": NOW.isoformat(), "probe": "Encounter?patient=<50 patients>", "allowed": True,
                       "size": LIST_SIZE, "tried": 0, "detail": f"answered in full: {LIST_SIZE} patients a search"}
    assert ehr.asked[:3] == [["p1"], ["p2"], ["p3"]], "a patient without records proves nothing: the next is asked"
    [listed] = ehr.asked[3:]
    assert len(listed) == LIST_SIZE and (listed[0], listed[-1]) == ("p1", "p3"), "the two first and last"
    paged = probe(Ehr(page_size=2), "Encounter", ["p1", "p4"], NOW, keep_lease)
    assert paged["allowed"] is True, "an answer over pages"


@pytest.mark.parametrize(("lists", "detail"), [
    ("first-only", "answered without 1 of the records asked for (a list cut short): one patient a search"),
    ("capped", "answered without 1 of the records asked for (a list cut short): one patient a search"),
    ("ignored", "answered with records of patients it did not name: one patient a search")])
def test_a_list_answered_otherwise_means_one_patient_a_search(lists: str, detail: str) -> None:
    ehr = Ehr(lists, page_size=2)
    verdict = probe(ehr, "Encounter", POPULATION, NOW, keep_lease)
    assert (verdict["allowed"], verdict["detail"]) == (False, detail)
    assert not any(p in str(verdict) for p in VISITS), "IT's words name no patient"
    if lists == "ignored":
        assert ehr.followed == 0, "an answer that ignored the list is read no further than its first stranger"


def test_patients_sharing_records_are_no_pair_to_compare() -> None:
    """p1 and p5 share a visit (a merged pair, a group booking): a list answered with p1's alone would pass."""
    ehr = Ehr("first-only")
    verdict = probe(ehr, "Encounter", ["p1", "p5", "p3"], NOW, keep_lease)
    assert verdict["allowed"] is False and ehr.asked[:3] == [["p1"], ["p5"], ["p3"]]
    assert (ehr.asked[3][0], ehr.asked[3][-1]) == ("p1", "p3")


@pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 414, 422])
def test_a_refused_list_means_one_patient_a_search(status: int) -> None:
    verdict = probe(Ehr(failure=PermanentEhrError("one patient", status)), "Encounter", POPULATION, NOW, keep_lease)
    assert (verdict["allowed"], verdict["detail"]) == (False, f"refused (HTTP {status}): one patient a search")
    bare = probe(Ehr(failure=PermanentEhrError("not a Bundle")), "Encounter", POPULATION, NOW, keep_lease)
    assert (bare["allowed"], bare["detail"]) == (False, "refused: one patient a search")


def test_a_list_that_fails_is_asked_again_a_day_later_and_one_patient_a_search_till_then() -> None:
    verdict = probe(Ehr(failure=TransientEhrError("busy")), "Encounter", POPULATION, NOW, keep_lease)
    assert verdict["allowed"] is None and verdict["detail"].startswith("not answered")
    assert needs_asking(verdict, NOW + timedelta(days=2), len(POPULATION))


def test_a_failing_candidate_never_fails_the_stream() -> None:
    """Refused: passed over. Failing transiently (one bad record, or the EHR down): the probe ends with no answer
    and the next one starts after it. Every one refused: IT is told so, not that nobody has records."""
    class Refusing(Ehr):
        def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page:
            if dict(params)["patient"] == "Patient/p1":
                raise PermanentEhrError("not this patient", 403)
            return super().search(resource_type, params)

    ehr = Refusing()
    verdict = probe(ehr, "Encounter", POPULATION, NOW, keep_lease)
    assert verdict["allowed"] is True and (ehr.asked[-1][0], ehr.asked[-1][-1]) == ("p3", "p4"), \
        "the next two patients with records are compared"

    class Failing(Ehr):
        def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page:
            if dict(params)["patient"] == "Patient/p2":
                raise TransientEhrError("timed out")
            return super().search(resource_type, params)

    failing = probe(Failing(), "Encounter", POPULATION, NOW, keep_lease)
    assert (failing["allowed"], failing["tried"], failing["detail"]) == (
        None, 2, "not asked yet: a patient's search failed (others asked in a day): one patient a search")

    class Closed(Ehr):
        def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page:
            raise PermanentEhrError("no Encounter scope", 403)

    closed = probe(Closed(), "Encounter", POPULATION, NOW, keep_lease)
    assert (closed["allowed"], closed["detail"]) == (
        None, "not asked yet: every patient's search was refused (others asked in a day): one patient a search")


def test_a_next_link_that_loops_ends_the_answer() -> None:
    ehr = Ehr("looping", page_size=2)
    verdict = probe(ehr, "Encounter", ["p1", "p3"], NOW, keep_lease)
    assert (verdict["allowed"], ehr.followed) == (False, 1), "a page with nothing new ends it"


def test_an_answer_is_read_no_further_than_it_takes_once_both_patients_records_are_in_it() -> None:
    many = {"p3": ["e3"], "p6": ["e6"], **{f"q{i:02}": [f"v{i}"] for i in range(60)}}
    ehr = Ehr("any", page_size=1, visits=many, by_id=True)  # e3 and e6 on the first two pages
    verdict = probe(ehr, "Encounter", ["p3", "p6", *(f"q{i:02}" for i in range(60))], NOW, keep_lease)
    assert verdict["allowed"] is True
    assert ehr.followed == ANSWER_PAGES - 1, "20 pages, not the 50 of the whole answer"
    KEPT.clear()
    probe(Ehr(), "Encounter", POPULATION, NOW, keep_lease)
    assert len(KEPT) == 4, "the stream's lease is kept before each of the probe's four requests"


def test_a_population_smaller_than_a_list_is_asked_with_all_of_it_and_again_once_it_grows() -> None:
    small = probe(Ehr("capped"), "Encounter", ["p1", "p2", "p3"], NOW, keep_lease)
    assert (small["allowed"], small["size"], small["detail"]) == (True, 3, "answered in full: 3 patients a search")
    assert not needs_asking(small, NOW, 3) and not needs_asking(small, NOW + timedelta(days=2), 5)
    assert not needs_asking(small, NOW, 60), "a grown population is asked again at most daily"
    assert needs_asking(small, NOW + timedelta(days=2), 6), "twice the list's size: asked again"
    thirty = {"asked_at": NOW.isoformat(), "allowed": True, "size": 30}
    assert needs_asking(thirty, NOW + timedelta(days=2), 1000), "a longer list could be sent: asked again"
    assert not needs_asking(thirty, NOW + timedelta(days=2), 59)
    full = {**thirty, "size": LIST_SIZE}
    assert not needs_asking(full, NOW + timedelta(days=2), 1000), "no longer list is sent: the week stands"
    grown = probe(Ehr("capped"), "Encounter", POPULATION, NOW, keep_lease)
    assert (grown["allowed"], grown["size"]) == (False, LIST_SIZE), "the cap shows in a list of fifty"


def test_nobody_to_compare_is_no_answer_asked_again_a_day_later_of_the_next_patients() -> None:
    crowded = Ehr(page_size=1)  # p1's and p4's records do not fit a page: no exact comparison
    population = ["p1", "p2", "p4"] + [f"q{i:02}" for i in range(20)]
    verdict = probe(crowded, "Encounter", population, NOW, keep_lease)
    assert verdict["allowed"] is None and verdict["detail"] == (
        "not asked yet: no two of 12 patients have records that differ and fit a page (others asked in a day): one "
        "patient a search")
    assert [p for [p] in crowded.asked] == population[:PROBE_CANDIDATES], "a bounded number of patients is tried"
    assert verdict["tried"] == PROBE_CANDIDATES
    later = Ehr(page_size=1)
    probe(later, "Encounter", population, NOW, keep_lease, tried=verdict["tried"])
    assert [p for [p] in later.asked] == (population[PROBE_CANDIDATES:] + population)[:PROBE_CANDIDATES], \
        "the next patients, round the population"
    assert needs_asking(None, NOW, 2)
    assert not needs_asking(verdict, NOW + timedelta(hours=23), 23)
    assert needs_asking(verdict, NOW + timedelta(hours=25), 23)
    assert needs_asking({**verdict, "asked_at": "not a time"}, NOW, 23)
    assert needs_asking({**verdict, "asked_at": None}, NOW, 23)


def test_a_yes_or_a_no_stands_a_week() -> None:
    for allowed in (True, False):
        answer = {"asked_at": NOW.isoformat(), "allowed": allowed, "size": 23}
        assert not needs_asking(answer, NOW + timedelta(days=6), 23)
        assert needs_asking(answer, NOW + timedelta(days=8), 23), "an EHR changes: asked again"


def test_an_answer_longer_than_the_page_limit_is_no_answer() -> None:
    long = {"p1": ["e1"], "p9": ["e9"], **{f"q{i:02}": [f"v{i:02}-{j}" for j in range(5)] for i in range(48)}}
    ehr = Ehr("any", page_size=1, visits=long)  # p1 first, p9 last: 242 pages, p9's record on the last
    verdict = probe(ehr, "Encounter", ["p1", "p9", *(f"q{i:02}" for i in range(48))], NOW, keep_lease)
    assert (verdict["allowed"], verdict["detail"]) == (
        None, f"answered with more than {ANSWER_PAGE_LIMIT} pages (asked again in a day): one patient a search")
    assert ehr.followed == ANSWER_PAGE_LIMIT - 1


def test_a_pass_names_a_batch_of_patients_a_search_the_known_since_the_cursor_the_new_whole() -> None:
    since = [("_lastUpdated", "ge2026-11-20T11:00:00.000Z")]
    steps = _steps("Encounter", ["p1", "p2", "p3"], {"p1", "p3"}, since, size=2)
    assert steps == [
        ("p2", [([("patient", "Patient/p1"), ("_sort", "_lastUpdated"), *since], []),
                ([("patient", "Patient/p2"), ("_sort", "_lastUpdated")], ["p2"])]),
        ("p3", [([("patient", "Patient/p3"), ("_sort", "_lastUpdated"), *since], [])]),
    ]
    [(last, [(params, whole)])] = _steps("Task", ["p1", "p2"], {"p1", "p2"}, since, size=LIST_SIZE)
    assert (last, whole) == ("p2", [])
    assert params == [("patient", "Patient/p1,Patient/p2"), ("_sort", "_lastUpdated"),
                      ("identifier", f"{IDENTIFIER_SYSTEM}|"), *since]
    one_each = _steps("Encounter", ["p1", "p2"], set(), [], size=1)
    assert [last for last, _ in one_each] == ["p1", "p2"], "where the EHR takes no list: a patient a step"


def test_a_refused_list_is_asked_again_one_patient_a_search() -> None:
    params = [("patient", "Patient/p1,Patient/p2"), *type_params("Task")]
    assert one_by_one("Task", params) == [[("patient", "Patient/p1"), *type_params("Task")],
                                          [("patient", "Patient/p2"), *type_params("Task")]]
    assert one_by_one("Task", [("patient", "Patient/p1"), *type_params("Task")]) == [], "one patient: as it is"
    assert one_by_one("Patient", [("_id", "p1,p2")]) == [], "Patient's own batches are not lists of patients"


def test_once_a_list_failed_the_rest_of_the_pass_is_planned_again_one_patient_a_step() -> None:
    patients = ["p1", "p2", "p3", "p4", "p5"]
    since = [("_lastUpdated", "ge2026-11-20T11:00:00.000Z")]
    steps = _steps("Encounter", patients, set(patients), since, size=2)
    run = StreamRun("Encounter")
    assert _one_by_one_after(steps, 0, run, "Encounter", patients, set(patients), since) is steps, "no failure"
    run.lists_failed = True
    again = _one_by_one_after(steps, 0, run, "Encounter", patients, set(patients), since)
    assert [last for last, _ in again] == ["p2", "p3", "p4", "p5"] and again[0] == steps[0]
    assert again[1] == ("p3", [([("patient", "Patient/p3"), *type_params("Encounter"), *since], [])])
    assert _one_by_one_after(again, 1, run, "Encounter", patients, set(patients), since) is again, "planned once"
    six, read = [*patients, "p6"], {"p1", "p4"}
    mixed = _steps("Encounter", six, read, since, size=3)  # p4 since the cursor alone, then p5 and p6 whole
    assert [len(searches) for _, searches in mixed] == [2, 2]
    assert [last for last, _ in _one_by_one_after(mixed, 0, run, "Encounter", six, read, since)] == [
        "p3", "p4", "p5", "p6"], "a list in any search of the step, not only its first"
