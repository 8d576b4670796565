"""How many patients one search may name. FHIR lets a search ask for several patients' records at once
(`patient=Patient/A,Patient/B` is an OR), and one search for fifty patients is fifty times fewer requests: on an
EHR that allows patient-scoped searches only, a pass asks for every patient's changes every run, and a Group's
new members are read whole one by one.

Not every EHR takes a list. Large hospital EHRs take one patient a search and refuse more, a server may cap how
many values it reads, and one may answer the first patient alone and say nothing, which would lose the others'
records without an error. So each stream asks the EHR once, with its own type and parameters, before it names
more than one patient: two patients of the population whose records differ are asked for one by one, then in a
list of LIST_SIZE with one first and the other last. The list is used only if its answer holds both patients'
records and no record of a patient it did not name. A list refused mid-pass after all (the EHR changed) means
one patient a search from then on, that batch included.

The answer is kept on the stream (`SyncStream.patient_lists`), where IT sees it, until a check of the
connection clears it (an upgraded EHR is asked again); an EHR with nobody to compare yet is asked again a day
later.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from connector.fhir_reader import Page
from fhir_mappings.common import ref_id
from fhir_mappings.written import IDENTIFIER_SYSTEM, WRITTEN_TYPES
from prm import streams
from prm.errors import PermanentEhrError
from workers.runtime import WorkerContext

# The search parameter naming a type's patient, where an EHR allows patient-scoped searches only.
PATIENT_PARAM = {"Encounter": "patient", "Appointment": "patient", "RelatedPerson": "patient",
                 "Task": "patient", "Communication": "patient"}
LIST_SIZE = 50  # patients a search names where the EHR answers lists (a URL stays well under common 8 KB limits)
PROBE_CANDIDATES = 12  # patients asked one by one at most, looking for two whose records differ and fit a page
PROBE_COUNT = 100
ANSWER_PAGES = 20  # the list's answer is read no further: an EHR that ignored the list would page through all
ASK_AGAIN = timedelta(days=1)  # after a probe that found nobody to compare
REFUSALS = (400, 403, 404, 413, 414, 422)  # a list, or a URL that long, refused


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
                        population: list[str]) -> int:
    """LIST_SIZE where the EHR has shown it answers a list of patients of the stream's type in full, else 1;
    asked first, once, where the population has two patients to compare."""
    now = ctx.settings.clock()
    with ctx.db.session() as session:
        verdict = streams.get(session, stream_id).patient_lists
    if needs_asking(verdict, now):
        if len(population) < 2:
            return 1
        verdict = probe(reader, resource_type, population, now)
        with ctx.db.session() as session:
            streams.keep_patient_lists(session, stream_id, verdict)
    return LIST_SIZE if verdict is not None and verdict.get("allowed") is True else 1


def refused_mid_pass(ctx: WorkerContext, stream_id: int, resource_type: str, error: PermanentEhrError) -> bool:
    """A search naming several patients was refused after the EHR had answered one: keep one patient a search
    from now on and say so (True); an error that is no refusal is not this (False: the caller raises it)."""
    if error.status not in REFUSALS:
        return False
    with ctx.db.session() as session:
        streams.keep_patient_lists(session, stream_id, {
            "asked_at": ctx.settings.clock().isoformat(), "probe": f"a pass's {resource_type} search",
            "allowed": False, "detail": f"refused mid-pass ({error.status}): one patient a search"})
    return True


def needs_asking(verdict: dict[str, Any] | None, now: datetime) -> bool:
    """Never asked, or asked more than ASK_AGAIN ago without an answer (nobody to compare then)."""
    if verdict is None:
        return True
    if verdict.get("allowed") is not None:
        return False
    try:
        return datetime.fromisoformat(str(verdict.get("asked_at"))) < now - ASK_AGAIN
    except ValueError:
        return True


def probe(reader: Searcher, resource_type: str, population: list[str], now: datetime) -> dict[str, Any]:
    """Ask the EHR (see the module docstring): `allowed` True, False (the list refused, or answered without a
    named patient's records or with an unnamed one's), or None (nobody to compare, or an answer too long to
    read). A refusal of a one-patient search is the stream's own error, raised. Its words name no patient."""
    verdict: dict[str, Any] = {"asked_at": now.isoformat(),
                               "probe": f"{resource_type}?{PATIENT_PARAM[resource_type]}=<{LIST_SIZE} patients>"}
    pair = _two_patients(reader, resource_type, population)
    if pair is None:
        return {**verdict, "allowed": None,
                "detail": f"not asked yet: no two of the first {PROBE_CANDIDATES} patients have records that "
                          "differ and fit a page (asked again in a day): one patient a search"}
    (first, first_ids), (second, second_ids) = pair
    listed = [first, *[p for p in population if p not in (first, second)][:LIST_SIZE - 2], second]
    try:
        answer = _answer(reader, resource_type, listed)
    except PermanentEhrError as exc:
        if exc.status not in REFUSALS:
            raise
        return {**verdict, "allowed": False, "detail": f"refused ({exc.status}): one patient a search"}
    if answer is None:
        return {**verdict, "allowed": None, "detail": f"answered with more than {ANSWER_PAGES} pages (asked again "
                                                      "in a day): one patient a search"}
    found, strangers = answer
    if strangers:
        return {**verdict, "allowed": False,
                "detail": "answered with records of patients it did not name: one patient a search"}
    missing = len((first_ids | second_ids) - found)
    if missing:
        return {**verdict, "allowed": False, "detail": f"answered without {missing} of the records asked for (a "
                                                       "list cut short): one patient a search"}
    return {**verdict, "allowed": True, "detail": f"answered in full: {LIST_SIZE} patients a search"}


