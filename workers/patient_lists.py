"""How many patients one search may name. FHIR lets a search ask for several patients' records at once
(`patient=Patient/A,Patient/B` is an OR), and one search for fifty patients is fifty times fewer requests: on an
EHR that allows patient-scoped searches only, a pass asks for every patient's changes every run, and a Group's
new members are read whole one by one.

Not every EHR takes a list. Large hospital EHRs take one patient a search and refuse more, a server may cap how
many values it reads, and one may answer the first patient alone and say nothing, which would lose the others'
records without an error. So each stream asks the EHR before it names more than one patient, with its own type,
`_sort` and identifier: two patients of the population whose records differ are asked for one by one, then in a
list as long as the lists it would send (LIST_SIZE, or the whole population where that is smaller) with one
first and the other last. The list is used only if its answer holds both patients' records and no record of a
patient it did not name. Any other answer means one patient a search, as before. A list that fails mid-pass
(the EHR changed, or cannot answer so much) is made again one patient a search, and so is every later one that
run; the stream then has no answer, and asks again a day later.

The answer is kept on the stream (`SyncStream.patient_lists`), where IT sees it. It is asked again: a week
later (an EHR changes; one that began answering part of a list would otherwise lose records until IT checked
the connection); a day later where there was no answer (nobody to compare, or the list failed: the next patients
of the population are tried); a day or more later once the population has doubled and a longer list could be
sent; and when a check of the connection clears it. Asking again replaces the answer, a yes included: a yes is
only ever one proven within the week.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from connector.fhir_reader import Page
from fhir_mappings.common import patients_named
from fhir_mappings.written import IDENTIFIER_SYSTEM, WRITTEN_TYPES
from prm import streams
from prm.errors import PermanentEhrError, TransientEhrError
from workers.runtime import WorkerContext

# The search parameter naming a type's patient, where an EHR allows patient-scoped searches only.
PATIENT_PARAM = {"Encounter": "patient", "Appointment": "patient", "RelatedPerson": "patient",
                 "Task": "patient", "Communication": "patient"}
LIST_SIZE = 50  # patients a search names where the EHR answers lists (a URL stays well under common 8 KB limits)
PROBE_CANDIDATES = 12  # patients asked one by one at most, looking for two whose records differ and fit a page
# The list's answer is read no further once both patients' records are in it with nobody else's (an EHR that
# ignored the list would page through every record it holds; its first pages show a stranger), and never past
# ANSWER_PAGE_LIMIT (no answer then: asked again in a day).
ANSWER_PAGES = 20
ANSWER_PAGE_LIMIT = 200
ASK_AGAIN = timedelta(days=1)  # after a probe without an answer, or for a population that doubled
ANSWER_STANDS = timedelta(days=7)  # a yes or a no


class Searcher(Protocol):
    """What the probe needs of connector.fhir_reader.FhirReader."""

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page: ...

    def follow(self, next_url: str) -> Page: ...


def naming(resource_type: str, patients: list[str]) -> tuple[str, str]:
    """The search parameter asking for these patients' records of the type."""
    return PATIENT_PARAM[resource_type], ",".join(f"Patient/{p}" for p in patients)


