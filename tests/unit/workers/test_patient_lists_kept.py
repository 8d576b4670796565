"""The EHR's answer is kept on the stream and reused: asked again a day after no answer, a week after a yes or
a no, once the population is twice the list, never with fewer than two patients; a check of the connection
clears it. A list that fails mid-pass, on any page (a pass's search, an id listing), is made again one patient a
search, with no list again that run; a one-patient search's failure is the stream's own and changes no answer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from connector.fhir_reader import Page
from prm import connections, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.errors import PermanentEhrError, TransientEhrError
from tests.unit.workers.test_patient_lists import Ehr
from workers import sync_deletions, sync_patients
from workers.dispatch import InProcessDispatcher
from workers.patient_lists import LIST_SIZE, naming, patients_per_search, type_params
from workers.runtime import WorkerContext
from workers.sync_run import StreamRun

POPULATION = ["p1", "p2", "p3", "p4"]


def keep_lease() -> None:  # stands for the stream lease's keep
    pass


def encounter_stream(database: Database, settings: Settings) -> tuple[WorkerContext, int]:
    with database.session() as session:
        spec = connections.ConnectionSpec(name="riverside", iss="https://ehr.example/fhir", client_id="fhir-prm")
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys), spec)
        [stream] = [s for s in streams.ensure(session, row.id or 0) if s.resource_type == "Encounter"]
    ctx = WorkerContext(settings=settings, db=database, box=SecretBox(settings.encryption_keys),
                        dispatcher=InProcessDispatcher(1))
    return ctx, stream.id or 0


def days_later(ctx: WorkerContext, days: int) -> WorkerContext:
    return WorkerContext(settings=replace(ctx.settings, now=(ctx.settings.clock() + timedelta(days=days)).isoformat()),
                         db=ctx.db, box=ctx.box, dispatcher=ctx.dispatcher)


def kept(ctx: WorkerContext, stream_id: int) -> dict[str, Any] | None:
    with ctx.db.session() as session:
        return streams.get(session, stream_id).patient_lists


def test_the_answer_is_kept_on_the_stream_and_asked_once(database: Database, settings: Settings) -> None:
    ctx, stream_id = encounter_stream(database, settings)
    ehr = Ehr()
    assert patients_per_search(ctx, ehr, stream_id, "Encounter", ["p1"], keep_lease) == 1 and ehr.asked == [], \
        "one patient: nothing to ask"
    assert patients_per_search(ctx, ehr, stream_id, "Encounter", POPULATION, keep_lease) == len(POPULATION), \
        "a list as long as the population was answered in full"
    asked = len(ehr.asked)
    assert patients_per_search(ctx, ehr, stream_id, "Encounter", POPULATION, keep_lease) == len(POPULATION)
    assert len(ehr.asked) == asked, "the kept answer, not a second probe"
    verdict = kept(ctx, stream_id)
    assert verdict is not None and verdict["allowed"] is True
    with database.session() as session:
        streams.forget_patient_lists(session, streams.get(session, stream_id).connection_id)
    assert kept(ctx, stream_id) is None, "a check of the connection clears it: the stream asks again"


def test_nobody_to_compare_is_asked_again_a_day_later(database: Database, settings: Settings) -> None:
    ctx, stream_id = encounter_stream(database, settings)
    lonely = Ehr(visits={"p1": ["e1"]})
    assert patients_per_search(ctx, lonely, stream_id, "Encounter", POPULATION, keep_lease) == 1
    asked = len(lonely.asked)
    assert patients_per_search(ctx, lonely, stream_id, "Encounter", POPULATION, keep_lease) == 1
    assert len(lonely.asked) == asked, "not asked again within the day"
    again = patients_per_search(days_later(ctx, 2), Ehr(), stream_id, "Encounter", POPULATION, keep_lease)
    assert again == len(POPULATION), "asked again"


def test_a_population_grown_past_the_list_asked_is_asked_again(database: Database, settings: Settings) -> None:
    """A list of three answered in full says nothing of fifty: an EHR that reads ten values shows it then."""
    ctx, stream_id = encounter_stream(database, settings)
    assert patients_per_search(ctx, Ehr("capped"), stream_id, "Encounter", ["p1", "p2", "p3"], keep_lease) == 3
    grown = ["p1", "p2", "p3", "p4", "p5"] + [f"q{i:02}" for i in range(60)]
    assert patients_per_search(ctx, Ehr("capped"), stream_id, "Encounter", grown, keep_lease) == 3, \
        "asked again a day later at the most"
    assert patients_per_search(days_later(ctx, 2), Ehr("capped"), stream_id, "Encounter", grown, keep_lease) == 1
    verdict = kept(ctx, stream_id)
    assert verdict is not None and (verdict["allowed"], verdict["size"]) == (False, LIST_SIZE)


def test_asking_again_replaces_a_yes_even_with_no_answer(database: Database, settings: Settings) -> None:
    """A yes is one proven within the week: a week on, an EHR that gives no answer gets one patient a search."""
    ctx, stream_id = encounter_stream(database, settings)
    assert patients_per_search(ctx, Ehr(), stream_id, "Encounter", POPULATION, keep_lease) == len(POPULATION)
    busy = Ehr(failure=TransientEhrError("busy"))
    assert patients_per_search(days_later(ctx, 8), busy, stream_id, "Encounter", POPULATION, keep_lease) == 1
    verdict = kept(ctx, stream_id)
    assert verdict is not None and verdict["allowed"] is None


def test_a_run_reading_fewer_than_two_patients_asks_nothing(database: Database, settings: Settings) -> None:
    ctx, stream_id = encounter_stream(database, settings)
    ehr = Ehr()
    with database.session() as session:
        stream = streams.get(session, stream_id)
    access = SimpleNamespace(reader=ehr)
    lease = SimpleNamespace(keep=lambda: None)
    def per_search(reading: list[str]) -> int:
        return sync_patients._per_search(ctx, access, stream, set(POPULATION), reading, lease)  # type: ignore[arg-type]

    assert per_search([]) == 1 and per_search(["p1"]) == 1
    assert ehr.asked == [] and kept(ctx, stream_id) is None
    assert per_search(["p1", "p2"]) == len(POPULATION)


class Listing:
    """An id listing, page by page as the reader's: a list of patients fails on its first page (`fails`), or,
    with `later`, on its second, after its first page's ids."""

    def __init__(self, fails: Exception, later: bool = False) -> None:
        self.fails, self.later = fails, later
        self.asked: list[str] = []

    def ids(self, resource_type: str, params: list[tuple[str, str]]) -> Iterator[str]:
        named = dict(params)["patient"]
        self.asked.append(named)
        patients = [ref.removeprefix("Patient/") for ref in named.split(",")]
        if len(patients) > 1 and not self.later:
            raise self.fails
        yield f"enc-{patients[0]}"
        if len(patients) > 1:
            raise self.fails
        yield from (f"enc-{p}" for p in patients[1:])