def _two_patients(reader: Searcher, resource_type: str,
                  population: list[str]) -> tuple[tuple[str, set[str]], tuple[str, set[str]]] | None:
    """Two patients whose records (asked for one by one) exist, fit a page each, and share none (a list answered
    with one patient's alone must show)."""
    found: tuple[str, set[str]] | None = None
    for patient in population[:PROBE_CANDIDATES]:
        page = reader.search(resource_type, [naming(resource_type, [patient]), *type_params(resource_type),
                                             ("_count", str(PROBE_COUNT))])
        ids = {str(r.get("id")) for r in page.resources}
        if page.next_url or not ids:
            continue
        if found is None:
            found = (patient, ids)
        elif not ids & found[1]:
            return found, (patient, ids)
    return None


def _answer(reader: Searcher, resource_type: str, listed: list[str]) -> tuple[set[str], bool] | None:
    """The list's answer: the ids found, and whether a record names none of the listed patients (reading stops
    there); None where it runs past ANSWER_PAGES. A page that adds nothing new ends it (a link that loops)."""
    names = _patients_named(resource_type)
    asked = set(listed)
    page = reader.search(resource_type, [naming(resource_type, listed), *type_params(resource_type),
                                         ("_count", str(PROBE_COUNT))])
    found: set[str] = set()
    for pages_read in range(1, ANSWER_PAGES + 1):
        new = {str(r.get("id")) for r in page.resources} - found
        found |= new
        if any(not names(r) & asked for r in page.resources):
            return found, True
        if not page.next_url or not new:
            return found, False
        if pages_read < ANSWER_PAGES:
            page = reader.follow(page.next_url)
    return None


def _patients_named(resource_type: str) -> Callable[[dict[str, Any]], set[str]]:
    """The patients a record of the type names where its `patient` search parameter looks."""
    if resource_type == "Appointment":
        return lambda r: {p for part in r.get("participant") or [] if isinstance(part, dict)
                          if (p := ref_id(part.get("actor"), "Patient"))}
    field = {"RelatedPerson": "patient", "Task": "for"}.get(resource_type, "subject")
    return lambda r: {p} if isinstance(r.get(field), dict) and (p := ref_id(r[field], "Patient")) else set()
