"""How many patients one search may name. FHIR lets a search ask for several patients' records at once
(`patient=Patient/A,Patient/B` is an OR), and one search for fifty patients is fifty times fewer requests: on an
EHR that allows patient-scoped searches only, a pass asks for every patient's changes every run, and a Group's
new members are read whole one by one.

Not every EHR takes a list. Large hospital EHRs take one patient a search and refuse more (a 400), and a server
may answer the first patient alone and say nothing, which would lose the others' records without an error. So a
list is used only once the EHR has shown, on two patients of the population who have visits, that it answers the
list with exactly both patients' visits. The verdict is kept in the connection's capability profile, where IT
sees it, until `prm connection check` starts the profile afresh (an upgraded EHR is asked again); an EHR that
gave no answer yet (too few patients with visits) is asked again a day later.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from connector.fhir_reader import Page
from prm import connections
from prm.errors import PermanentEhrError
from workers.runtime import WorkerContext

LIST_SIZE = 50  # patients a search names where the EHR answers lists (a URL stays well under common 8 KB limits)
PROBE_TYPE, PROBE_PARAM = "Encounter", "patient"
PROBE_CANDIDATES = 12  # patients asked one by one at most, looking for two whose visits fit a page each
PROBE_COUNT = "100"
ASK_AGAIN = timedelta(days=1)  # after a probe that found nobody to compare
REFUSALS = (400, 403, 404, 422)


class Searcher(Protocol):
    """What the probe needs of connector.fhir_reader.FhirReader."""

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page: ...

    def follow(self, next_url: str) -> Page: ...


def patients_per_search(ctx: WorkerContext, reader: Searcher, connection_id: int, population: list[str]) -> int:
    """LIST_SIZE where the EHR has shown it answers a list of patients in full, else 1 (asking it first, once,
    where the population has two patients to compare)."""
    now = ctx.settings.clock()
    with ctx.db.session() as session:
        verdict = connections.patient_lists_verdict(session, connection_id)
    if needs_asking(verdict, now):
        if len(population) < 2:
            return 1
        verdict = probe(reader, population, now)
        with ctx.db.session() as session:
            connections.keep_patient_lists_verdict(session, connection_id, verdict)
    return LIST_SIZE if verdict is not None and verdict.get("allowed") else 1


def probe(reader: Searcher, population: list[str], now: datetime) -> dict[str, Any]:
    """Ask for two patients' visits one by one, then together: `allowed` is True when the list is answered with
    exactly both sets, False when it is refused or answered otherwise, None when no two patients of the first
    PROBE_CANDIDATES have visits that fit a page. Its words name no patient (IT reads them)."""
    verdict: dict[str, Any] = {"asked_at": now.isoformat(), "probe": f"{PROBE_TYPE}?{PROBE_PARAM}=<2 patients>"}
    try:
        return {**verdict, **_compare(reader, population)}
    except PermanentEhrError as exc:
        if exc.status not in REFUSALS:
            raise
        return {**verdict, "allowed": False, "detail": f"refused ({exc.status}): one patient a search"}


def _compare(reader: Searcher, population: list[str]) -> dict[str, Any]:
    pair: list[tuple[str, set[str]]] = []
    for patient in population[:PROBE_CANDIDATES]:
        visits = _one_page(reader, f"Patient/{patient}")
        if visits:
            pair.append((patient, visits))
        if len(pair) == 2:
            break
    if len(pair) < 2:
        return {"allowed": None, "detail": f"not asked yet: no two of the first {PROBE_CANDIDATES} patients have "
                                           "visits to compare (asked again in a day): one patient a search"}
    (first, first_visits), (second, second_visits) = pair
    expected = first_visits | second_visits
    together = _answer(reader, f"Patient/{first},Patient/{second}", expected)
    if together != expected:
        return {"allowed": False, "detail": f"answered with {len(together)}{'+' if together - expected else ''} "
                                            f"visits, not the {len(expected)} the two patients have: one patient a "
                                            "search"}
    return {"allowed": True, "detail": f"answered in full: {LIST_SIZE} patients a search"}


def _one_page(reader: Searcher, patients: str) -> set[str]:
    """The visits' ids where they fit one page, else none (a comparison needs them all)."""
    page = reader.search(PROBE_TYPE, [(PROBE_PARAM, patients), ("_count", PROBE_COUNT)])
    return set() if page.next_url else {str(r.get("id")) for r in page.resources}


def _answer(reader: Searcher, patients: str, expected: set[str]) -> set[str]:
    """The list's answer, read no further than it takes to differ from `expected` (a server that ignored the
    list would page through every visit it holds)."""
    page = reader.search(PROBE_TYPE, [(PROBE_PARAM, patients), ("_count", PROBE_COUNT)])
    found = {str(r.get("id")) for r in page.resources}
    while page.next_url and found <= expected:
        page = reader.follow(page.next_url)
        found |= {str(r.get("id")) for r in page.resources}
    return found


def needs_asking(verdict: dict[str, Any] | None, now: datetime) -> bool:
    """Never asked, or asked more than ASK_AGAIN ago without an answer (nobody to compare then)."""
    if verdict is None:
        return True
    asked = verdict.get("asked_at")
    return verdict.get("allowed") is None and (
        not isinstance(asked, str) or datetime.fromisoformat(asked) < now - ASK_AGAIN)
