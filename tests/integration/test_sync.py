"""The sync against a real FHIR server: the snapshot's (type, id, versionId) equals the server's, after a
first load by search or bulk export, after changes, and after deletions (with `_history` or without)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlmodel import col, select

from ehr_sandbox.config import SandboxConfig
from ehr_sandbox.stack import SandboxStack
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm import audit, snapshots, streams
from prm.errors import PermanentEhrError
from prm.models import AuditRecord, Job
from prm.snapshot_models import Booking, StreamPatient, SyncStream, WrittenResource
from tests.integration.sync_env import BACKEND_CLIENT, SyncEnv, group_of, small_dataset, sync_database, sync_env
from tests.support.processes import run_prm
from tests.support.settings import env_for
from workers import sync_engine, sync_history
from workers.connection_check import check_connection
from workers.page_prep import PreparedPage, Target, prepare_lines
from workers.patient_lists import LIST_SIZE
from workers.prep_helper import Helper, Lines
from workers.sync import SYNC_STREAM
from workers.sync_connection import sync_connection
from workers.sync_engine import run_stream
from workers.sync_run import OVERLAP, StreamRun
from workers.sync_strategy import GROUP_EXPORTED
from workers.sync_windows import REREAD, UNSORTED

SYNCED = ("Organization", "Location", "PractitionerRole", "Patient", "RelatedPerson", "Encounter", "Appointment")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncEnv]:
    with sync_env(tmp_path_factory.mktemp("sync")) as environment:
        yield environment


@pytest.fixture(scope="module")
def first_load(env: SyncEnv) -> dict[str, StreamRun]:
    """The module's first load by search, which the incremental tests build on: it runs once, for whichever of
    them comes first, so each also runs alone (`-k`)."""
    return env.run_all()


def assert_in_step(env: SyncEnv, types: tuple[str, ...] = SYNCED) -> None:
    for resource_type in types:
        assert env.snapshot(resource_type) == env.server(resource_type), resource_type


def test_first_sync_by_search_brings_every_resource(env: SyncEnv, first_load: dict[str, StreamRun]) -> None:
    runs = first_load
    assert all(run.caught_up for run in runs.values())
    assert_in_step(env)
    assert runs["Encounter"].stored == 2294 and runs["Patient"].stored == 300
    with env.ctx.db.session() as session:
        stream_rows = session.exec(select(SyncStream)).all()
        pages = session.exec(select(AuditRecord).where(AuditRecord.action == "sync.page")).all()
    assert all(s.phase == "incremental" and s.last_success_at for s in stream_rows)
    assert sum(p.count or 0 for p in pages) == sum(r.stored for r in runs.values())
    assert len(pages) < 30, "system access is audited per page, not per resource"
    assert {(p.actor_kind, p.actor, p.connection_id) for p in pages} == {("system", BACKEND_CLIENT, env.connection_id)}
    assert {p.entity for p in pages} == set(SYNCED), "each page names its stream"


@pytest.mark.usefixtures("first_load")
def test_incremental_sync_brings_only_what_changed(env: SyncEnv) -> None:
    changed = []
    for resource_id in ("enc-000001-001", "enc-000002-017", "enc-000005-005"):
        resource = copy.deepcopy(env.read("Encounter", resource_id))
        resource["status"] = "finished" if resource["status"] != "finished" else "cancelled"
        env.put(resource)
        changed.append(resource_id)
    patient = env.read("Patient", "pat-000063")
    patient["active"] = False
    env.put(patient)
    runs = env.run_all(("Patient", "Encounter"))
    assert runs["Encounter"].stored == 3 and runs["Patient"].stored == 1
    assert_in_step(env, ("Patient", "Encounter"))


@pytest.mark.usefixtures("first_load")
def test_a_type_nothing_happened_to_costs_one_history_request(env: SyncEnv) -> None:
    env.run_all(("Location", "Encounter"))  # marks set since the first load
    encounter = copy.deepcopy(env.read("Encounter", "enc-000003-002"))
    encounter["status"] = "finished" if encounter["status"] != "finished" else "cancelled"
    env.put(encounter)
    runs = env.run_all(("Location", "Encounter"))
    quiet, busy = runs["Location"], runs["Encounter"]
    assert quiet.caught_up and quiet.notes == ["unchanged (_history)"]
    assert quiet.pages == 0, "no window search for a type _history says nothing happened to"
    assert busy.stored == 1 and busy.notes == ["changes from _history"]
    assert busy.pages == 1, "a type whose changes fit one _history page is not searched again"
    assert_in_step(env, ("Location", "Encounter"))


@pytest.mark.usefixtures("first_load")
def test_deleted_resources_leave_the_snapshot(env: SyncEnv) -> None:
    env.delete("Appointment", "appt-000001-001")
    env.run_all(("Appointment",))  # the first incremental run sets the _history mark
    env.delete("Appointment", "appt-000002-001")
    runs = env.run_all(("Appointment",))
    assert runs["Appointment"].deleted >= 1
    assert_in_step(env, ("Appointment",))
    with env.ctx.db.session() as session:
        gone = session.exec(select(Booking).where(col(Booking.fhir_id).in_(["appt-000001-001", "appt-000002-001"])))
        kept = {(b.fhir_id, b.deleted, b.patient_id, b.start_at, tuple(b.practitioners)) for b in gone}
    assert kept == {(f, True, None, None, ()) for f in ("appt-000001-001", "appt-000002-001")}, \
        "a tombstone keeps its key and stamps, not who was booked or when"


def test_an_ehr_that_caps_count_below_our_page_size_is_read_to_the_end(env: SyncEnv, tmp_path: Path) -> None:
    """sekmet answers at most 1000 entries a page whatever `_count` asks (others cap at 100 or 200): each page
    is shorter than asked while its `next` link says more are waiting. Stopping at the first short page
    would call the first load done with 1000 of 2294 Encounters, and `_history` would never bring the rest."""
    with sync_database(env.stack, tmp_path, sync_page_size=1500) as capped:
        run = capped.run_all(("Encounter",))["Encounter"]
        assert run.caught_up and run.pages >= 3 and run.stored == len(capped.server("Encounter")) > 1500
        assert capped.snapshot("Encounter") == capped.server("Encounter")
        again = capped.run_all(("Encounter",))["Encounter"]
        assert again.caught_up and again.stored == 0


def test_an_ehr_that_ignores_sort_is_read_in_halved_windows(tmp_path: Path) -> None:
    """Searches answer newest first whatever `_sort` asks. Moving the cursor to a page's newest instant would
    skip every other page; windows halved until each fits a page read it all, on the first load (found by
    its first page out of order) and after the check has named it (then asked without `_sort`)."""
    config = SandboxConfig(profile="ignores-sort", port=0, fhir_internal_port=0)
    with SandboxStack(config, dataset=small_dataset(70)) as stack, \
            sync_database(stack, tmp_path, sync_page_size=40) as env:
        first = env.run_all(("Patient", "Encounter"))
        assert UNSORTED in first["Encounter"].notes and first["Encounter"].pages > 10
        assert_in_step(env, ("Patient", "Encounter"))

        profile = check_connection(env.ctx, env.connection_id)
        assert profile["sync"]["sort_last_updated"] is False
        assert any("halved until each fits a page" in warning for warning in profile["warnings"])
        changed = sorted(i for i, _ in env.server("Encounter"))[::2][:200]  # over four _history pages: windows
        for resource_id in changed:
            resource = env.read("Encounter", resource_id)
            resource["status"] = "cancelled" if resource["status"] != "cancelled" else "finished"
            env.put(resource)
        env.delete("Encounter", changed[0])
        again = env.run_all(("Patient", "Encounter"))["Encounter"]
        assert UNSORTED in again.notes and again.stored == len(changed) - 1 and again.deleted == 1
        assert_in_step(env, ("Patient", "Encounter"))
        assert env.run_all(("Encounter",))["Encounter"].stored == 0


@pytest.mark.parametrize("profile", ["second-precision", "unsorted-second-precision"])
def test_an_ehr_that_compares_last_updated_to_the_second_is_read_to_the_end(profile: str, tmp_path: Path) -> None:
    """The sandbox's load gave ~300 Encounters each second; at 40 a page, and with searches cut to the second,
    asking again from a page's newest instant brings that same page back. The pass must walk such a second by
    its links (sorted), or cut windows only on whole seconds (unsorted), and still end."""
    config = SandboxConfig(profile=profile, port=0, fhir_internal_port=0)
    with SandboxStack(config, dataset=small_dataset(70)) as stack, \
            sync_database(stack, tmp_path, sync_page_size=40) as env:
        types = ("Encounter", "Appointment")
        first = sync_connection(env.ctx, env.connection_id, types=types, time_budget_s=60)
        assert all(run.caught_up for run in first.values()), first
        assert_in_step(env, types)
        for resource_id in sorted(i for i, _ in env.server("Encounter"))[:3]:
            resource = env.read("Encounter", resource_id)
            resource["status"] = "cancelled" if resource["status"] != "cancelled" else "finished"
            env.put(resource)
        again = sync_connection(env.ctx, env.connection_id, types=types, time_budget_s=60)
        assert all(run.caught_up for run in again.values()) and again["Encounter"].stored >= 3
        assert_in_step(env, types)


def test_an_ehr_without_last_updated_searches_is_read_whole_each_pass_once_checked(tmp_path: Path) -> None:
    """Its searches ignore `_lastUpdated` (and `_sort`), and its CapabilityStatement says it has no such search.
    Unchecked, every window answers everything: halving could never make one fit a page, so the run stops at
    the first window holding resources far outside it and says why on the stream. Checked, every pass reads
    every resource (changes and deletions both found), since no window can; so does IT's `reread`."""
    config = SandboxConfig(profile="ignores-last-updated", port=0, fhir_internal_port=0)
    with SandboxStack(config, dataset=small_dataset(70)) as stack, \
            sync_database(stack, tmp_path, sync_page_size=40) as env:
        with pytest.raises(PermanentEhrError, match="does not filter by _lastUpdated"):
            env.run_all(("Encounter",))
        with env.ctx.db.session() as session:
            encounters = session.exec(select(SyncStream).where(SyncStream.resource_type == "Encounter")).one()
        assert encounters.last_error and "prm sync strategy ... reread" in encounters.last_error
        assert encounters.cursor is None and encounters.phase == "initial"

        profile = check_connection(env.ctx, env.connection_id)
        assert profile["sync"]["strategy"]["incremental"] == "full-reread"
        first = env.run_all(("Encounter",))["Encounter"]
        assert first.caught_up and REREAD in first.notes
        assert env.snapshot("Encounter") == env.server("Encounter")
        on_server = sorted(i for i, _ in env.server("Encounter"))
        for resource_id in on_server[1:4]:
            resource = env.read("Encounter", resource_id)
            resource["status"] = "cancelled" if resource["status"] != "cancelled" else "finished"
            env.put(resource)
        env.delete("Encounter", on_server[0])
        with env.ctx.db.session() as session:  # as on an EHR that keeps no _history either
            for stream in session.exec(select(SyncStream)).all():
                stream.history_mark = None
                session.add(stream)
        again = env.run_all(("Encounter",))["Encounter"]
        assert again.caught_up and REREAD in again.notes and again.deleted == 1
        assert env.snapshot("Encounter") == env.server("Encounter")

        # IT's way out where no check can tell (another database registers the backend client anew: last)
        with sync_database(stack, tmp_path / "it-chose", sync_page_size=40) as chosen:
            with chosen.ctx.db.session() as session:
                streams.set_strategy(session, chosen.ctx.settings.clock, audit.command_line_actor(
                    chosen.connection_id), chosen.connection_id, "reread", ["Appointment"])
            run = chosen.run_all(("Appointment",))["Appointment"]
            assert run.caught_up and REREAD in run.notes
            assert chosen.snapshot("Appointment") == chosen.server("Appointment")