def listed_by(database: Database, settings: Settings, listing: Listing) -> tuple[set[str], dict[str, Any] | None]:
    ctx, stream_id = encounter_stream(database, settings)
    with database.session() as session:
        streams.keep_patient_lists(session, stream_id, {"allowed": True, "size": LIST_SIZE, "detail": "in full",
                                                        "asked_at": settings.clock().isoformat()})
        stream = streams.get(session, stream_id)
    access = SimpleNamespace(reader=listing)
    lease = SimpleNamespace(keep=lambda: None)
    found = sync_deletions._ids_of_patients(ctx, access, stream, PATIENTS, [], lease)  # type: ignore[arg-type]
    return found, kept(ctx, stream_id)


PATIENTS = [f"p{i:03}" for i in range(120)]


FAILED = "failed mid-pass (asked again in a day): one patient a search"


@pytest.mark.parametrize(("failure", "later"), [
    (PermanentEhrError("one patient a search", 400), False), (PermanentEhrError("method not allowed", 405), False),
    (PermanentEhrError("not a Bundle"), False), (TransientEhrError("timed out"), False),
    (PermanentEhrError("too many results", 400), True)])
def test_an_id_listing_whose_list_fails_goes_on_one_patient_a_listing(database: Database, settings: Settings,
                                                                      failure: Exception, later: bool) -> None:
    """On any page: a list's answer fifty times a patient's is likelier to meet a cap or a timeout."""
    listing = Listing(failure, later=later)
    found, verdict = listed_by(database, settings, listing)
    assert found == {f"enc-{p}" for p in PATIENTS}
    assert listing.asked == [",".join(f"Patient/{p}" for p in PATIENTS[:LIST_SIZE]),
                             *(f"Patient/{p}" for p in PATIENTS)], "one failure, then one patient a listing"
    assert verdict is not None and (verdict["allowed"], verdict["detail"]) == (None, FAILED)


