"""The EHR's answer is kept on the stream and asked once: reused after, asked again only where there was
nobody to compare a day before, never asked with fewer than two patients; a check of the connection clears it.
A list refused after all (an id listing here) is made again one patient a search, and remembered."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from prm import connections, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.errors import PermanentEhrError
from tests.unit.workers.test_patient_lists import Ehr
from workers import sync_deletions
from workers.dispatch import InProcessDispatcher
from workers.patient_lists import LIST_SIZE, patients_per_search
from workers.runtime import WorkerContext

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
    later = WorkerContext(settings=replace(settings, now=(settings.clock() + timedelta(days=2)).isoformat()),
                          db=database, box=ctx.box, dispatcher=ctx.dispatcher)
    assert patients_per_search(later, Ehr(), stream_id, "Encounter", POPULATION, keep_lease) == len(POPULATION), \
        "asked again"


def test_a_population_grown_past_the_list_asked_is_asked_again(database: Database, settings: Settings) -> None:
    """A list of three answered in full says nothing of fifty: an EHR that reads ten values shows it then."""
    ctx, stream_id = encounter_stream(database, settings)
    assert patients_per_search(ctx, Ehr("capped"), stream_id, "Encounter", ["p1", "p2", "p3"], keep_lease) == 3
    grown = ["p1", "p2", "p3", "p4", "p5"] + [f"q{i:02}" for i in range(60)]
    assert patients_per_search(ctx, Ehr("capped"), stream_id, "Encounter", grown, keep_lease) == 1
    verdict = kept(ctx, stream_id)
    assert verdict is not None and (verdict["allowed"], verdict["size"]) == (False, LIST_SIZE)


class Listing:
    """An id listing that refuses a list of patients (as an EHR upgraded since it answered one would)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def ids(self, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
        named = dict(params)["patient"]
        self.asked.append(named)
        if "," in named:
            raise PermanentEhrError("one patient a search", 400)
        return [f"enc-{named.removeprefix('Patient/')}"]


def test_an_id_listing_refused_for_a_list_goes_on_one_patient_a_listing(database: Database,
                                                                        settings: Settings) -> None:
    ctx, stream_id = encounter_stream(database, settings)
    with database.session() as session:
        streams.keep_patient_lists(session, stream_id, {"allowed": True, "size": LIST_SIZE, "detail": "in full"})
        stream = streams.get(session, stream_id)
    listing = Listing()
    patients = [f"p{i:03}" for i in range(120)]
    access = SimpleNamespace(reader=listing)
    lease = SimpleNamespace(keep=lambda: None)
    found = sync_deletions._ids_of_patients(ctx, access, stream, patients, [], lease)  # type: ignore[arg-type]
    assert found == {f"enc-{p}" for p in patients}
    assert listing.asked == [",".join(f"Patient/{p}" for p in patients[:LIST_SIZE]),
                             *(f"Patient/{p}" for p in patients)], "one refusal, then one patient a listing"
    verdict = kept(ctx, stream_id)
    assert verdict is not None and (verdict["allowed"], verdict["detail"]) == (
        False, "refused mid-pass (400): one patient a search")