@pytest.mark.parametrize(("feed_pages", "from_history"), [(4, True), (1, False)])
def test_a_history_over_several_pages_is_read_newest_first(
        env: SyncEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feed_pages: int, from_history: bool) -> None:
    """A Location deleted, four changed, then the first made again under its id: six entries, two pages of
    three. Its newest entry (page one) decides: alive. Within HISTORY_FEED_PAGES the history brings the
    changes itself; beyond it, windows bring them (memory stays bounded)."""
    monkeypatch.setattr(sync_history, "HISTORY_FEED_PAGES", feed_pages)
    with sync_database(env.stack, tmp_path, sync_page_size=3) as small:
        small.run_all(("Location",))
        small.run_all(("Location",))  # the mark moves past the sandbox's load
        first, *others = sorted(i for i, _ in small.server("Location"))[:5]
        original = env.read("Location", first)
        env.delete("Location", first)
        for location_id in others:
            changed = env.read("Location", location_id)
            changed["name"] = f"{changed['name']} (renamed {feed_pages})"
            env.put(changed)
        env.put({k: v for k, v in original.items() if k != "meta"})
        run = small.run_all(("Location",))["Location"]
        assert run.caught_up and run.deleted == 0 and run.stored == 5
        assert ("changes from _history" in run.notes) is from_history
        assert first in {i for i, _ in small.snapshot("Location")}
        assert small.snapshot("Location") == small.server("Location")