def test_a_failing_one_patient_listing_is_the_streams_error_and_changes_no_answer(database: Database,
                                                                                  settings: Settings) -> None:
    class LostScope(Listing):
        def ids(self, resource_type: str, params: list[tuple[str, str]]) -> Iterator[str]:
            self.asked.append(dict(params)["patient"])
            raise PermanentEhrError("no Encounter scope", 403)
            yield ""

    with pytest.raises(PermanentEhrError):
        listed_by(database, settings, LostScope(PermanentEhrError("unused")))
    with database.session() as session:
        [stream] = [s for s in streams.of_connection(session, connections.by_name(session, "riverside").id or 0)
                    if s.resource_type == "Encounter"]
    assert stream.patient_lists is not None and stream.patient_lists["allowed"] is True, "the yes stands"


class Searching:
    """A pass's searches: a list fails on its first page (or, with `later`, on its second); each patient alone
    is answered with no records, at the EHR's time."""

    def __init__(self, later: bool = False) -> None:
        self.later = later
        self.asked: list[list[tuple[str, str]]] = []

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page:
        self.asked.append(params)
        if "," in dict(params)["patient"]:
            if not self.later:
                raise TransientEhrError("timed out")
            return Page([], "next-page", None, server_time="2026-11-20T11:00:00Z")
        return Page([], None, None, server_time="2026-11-20T11:00:00Z")

    def follow(self, next_url: str) -> Page:
        raise PermanentEhrError("too many results", 400)


@pytest.mark.parametrize("later", [False, True])
def test_a_pass_whose_list_fails_reads_its_patients_one_by_one_and_sends_no_list_again_that_run(
        database: Database, settings: Settings, later: bool) -> None:
    ctx, stream_id = encounter_stream(database, settings)
    ehr = Searching(later)
    access = SimpleNamespace(reader=ehr, client_name="sync")
    lease = SimpleNamespace(keep=lambda: None)
    run = StreamRun("Encounter")
    since = ("_lastUpdated", "ge2026-11-20T10:00:00.000Z")

    def search(*patients: str) -> str | None:
        params = [naming("Encounter", list(patients)), *type_params("Encounter"), since]
        return sync_patients._store_search(ctx, access, stream_id, "Encounter", params, run, None, lease)  # type: ignore[arg-type]

    assert search("p1", "p2") == "2026-11-20T11:00:00Z"
    assert [dict(p)["patient"] for p in ehr.asked] == ["Patient/p1,Patient/p2", "Patient/p1", "Patient/p2"]
    assert all(since in p for p in ehr.asked), "each patient asked as the list was: since the cursor"
    search("p3", "p4")
    assert [dict(p)["patient"] for p in ehr.asked[3:]] == ["Patient/p3", "Patient/p4"], "no list again this run"
    assert run.lists_failed and run.notes == [
        "a search naming several patients failed: one patient a search this run, the list asked again in a day"]
    verdict = kept(ctx, stream_id)
    assert verdict is not None and (verdict["allowed"], verdict["detail"]) == (None, FAILED)