def one_by_one(resource_type: str, params: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """A search naming several patients as one search a patient (none where it names one, or is no such search)."""
    key = PATIENT_PARAM.get(resource_type)
    at = next((i for i, (name, value) in enumerate(params) if name == key and "," in value), None)
    if at is None:
        return []
    return [[*params[:at], (params[at][0], patient), *params[at + 1:]] for patient in params[at][1].split(",")]


def type_params(resource_type: str) -> list[tuple[str, str]]:
    """What a pass's searches of the type add to the patients: oldest change first, and for the types fhir-prm
    writes, its own only."""
    ours = [("identifier", f"{IDENTIFIER_SYSTEM}|")] if resource_type in WRITTEN_TYPES else []
    return [("_sort", "_lastUpdated"), *ours]


def patients_per_search(ctx: WorkerContext, reader: Searcher, stream_id: int, resource_type: str,
                        population: list[str], keep: Callable[[], None]) -> int:
    """How many patients the stream's searches name: as many as the EHR has shown it answers in full (up to
    LIST_SIZE), else 1. Asked first where the population (every patient the stream reads, not a pass's rest)
    has two patients to compare, and again as the module docstring says; `keep` renews the stream's lease
    between the probe's requests."""
    now = ctx.settings.clock()
    with ctx.db.session() as session:
        verdict = streams.get(session, stream_id).patient_lists
    if len(population) >= 2 and needs_asking(verdict, now, len(population)):
        verdict = probe(reader, resource_type, population, now, keep, tried=_tried(verdict))
        with ctx.db.session() as session:
            streams.keep_patient_lists(session, stream_id, verdict)
    if verdict is None or verdict.get("allowed") is not True:
        return 1
    return max(1, min(LIST_SIZE, int(verdict.get("size") or 1)))


def list_failed(ctx: WorkerContext, stream_id: int, resource_type: str) -> None:
    """A search naming several patients failed mid-pass after the EHR had answered one, and the same patients
    were then read one by one: one patient a search until the answer is asked again, a day later."""
    with ctx.db.session() as session:
        streams.keep_patient_lists(session, stream_id, {
            "asked_at": ctx.settings.clock().isoformat(), "probe": f"a pass's {resource_type} search",
            "allowed": None, "detail": "failed mid-pass (asked again in a day): one patient a search"})


def needs_asking(verdict: dict[str, Any] | None, now: datetime, population: int) -> bool:
    """See the module docstring: never asked; a yes or a no older than ANSWER_STANDS; no answer older than
    ASK_AGAIN; a yes older than ASK_AGAIN for a shorter list than could be sent now, the population doubled."""
    if verdict is None:
        return True
    try:
        age = now - datetime.fromisoformat(str(verdict.get("asked_at")))
    except (TypeError, ValueError):
        return True
    allowed = verdict.get("allowed")
    if allowed is None:
        return age > ASK_AGAIN
    size = int(verdict.get("size") or 1)
    if allowed is True and min(LIST_SIZE, population) > size and population >= 2 * size and age > ASK_AGAIN:
        return True
    return age > ANSWER_STANDS


def _tried(verdict: dict[str, Any] | None) -> int:
    """Where the last probe's candidates began, moved on where it found nobody to compare: the next probe tries
    the next ones."""
    return int(verdict.get("tried") or 0) if verdict is not None else 0


def probe(reader: Searcher, resource_type: str, population: list[str], now: datetime,
          keep: Callable[[], None], tried: int = 0) -> dict[str, Any]:
    """Ask the EHR (see the module docstring): `allowed` True (with the list's `size`), False (the list refused,
    or answered without a named patient's records or with an unnamed one's), or None (nobody to compare among
    the PROBE_CANDIDATES patients from the `tried`-th on, or the list's search failed or ran too long: asked
    again in a day, from the next patients). A failing candidate never fails the stream (`_two_patients`).
    Its words name no patient.

    Not proven: a patient in the list whose records are all also another listed patient's (a group booking)
    would hide a list cut short just before them; the two compared share none, first and last in the list."""
    size = min(LIST_SIZE, len(population))
    tried %= len(population)
    verdict: dict[str, Any] = {"asked_at": now.isoformat(), "size": size, "tried": tried,
                               "probe": f"{resource_type}?{PATIENT_PARAM[resource_type]}=<{size} patients>"}
    pair, asked, trouble = _two_patients(reader, resource_type, _candidates(population, tried), keep)
    if pair is None:
        why = trouble or f"no two of {asked} patients have records that differ and fit a page"
        return {**verdict, "allowed": None, "tried": (tried + asked) % len(population),
                "detail": f"not asked yet: {why} (others asked in a day): one patient a search"}
    (first, first_ids), (second, second_ids) = pair
    listed = [first, *[p for p in population if p not in (first, second)][:size - 2], second]
    try:
        answer = _answer(reader, resource_type, listed, first_ids | second_ids, keep)
    except PermanentEhrError as exc:
        return {**verdict, "allowed": False,
                "detail": f"refused{f' (HTTP {exc.status})' if exc.status else ''}: one patient a search"}
    except TransientEhrError:
        return {**verdict, "allowed": None, "detail": "not answered (the EHR was busy or did not answer; asked "
                                                      "again in a day): one patient a search"}
    if answer is None:
        return {**verdict, "allowed": None, "detail": f"answered with more than {ANSWER_PAGE_LIMIT} pages (asked "
                                                      "again in a day): one patient a search"}
    found, strangers = answer
    if strangers:
        return {**verdict, "allowed": False,
                "detail": "answered with records of patients it did not name: one patient a search"}
    missing = len((first_ids | second_ids) - found)
    if missing:
        return {**verdict, "allowed": False, "detail": f"answered without {missing} of the records asked for (a "
                                                       "list cut short): one patient a search"}
    return {**verdict, "allowed": True, "detail": f"answered in full: {size} patients a search"}


def _candidates(population: list[str], tried: int) -> list[str]:
    """PROBE_CANDIDATES patients from the `tried`-th on (within the population), round the population."""
    return (population[tried:] + population[:tried])[:PROBE_CANDIDATES]


def _two_patients(reader: Searcher, resource_type: str, candidates: list[str], keep: Callable[[], None]
                  ) -> tuple[tuple[tuple[str, set[str]], tuple[str, set[str]]] | None, int, str | None]:
    """Two patients whose records (asked for one by one, as a pass asks) exist, fit a page each, and share none
    (a list answered with one patient's alone must show); how many candidates were asked; and, where none
    could be compared for a reason other than their records, that reason. A candidate whose search is refused
    is passed over (the pass meets that error as its own); one whose search fails transiently ends the probe
    (one bad record, or the EHR down: the retries are spent either way, and the next probe starts after it)."""
    found: tuple[str, set[str]] | None = None
    refused = 0
    for asked, patient in enumerate(candidates, 1):
        keep()
        try:
            page = reader.search(resource_type, [naming(resource_type, [patient]), *type_params(resource_type)])
        except PermanentEhrError:
            refused += 1
            continue
        except TransientEhrError:
            return None, asked, "a patient's search failed"
        ids = {str(r.get("id")) for r in page.resources}
        if page.next_url or not ids:
            continue
        if found is None:
            found = (patient, ids)
        elif not ids & found[1]:
            return (found, (patient, ids)), asked, None
    return None, len(candidates), "every patient's search was refused" if refused == len(candidates) else None


def _answer(reader: Searcher, resource_type: str, listed: list[str], expected: set[str],
            keep: Callable[[], None]) -> tuple[set[str], bool] | None:
    """The list's answer as far as it is read: the ids found, and whether a record names none of the listed
    patients (reading stops there). Read to its end, or ANSWER_PAGES pages once the expected records are all in
    it; a page that adds nothing new ends it (a link that loops); None past ANSWER_PAGE_LIMIT pages."""
    asked = set(listed)
    keep()
    page = reader.search(resource_type, [naming(resource_type, listed), *type_params(resource_type)])
    found: set[str] = set()
    for pages_read in range(1, ANSWER_PAGE_LIMIT + 1):
        new = {str(r.get("id")) for r in page.resources} - found
        found |= new
        if any(asked.isdisjoint(patients_named(resource_type, r)) for r in page.resources):
            return found, True
        if not page.next_url or not new or (pages_read >= ANSWER_PAGES and expected <= found):
            return found, False
        if pages_read < ANSWER_PAGE_LIMIT:
            keep()
            page = reader.follow(page.next_url)
    return None