def test_tasks_are_checked_by_history_each_run_and_the_ehrs_own_tasks_move_the_mark_on(
        env: SyncEnv, tmp_path: Path) -> None:
    """Task is synced only where fhir-prm wrote it. With none of ours yet there is no cursor: the mark must
    not be lost with it (every run would then search instead). The EHR's own Tasks are no news and no reason
    to search, and the next history starts from the newest of them less the overlap, not from fhir-prm's
    last write (an EHR changes its own Tasks all day). One of ours is stored as soon as it appears."""
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": f"Patient/{sorted(i for i, _ in env.server('Patient'))[0]}"}}
    with sync_database(env.stack, tmp_path) as fresh:

        def run_task() -> StreamRun:
            return fresh.run_all(("Task",))["Task"]

        def mark() -> datetime | None:
            with fresh.ctx.db.session() as session:
                return next(s.history_mark for s in streams.of_connection(session, fresh.connection_id)
                            if s.resource_type == "Task")

        assert run_task().caught_up  # the first load: a search by our identifier system
        for _ in range(2):
            quiet = run_task()
            assert quiet.notes == ["unchanged (_history)"] and quiet.pages == 0
            assert mark() is not None
        before = mark()
        env.put({**task, "id": "ehr-own-recall-task", "identifier": [{"system": "urn:ehr:tasks", "value": "r1"}]})
        theirs = run_task()
        assert theirs.notes == ["unchanged (_history)"] and theirs.pages == 0 and theirs.stored == 0
        stamp = datetime.fromisoformat(env.read("Task", "ehr-own-recall-task")["meta"]["lastUpdated"])
        assert before is not None and mark() == max(before, stamp - OVERLAP)
        assert fresh.snapshot("Task") == set()

        env.put({**task, "id": "prm-care-ticket-history",
                 "identifier": [{"system": IDENTIFIER_SYSTEM, "value": "care-ticket/history"}]})
        ours = run_task()
        assert ours.caught_up and ours.stored == 1
        assert fresh.snapshot("Task") == {("prm-care-ticket-history",
                                           env.read("Task", "prm-care-ticket-history")["meta"]["versionId"])}


def test_communications_fhir_prm_wrote_are_synced_with_their_status_and_the_ehrs_own_are_not(
        env: SyncEnv, tmp_path: Path) -> None:
    """A reminder fhir-prm wrote comes back with the EHR's status (the write-back keeps its item in step by
    it); the EHR's own letters are not the PRM's to hold. A status changed at the EHR, then a deletion, follow."""
    subject = {"reference": f"Patient/{sorted(i for i, _ in env.server('Patient'))[0]}"}
    ours = {"resourceType": "Communication", "id": "prm-reminder-synced", "status": "in-progress", "subject": subject,
            "identifier": [{"system": IDENTIFIER_SYSTEM, "value": "reminder/synced"}],
            "payload": [{"contentString": "Your appointment is tomorrow at 09:30."}]}
    theirs = {"resourceType": "Communication", "id": "ehr-discharge-letter", "status": "completed",
              "subject": subject, "identifier": [{"system": "urn:ehr:letters", "value": "l1"}]}
    with sync_database(env.stack, tmp_path) as fresh:

        def run_communication() -> StreamRun:
            return fresh.run_all(("Communication",))["Communication"]

        def held() -> set[tuple[str, str | None, str | None]]:
            with fresh.ctx.db.session() as session:
                rows = session.exec(select(WrittenResource).where(
                    WrittenResource.resource_type == "Communication", col(WrittenResource.deleted).is_(False)))
                return {(r.fhir_id, r.version_id, r.status) for r in rows}

        env.put(ours)
        env.put(theirs)
        first = run_communication()
        assert first.caught_up and first.stored == 1
        assert held() == {("prm-reminder-synced", env.read("Communication", ours["id"])["meta"]["versionId"],
                           "in-progress")}
        env.put({**ours, "status": "completed"})
        assert run_communication().stored == 1
        assert held() == {("prm-reminder-synced", env.read("Communication", ours["id"])["meta"]["versionId"],
                           "completed")}
        env.delete("Communication", ours["id"])
        assert run_communication().deleted == 1
        assert held() == set() and fresh.snapshot("Communication") == set()


def test_first_load_by_bulk_export_when_the_check_says_so(tmp_path: Path) -> None:
    with sync_env(tmp_path) as fresh:
        profile = check_connection(fresh.ctx, fresh.connection_id)
        assert profile["sync"]["strategy"]["initial"] == "bulk-export-system"
        runs = fresh.run_all(("Patient", "Encounter"))
        assert "bulk export" in runs["Encounter"].notes
        assert runs["Patient"].companions == [runs["Encounter"]]  # one $export for both types
        assert_in_step(fresh, ("Patient", "Encounter"))
        # an export's pages hold EXPORT_PAGE_LINES (one write through the helper's pipe), a search's up to 1000
        assert fresh.ctx.settings.sync_page_size > sync_engine.EXPORT_PAGE_LINES
        with fresh.ctx.db.session() as session:
            sizes = [size or 0 for size in session.exec(select(AuditRecord.count).where(
                AuditRecord.action == "sync.page", AuditRecord.entity == "Encounter")).all()]
        assert max(sizes) == sync_engine.EXPORT_PAGE_LINES and sum(sizes) == 2294
        with fresh.ctx.db.session() as session:  # a type left out of the run keeps its own first load
            left = session.exec(select(SyncStream).where(SyncStream.resource_type == "Appointment")).one()
            assert (left.phase, left.cursor, left.resources_synced) == ("initial", None, 0)
        resource = fresh.read("Encounter", "enc-000001-002")
        resource["status"] = "cancelled"
        fresh.put(resource)
        again = fresh.run_all(("Encounter",))
        assert again["Encounter"].stored == 1 and "bulk export" not in again["Encounter"].notes
        assert_in_step(fresh, ("Encounter",))


def test_when_the_page_helper_is_behind_the_worker_prepares_pages_itself_and_the_export_lands_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper that never has a result ready: it keeps the pages queued at it, the worker prepares every other
    page itself (it would idle otherwise), and every resource arrives once, checked."""
    inline: list[str] = []

    class Behind(Helper):
        submitted = 0

        def submit(self, resource_type: str, lines: Lines) -> None:
            Behind.submitted += 1
            super().submit(resource_type, lines)

        def ready(self) -> bool:
            return False

    def prepared_here(resource_type: str, lines: Lines, target: Target | None) -> PreparedPage:
        inline.append(resource_type)
        assert target is not None  # the worker's own pages are encoded for its database too
        return prepare_lines(resource_type, lines, target)

    monkeypatch.setattr(sync_engine, "preparer", lambda _use_helper, types, target: Behind(types, target))
    monkeypatch.setattr(sync_engine, "prepare_lines", prepared_here)
    with SandboxStack(SandboxConfig(port=0, fhir_internal_port=0), dataset=small_dataset(70)) as stack, \
            sync_database(stack, tmp_path, sync_page_size=30) as fresh:  # pages > PAGES_AHEAD + 2
        check_connection(fresh.ctx, fresh.connection_id)
        runs = fresh.run_all(("Patient", "Encounter"))
        assert "bulk export" in runs["Encounter"].notes
        assert Behind.submitted == sync_engine.PAGES_AHEAD and len(inline) >= 2
        assert_in_step(fresh, ("Patient", "Encounter"))
        assert sum(run.stored for run in runs.values()) == len(fresh.server("Patient")) + len(fresh.server("Encounter"))


def test_a_foreground_sync_runs_the_connection_side_by_side_with_one_export(tmp_path: Path) -> None:
    with sync_env(tmp_path, patients=70) as fresh:
        check_connection(fresh.ctx, fresh.connection_id)
        finished: list[str] = []
        runs = sync_connection(fresh.ctx, fresh.connection_id, finished=lambda run: finished.append(run.resource_type))
        assert sorted(finished) == sorted(runs) == sorted(streams.SYNC_TYPES)
        exported = [t for t, run in runs.items() if "bulk export" in run.notes]
        assert sorted(exported) == sorted(SYNCED)  # one export: the others were its companions
        assert all(run.caught_up and not run.busy for run in runs.values())
        assert_in_step(fresh)
        resource = fresh.read("Appointment", "appt-000003-001")
        resource["status"] = "cancelled"
        fresh.put(resource)
        again = sync_connection(fresh.ctx, fresh.connection_id)
        assert {t: r.stored for t, r in again.items() if r.stored} == {"Appointment": 1}
        assert_in_step(fresh)


def test_without_history_deletions_are_found_by_reconciling_ids(tmp_path: Path) -> None:
    with sync_env(tmp_path, profile="no-history") as fresh:
        fresh.run_all(("Appointment",))
        fresh.delete("Appointment", "appt-000003-001")
        with fresh.ctx.db.session() as session:  # the ids are compared every few hours: make it due now
            stream = session.exec(select(SyncStream).where(SyncStream.resource_type == "Appointment")).one()
            stream.reconciled_at = None
            session.add(stream)
        runs = fresh.run_all(("Appointment",))
        assert runs["Appointment"].deleted == 1
        assert_in_step(fresh, ("Appointment",))


def test_an_ehr_that_only_allows_patient_searches_is_read_patient_by_patient(tmp_path: Path) -> None:
    with sync_env(tmp_path, profile="patient-scoped-only", patients=70) as fresh:
        profile = check_connection(fresh.ctx, fresh.connection_id)
        assert profile["sync"]["strategy"]["incremental"] == "patient-by-patient"
        first = fresh.run_all(("Patient", "Encounter"))
        assert "bulk export" in first["Encounter"].notes  # the first load needs no type-level search
        resource = fresh.read("Encounter", "enc-000007-001")
        resource["status"] = "cancelled"
        fresh.put(resource)
        fresh.delete("Encounter", "enc-000008-001")
        # A patient deleted, their visits not: no per-patient listing names those visits any more, yet the EHR
        # still has them (each is asked for by id), so they stay in the snapshot.
        kept = {(i, v) for i, v in fresh.server("Encounter") if i.startswith("enc-000009-")}
        fresh.delete("Patient", "pat-000009")
        with fresh.ctx.db.session() as session:  # no _history here: make the (6-hourly) id comparison due
            for stream in session.exec(select(SyncStream)).all():
                stream.reconciled_at = None
                session.add(stream)
        again = fresh.run_all(("Patient", "Encounter"))
        assert any(n.startswith("patient by patient") for n in again["Encounter"].notes)
        assert again["Patient"].deleted == 1 and again["Encounter"].deleted == 1
        assert kept and kept <= fresh.snapshot("Encounter")
        assert_in_step(fresh, ("Patient", "Encounter"))
        verdict = fresh.patient_lists("Encounter")
        assert verdict is not None and verdict["allowed"] is True, "this EHR answers a list of patients in full"
        assert again["Encounter"].pages == 2, "69 patients, fifty a search: two pages, not 69"

        def encounter_pages() -> list[int]:
            with fresh.ctx.db.session() as session:
                return [r.count or 0 for r in session.exec(select(AuditRecord).where(
                    AuditRecord.action == "sync.page", AuditRecord.entity == "Encounter"))]

        before = len(encounter_pages())
        with fresh.ctx.db.session() as session:
            [stream] = session.exec(select(SyncStream).where(SyncStream.resource_type == "Encounter")).all()
            stream.reconciled_at = None
            session.add(stream)
        fresh.run_all(("Encounter",))
        assert len(kept) == 12 and all(n < len(kept) for n in encounter_pages()[before:]), \
            "the kept visits, read by id again, are unchanged: not stored again (the pass's overlap may re-read one)"
        assert kept <= fresh.snapshot("Encounter")


@pytest.mark.parametrize(("profile", "per_search"), [("patient-lists-first-only", 1),
                                                    ("patient-scoped-only", LIST_SIZE)])
def test_a_patient_by_patient_pass_longer_than_a_run_goes_on_where_the_run_stopped(
        tmp_path: Path, profile: str, per_search: int) -> None:
    """A large population outlasts a job's time: each run goes on from the last patient (or batch of them) the
    run before it finished (one step a run here, with no time to spare), and the pass ends with the snapshot
    equal to the EHR's. Started afresh each run, as it was, the pass never ended and the last patients were never
    read. An EHR that answers a list of patients with the first one's records alone is asked one patient a
    search: fifty a search there, the changes of patients after a batch's first were never seen."""
    with sync_env(tmp_path, profile=profile, patients=70) as fresh:
        check_connection(fresh.ctx, fresh.connection_id)
        fresh.run_all(("Patient", "Encounter"))
        patients = sorted(i for i, _ in fresh.server("Patient"))
        encounters = sorted(i for i, _ in fresh.server("Encounter"))
        for number in ("000002", "000035", patients[-1].removeprefix("pat-")):  # early, midway, last
            resource = fresh.read("Encounter", next(i for i in encounters if i.startswith(f"enc-{number}-")))
            resource["status"] = "cancelled" if resource["status"] != "cancelled" else "finished"
            fresh.put(resource)
        with fresh.ctx.db.session() as session:
            [stream] = [s for s in streams.of_connection(session, fresh.connection_id)
                        if s.resource_type == "Encounter"]
        runs = [run_stream(fresh.ctx, stream.id or 0, time_budget_s=0)]
        status = run_prm("sync", "status", "--json", cwd=tmp_path,
                         env=env_for(fresh.ctx.settings.database_url, fresh.ctx.settings.instance_dir))
        [shown] = [row for row in json.loads(status.stdout) if row.get("type") == "Encounter" and "phase" in row]
        assert shown["pass"]["kind"] == "patient" and shown["pass"]["since"], "IT sees the pass under way"
        assert shown["caught_up"] < shown["last_success"], "the lag runs from the last run that read it all"
        while not runs[-1].caught_up and len(runs) < len(patients) + 2:
            runs.append(run_stream(fresh.ctx, stream.id or 0, time_budget_s=0))
        assert len(runs) == -(-len(patients) // per_search), "one step a run, each run on from the one before"
        assert runs[-1].caught_up and sum(run.stored for run in runs) == 3
        assert_in_step(fresh, ("Encounter",))
        with fresh.ctx.db.session() as session:
            ended = streams.get(session, stream.id or 0)
        assert (ended.pass_kind, ended.pass_position, ended.pass_started) == (None, None, None)
        verdict = fresh.patient_lists("Encounter")
        assert verdict is not None and verdict["allowed"] is (per_search > 1), verdict


def test_a_patient_pass_goes_on_by_whole_batches(tmp_path: Path) -> None:
    """Patients are asked for by `_id` in batches, and a batch holding patients new to the stream takes two
    searches (the known ones since the cursor, the new ones whole). A run that stopped between the two kept no
    place, so the next began again with the same batch and a pass never ended: the place is a batch's end."""
    with sync_env(tmp_path, profile="patient-scoped-only", patients=70) as fresh:
        check_connection(fresh.ctx, fresh.connection_id)
        fresh.run_all(("Patient",))
        with fresh.ctx.db.session() as session:
            [stream] = [s for s in streams.of_connection(session, fresh.connection_id) if s.resource_type == "Patient"]
            newcomers = sorted(streams.patients_read(session, stream.id or 0))[10:20]  # as if new to the population
            for row in session.exec(select(StreamPatient).where(col(StreamPatient.patient_id).in_(newcomers))):
                session.delete(row)
        runs = [run_stream(fresh.ctx, stream.id or 0, time_budget_s=0)]
        while not runs[-1].caught_up and len(runs) < 5:
            runs.append(run_stream(fresh.ctx, stream.id or 0, time_budget_s=0))
        assert len(runs) == 2, "two batches of 50, one a run"
        with fresh.ctx.db.session() as session:
            assert set(newcomers) <= streams.patients_read(session, stream.id or 0)
        assert_in_step(fresh, ("Patient",))


def assert_group_in_step(env: SyncEnv, members: list[str]) -> None:
    for resource_type in GROUP_EXPORTED:  # the members' records, and nobody else's
        assert env.snapshot(resource_type) == env.server(resource_type, members), resource_type
    assert_in_step(env, ("Organization", "Location", "PractitionerRole"))  # the directory, searched in full


def test_an_ehr_with_only_group_export_syncs_the_groups_patients_and_its_new_members_whole_records(
        tmp_path: Path) -> None:
    with sync_env(tmp_path, profile="group-export-only", patients=70) as fresh:
        patients = sorted(i for i, _ in fresh.server("Patient"))
        members, joining = patients[:30], patients[40]
        fresh.put(group_of("dental-patients", members))
        fresh.set_export_group("dental-patients")
        profile = check_connection(fresh.ctx, fresh.connection_id)
        assert profile["sync"]["strategy"] == {"initial": "bulk-export-group", "incremental": "patient-by-patient"}
        assert profile["sync"]["export_group"] == {"request": "GET Group/dental-patients", "status": 200,
                                                   "ok": True, "patients": 30}
        first = fresh.run_all(SYNCED)
        assert sorted(t for t, run in first.items() if "bulk export" in run.notes) == sorted(GROUP_EXPORTED)
        assert_group_in_step(fresh, members)

        encounter = next(i for i, _ in fresh.server("Encounter", [members[0]]))
        resource = fresh.read("Encounter", encounter)
        resource["status"] = "cancelled" if resource["status"] != "cancelled" else "finished"
        fresh.put(resource)
        fresh.put(group_of("dental-patients", [*members, joining]))  # records older than every cursor
        fresh.run_all(("Patient",))  # the Group's new member becomes known ...
        again = fresh.run_all(tuple(t for t in GROUP_EXPORTED if t != "Patient"))  # ... and is read in full
        assert again["Encounter"].stored == 1 + len(fresh.server("Encounter", [joining]))
        assert_group_in_step(fresh, [*members, joining])
        verdict = fresh.patient_lists("Encounter")
        assert verdict is not None and (verdict["allowed"], verdict["detail"]) == (
            False, "refused (HTTP 400): one patient a search"), "this EHR takes one patient a search"

        # One leaves the Group: their records leave the snapshot, and nothing of theirs comes back ...
        leaver = members[1]
        staying = [p for p in [*members, joining] if p != leaver]
        assert fresh.server("Encounter", [leaver]) and fresh.server("Appointment", [leaver])
        fresh.put(group_of("dental-patients", staying))
        patients_run = fresh.run_all(("Patient",))["Patient"]
        assert [n for n in patients_run.notes if "left Group" in n] == [
            "1 patient(s) who left Group/dental-patients removed (Patient 1, "
            f"Encounter {len(fresh.server('Encounter', [leaver]))}, Appointment "
            f"{len(fresh.server('Appointment', [leaver]))}; 0 quarantined)"]
        assert_group_in_step(fresh, staying)
        fresh.run_all(GROUP_EXPORTED)
        assert_group_in_step(fresh, staying)
        # ... until they join again: then their whole record is read again, as any newcomer's.
        fresh.put(group_of("dental-patients", [*staying, leaver]))
        fresh.run_all(("Patient",))
        fresh.run_all(tuple(t for t in GROUP_EXPORTED if t != "Patient"))
        assert_group_in_step(fresh, [*staying, leaver])


def sixty_members_said_to_answer_lists(fresh: SyncEnv) -> tuple[list[str], int]:
    """A Group of sixty on an EHR that takes one patient a search, loaded; its Encounter stream told the EHR
    answers lists of fifty, as if it had before an upgrade. The members, and the Encounter stream's id."""
    members = sorted(i for i, _ in fresh.server("Patient"))[:60]
    fresh.put(group_of("dental-patients", members))
    fresh.set_export_group("dental-patients")
    check_connection(fresh.ctx, fresh.connection_id)
    fresh.run_all(SYNCED)
    with fresh.ctx.db.session() as session:
        [stream] = [s for s in streams.of_connection(session, fresh.connection_id) if s.resource_type == "Encounter"]
        streams.keep_patient_lists(session, stream.id or 0, {"allowed": True, "size": 50, "detail": "in full",
                                                             "asked_at": fresh.ctx.settings.clock().isoformat()})
    return members, stream.id or 0


def change_a_visit(fresh: SyncEnv, patient: str) -> None:
    """One of the patient's visits cancelled, or finished if it was cancelled: a new version on the EHR."""
    visit = fresh.read("Encounter", next(i for i, _ in fresh.server("Encounter", [patient])))
    fresh.put({**visit, "status": "cancelled" if visit["status"] != "cancelled" else "finished"})


def test_a_list_refused_mid_pass_is_made_again_one_patient_a_search_and_not_sent_again(tmp_path: Path) -> None:
    """An EHR that answered lists of patients, upgraded to take one patient a search: the pass's refused list,
    and every list after it that run, is asked one patient a search (one note, nothing lost), and the next run
    sends no list (the list is asked again a day later)."""
    with sync_env(tmp_path, profile="group-export-only", patients=70) as fresh:
        members, stream_id = sixty_members_said_to_answer_lists(fresh)
        with fresh.ctx.db.session() as session:
            stream = streams.get(session, stream_id)
            stream.reconciled_at = None  # the id comparison due (no type-level `_history` here)
            session.add(stream)
        for member in (members[0], members[55]):  # one in each batch of fifty
            change_a_visit(fresh, member)
        fresh.delete("Encounter", next(i for i, _ in fresh.server("Encounter", [members[5]])))
        upgraded = fresh.run_all(("Encounter",))["Encounter"]
        assert [n for n in upgraded.notes if "naming several" in n] == [
            "a search naming several patients failed: one patient a search this run, the list asked again in a day"]
        assert (upgraded.stored, upgraded.deleted) == (2, 1)
        assert_group_in_step(fresh, members)
        verdict = fresh.patient_lists("Encounter")
        assert verdict is not None and (verdict["allowed"], verdict["detail"]) == (
            None, "failed mid-pass (asked again in a day): one patient a search")
        quiet = fresh.run_all(("Encounter",))["Encounter"]
        assert not [n for n in quiet.notes if "naming several" in n]
        assert quiet.pages == len(members), "one patient a search, no list sent to be refused"
        assert_group_in_step(fresh, members)


def test_a_pass_out_of_time_after_its_list_failed_goes_on_one_patient_a_run(tmp_path: Path) -> None:
    """A list fails in the first step, with no time to spare: that step's patients are read one by one, the
    place is kept at its end, and the next runs go on one patient a step (the stream has no answer now), until
    the snapshot equals the EHR's."""
    with sync_env(tmp_path, profile="group-export-only", patients=70) as fresh:
        members, stream_id = sixty_members_said_to_answer_lists(fresh)
        for member in (members[10], members[55]):
            change_a_visit(fresh, member)
        runs = [run_stream(fresh.ctx, stream_id, time_budget_s=0)]
        with fresh.ctx.db.session() as session:
            kept_at = streams.get(session, stream_id).pass_position
        assert not runs[0].caught_up and kept_at == members[49], "the failed list's patients, one by one, then out"
        assert runs[0].notes.count(
            "a search naming several patients failed: one patient a search this run, the list asked again in a day"
        ) == 1
        while not runs[-1].caught_up and len(runs) < 20:
            runs.append(run_stream(fresh.ctx, stream_id, time_budget_s=0))
        assert len(runs) == 1 + 10, "then one patient a run: the ten after the failed list's fifty"
        assert sum(run.stored for run in runs) >= 2
        assert_group_in_step(fresh, members)


def test_a_group_scoped_connection_never_takes_in_other_patients_as_they_change(tmp_path: Path) -> None:
    """On an EHR that allows type-level searches too, the Group stays the population after its export: the
    searches still find every changed record, but a non-member's changed visit is not stored (it was, and every
    other clinic's with it), a member's is, and a new member's older records, which no search by
    `_lastUpdated` finds, are read whole."""
    with sync_env(tmp_path, patients=70) as fresh:
        patients = sorted(i for i, _ in fresh.server("Patient"))
        members, outsider, joining = patients[:30], patients[50], patients[40]
        fresh.put(group_of("dental-patients", members))
        fresh.set_export_group("dental-patients")
        profile = check_connection(fresh.ctx, fresh.connection_id)
        assert profile["sync"]["strategy"] == {"initial": "bulk-export-group", "incremental": "search-last-updated"}
        fresh.run_all(SYNCED)
        assert_group_in_step(fresh, members)
        outsiders_patient = fresh.read("Patient", outsider)
        fresh.put({**outsiders_patient, "gender": "other" if outsiders_patient.get("gender") != "other" else "male"})

        for patient in (members[0], outsider):
            change_a_visit(fresh, patient)
        fresh.put(group_of("dental-patients", [*members, joining]))
        patients_run = fresh.run_all(("Patient",))["Patient"]
        assert patients_run.stored == 1 and "1 patient(s) new to the Group's population read whole" in \
            patients_run.notes, "the outsider's changed record is not stored; the newcomer's is"
        again = fresh.run_all(tuple(t for t in GROUP_EXPORTED if t != "Patient"))
        # (Not a count of rows stored: where the sandbox's cached data set was loaded within minutes, the
        # newcomer's visits are in `_history` too, and stored from it before they are read whole.)
        assert "1 patient(s) new to the Group's population read whole" in again["Encounter"].notes
        assert_group_in_step(fresh, [*members, joining])
        assert outsider not in {i for i, _ in fresh.snapshot("Patient")}
        assert not {i for i, _ in fresh.snapshot("Encounter")} & {i for i, _ in fresh.server("Encounter", [outsider])}
        quiet = fresh.run_all(GROUP_EXPORTED)
        assert sum(run.stored for run in quiet.values()) == 0, "newcomers are read whole once"

        # A Group exported before this rule noted no member as read: each is read whole once, a step a run as
        # the time budget allows, the next run at once. This EHR answers a list of patients: one search, one step.
        with fresh.ctx.db.session() as session:
            [stream] = [s for s in streams.of_connection(session, fresh.connection_id)
                        if s.resource_type == "Encounter"]

        def forget_three() -> None:
            with fresh.ctx.db.session() as session:
                for row in session.exec(select(StreamPatient).where(
                        StreamPatient.stream_id == stream.id, col(StreamPatient.patient_id).in_(members[:3]))):
                    session.delete(row)

        forget_three()
        runs = [run_stream(fresh.ctx, stream.id or 0, time_budget_s=0)]
        assert runs[0].caught_up, "three newcomers, one search: one step, no time needed for more"
        assert runs[0].stored == len(fresh.server("Encounter", members[:3]))
        verdict = fresh.patient_lists("Encounter")
        assert verdict is not None and verdict["allowed"] is True, "asked when two newcomers were first read"
        # Where the EHR takes one patient a search, a patient a step, a run when out of time.
        forget_three()
        with fresh.ctx.db.session() as session:
            streams.keep_patient_lists(session, stream.id or 0, {**verdict, "allowed": False})
        runs = [run_stream(fresh.ctx, stream.id or 0, time_budget_s=0)]
        while not runs[-1].caught_up and len(runs) < 5:
            runs.append(run_stream(fresh.ctx, stream.id or 0, time_budget_s=0))
        assert [run.caught_up for run in runs] == [False, False, True], "one patient a run when out of time"
        assert sum(run.stored for run in runs) == len(fresh.server("Encounter", members[:3]))
        assert_group_in_step(fresh, [*members, joining])

        # A member the Group marks inactive has left it; a Group listing nobody is taken for a mistake.
        leaver = members[2]
        group = group_of("dental-patients", [*members, joining])
        for member in group["member"]:  # type: ignore[attr-defined]
            member["inactive"] = member["entity"]["reference"] == f"Patient/{leaver}"
        fresh.put(group)
        left = fresh.run_all(GROUP_EXPORTED)
        assert any(n.startswith("1 patient(s) who left Group/dental-patients removed") for n in left["Patient"].notes)
        staying = [p for p in [*members, joining] if p != leaver]
        assert_group_in_step(fresh, staying)
        fresh.put(group_of("dental-patients", []))
        emptied = fresh.run_all(("Patient",))["Patient"]
        assert any(n.startswith("Group/dental-patients lists no members: nobody is removed") for n in emptied.notes)
        assert_group_in_step(fresh, staying)
        unreadable = group_of("dental-patients", staying[1:])  # one leaves, one joins known by an identifier only
        unreadable["member"].append({"entity": {"identifier": {"system": "urn:mrn", "value": "88"}}})  # type: ignore[attr-defined]
        fresh.put(unreadable)
        untold = fresh.run_all(("Patient",))["Patient"]
        assert any(n.startswith("Group/dental-patients names 1 member(s) by no Patient reference fhir-prm can read "
                                "(their records cannot be read either): nobody is removed") for n in untold.notes)
        assert staying[0] in {i for i, _ in fresh.snapshot("Patient")}


def test_a_group_member_merged_into_a_record_outside_the_group_is_followed(tmp_path: Path) -> None:
    """Where patients are known only through the export Group, a member the EHR merges into a new record
    (`link` replaced-by) would leave the picture: the survivor is no member, so nothing read it or its visits.
    The Patient stream follows the link; the survivor's record is read whole, then its visits."""
    with sync_env(tmp_path, profile="group-export-only", patients=70) as fresh:
        patients = sorted(i for i, _ in fresh.server("Patient"))
        members = [p for p in patients[:30] if p not in ("pat-000025", "pat-000026")]  # the data set's own merge
        fresh.put(group_of("dental-patients", members))
        fresh.set_export_group("dental-patients")
        check_connection(fresh.ctx, fresh.connection_id)
        fresh.run_all(SYNCED)
        old = fresh.read("Patient", members[0])
        survivor = {**old, "id": "pat-merged-001", "link": [{"other": {"reference": f"Patient/{old['id']}"},
                                                             "type": "replaces"}]}
        survivor.pop("meta", None)
        fresh.put(survivor)
        fresh.put({**old, "active": False, "link": [{"other": {"reference": "Patient/pat-merged-001"},
                                                      "type": "replaced-by"}]})
        visit = fresh.read("Encounter", next(i for i, _ in fresh.server("Encounter", [old["id"]])))
        visit = {**visit, "id": "enc-merged-001", "subject": {"reference": "Patient/pat-merged-001"}}
        visit.pop("meta", None)
        fresh.put(visit)  # a visit the EHR records on the surviving record

        fresh.run_all(("Patient",))
        with fresh.ctx.db.session() as session:
            assert snapshots.merge_survivors(session, fresh.connection_id) == {"pat-merged-001"}
        fresh.run_all(("Patient",))  # the survivor, new to the population, is read whole
        fresh.run_all(tuple(t for t in GROUP_EXPORTED if t != "Patient"))
        assert ("pat-merged-001", fresh.read("Patient", "pat-merged-001")["meta"]["versionId"]) in \
            fresh.snapshot("Patient")
        assert_group_in_step(fresh, [*members, "pat-merged-001"])


def test_an_erased_connection_holds_nothing_and_loads_afresh_when_enabled_again(env: SyncEnv, tmp_path: Path) -> None:
    """IT offboards a clinic with `prm sync erase`: nothing of the EHR's copy is left (a deletion's tombstone
    neither), only once the connection is disabled; enabled again, it loads from nothing to the server's set."""
    types = ("Patient", "Encounter")
    with sync_database(env.stack, tmp_path) as leaving:
        leaving.run_all(types)
        assert_in_step(leaving, types)
        env.delete("Encounter", "enc-000003-001")
        leaving.run_all(types)
        settings = env_for(leaving.ctx.settings.database_url, leaving.ctx.settings.instance_dir)

        def prm(*args: str) -> str:
            done = run_prm(*args, env=settings, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            return done.stdout

        held = len(leaving.snapshot("Encounter"))
        assert f"ehr holds Patient 300, Encounter {held}. Disable it first" in prm("sync", "erase", "--connection",
                                                                                     "ehr")
        refused = run_prm("sync", "erase", "--connection", "ehr", "--yes", env=settings, cwd=tmp_path)
        assert refused.returncode == 2 and "is enabled: disable it first" in refused.stderr
        assert len(leaving.snapshot("Encounter")) == held, "nothing erased"
        prm("connection", "disable", "ehr")
        assert f"ehr: erased Patient 300, Encounter {held + 1}; 0 quarantined" in prm(
            "sync", "erase", "--connection", "ehr", "--yes"), "the deleted Encounter's tombstone went too"
        with leaving.ctx.db.session() as session:
            assert {t: snapshots.held(session, leaving.connection_id, t) for t in streams.SYNC_TYPES} == \
                dict.fromkeys(streams.SYNC_TYPES, 0)
            assert all(s.phase == "initial" and s.cursor is None
                       for s in streams.of_connection(session, leaving.connection_id))
            [erasure] = session.exec(select(AuditRecord).where(AuditRecord.action == "sync.erase")).all()
        assert erasure.count == 300 + held + 1 and erasure.actor.startswith("cli:")

        prm("connection", "enable", "ehr")
        with leaving.ctx.db.session() as session:
            due = session.exec(select(Job).where(Job.kind == SYNC_STREAM, Job.status == "pending")).all()
            switched = session.exec(select(AuditRecord.action, AuditRecord.actor).where(
                col(AuditRecord.action).in_(("connection.disable", "connection.enable")))).all()
        assert len(due) == len(streams.SYNC_TYPES) and all(job.due_at <= leaving.ctx.settings.clock() for job in due), \
            "enabled again, every stream is due now: the first load starts at the workers' next sweep"
        assert [action for action, _ in switched] == ["connection.disable", "connection.enable"]
        assert all(actor.startswith("cli:") for _, actor in switched), "IT at the shell is audited as on the page"
        runs = leaving.run_all(types)
        assert runs["Encounter"].stored == held and all(run.caught_up for run in runs.values())
        assert_in_step(leaving, types)
