"""The sync through a fault-injecting proxy in front of the sandbox EHR: whatever the EHR does wrong, the
snapshot's (type, id, versionId) ends equal to the server's, and nothing spins.

Each test gets a fresh snapshot database; the EHR (and its data) is shared, so tests that change data
compare with the server as it is afterwards.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from sqlmodel import Session, select

from ehr_sandbox.config import SandboxConfig
from prm import audit, connections, snapshots, streams
from prm.errors import AuthExpiredError, PermanentEhrError
from prm.models import Lease
from prm.snapshot_erase import erase_snapshot
from prm.snapshot_models import QuarantinedResource, SyncStream
from prm.snapshot_rows import EncodedRows
from tests.integration.sync_env import SyncEnv, sync_database
from tests.support.fault_proxy import FaultyEhr
from workers import stream_leases
from workers.connection_check import check_connection
from workers.sync_engine import run_stream
from workers.sync_run import StreamRun
from workers.sync_windows import REREAD

TYPES = ("Patient", "Encounter")


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyEhr]:
    with FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0)) as ehr:
        yield ehr


@pytest.fixture
def env(faulty: FaultyEhr, tmp_path: Path) -> Iterator[SyncEnv]:
    faulty.proxy.clear()
    with sync_database(faulty.stack, tmp_path, http_timeout_s=2.0, sync_page_size=200) as environment:
        yield environment
    faulty.proxy.clear()


def in_step(env: SyncEnv) -> None:
    for resource_type in TYPES:
        assert env.snapshot(resource_type) == env.server(resource_type), resource_type


@pytest.mark.parametrize(("name", "fault"), [
    ("429 with Retry-After", {"status": 429, "retry_after": "1"}),
    ("503", {"status": 503}),
    ("500", {"status": 500, "times": 2}),
    ("timeout", {"delay_s": 3.0}),
    ("truncated JSON", {"truncate_body_at": 700}),
    ("dropped connection", {"drop_connection": True}),
])
def test_transient_faults_mid_sync_leave_no_gap(name: str, fault: dict[str, object], env: SyncEnv,
                                                faulty: FaultyEhr) -> None:
    injected = faulty.proxy.add_fault(r"^/fhir/Encounter\?.*_lastUpdated=ge", **fault)  # type: ignore[arg-type]
    runs = env.run_all(TYPES)
    assert all(r.caught_up for r in runs.values())
    assert injected.times == 0, f"the {name} fault fired"
    in_step(env)


def test_each_window_is_asked_for_once_though_the_next_is_asked_ahead(env: SyncEnv, faulty: FaultyEhr) -> None:
    """The next window is asked for while a page is stored, from the cursor that page will leave: used, not
    asked for again (a request per page), and the snapshot whole."""
    run = env.run_all(("Encounter",))["Encounter"]
    assert run.caught_up and run.pages > 5
    assert faulty.proxy.count("GET", r"^/fhir/Encounter$") == run.pages  # searches (the path, no query)
    assert env.snapshot("Encounter") == env.server("Encounter")


def test_an_export_cut_off_midway_is_waited_for_again_not_started_again(env: SyncEnv, faulty: FaultyEhr) -> None:
    """A run that fails (or a worker killed) while the EHR writes the export leaves its status URL on the streams:
    the next run polls that export rather than start another, which many EHRs would refuse while the first
    runs (one export per client), and which doubles the EHR's work where they do not."""
    check_connection(env.ctx, env.connection_id)  # it offers $export: the first load takes it
    refused = faulty.proxy.add_fault(r"^/fhir/bulk-status/", method="GET", status=400)
    with pytest.raises(PermanentEhrError):
        env.run_all(TYPES)
    assert refused.times == 0
    runs = env.run_all(TYPES)
    assert all(run.caught_up for run in runs.values())
    assert faulty.proxy.count("GET", r"^/fhir/\$export$") == 1, "one kick-off"
    in_step(env)
    with env.ctx.db.session() as session:
        assert all(s.pass_kind is None for s in streams.of_connection(session, env.connection_id))


def test_an_export_stored_again_after_a_cut_upserts_what_the_cut_run_stored(env: SyncEnv, faulty: FaultyEhr,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A first load's pages go into the snapshot as new rows (PostgreSQL: COPY straight into the table). The
    run after one cut off while storing reads the kept export again: its first Encounter page meets the rows
    stored before the cut, is refused as new and upserted, and so is every later Encounter page (no more
    tries); Patient, never stored, goes in as new rows."""
    check_connection(env.ctx, env.connection_id)
    faulty.proxy.add_fault(r"^/fhir/bulk-files/.*/Patient\.ndjson$", method="GET", status=400)
    with pytest.raises(PermanentEhrError):
        env.run_all(TYPES)
    cut = env.snapshot("Encounter")
    assert cut and cut <= env.server("Encounter"), "Encounter pages (first in the export) were stored before the cut"
    tried: dict[str, list[bool]] = {"Encounter": [], "Patient": []}
    store_new = snapshots.store_new

    def spied(session: Session, resource_type: str, encoded: EncodedRows) -> bool:
        taken = store_new(session, resource_type, encoded)
        tried[resource_type].append(taken)
        return taken

    monkeypatch.setattr(snapshots, "store_new", spied)
    runs = env.run_all(TYPES)
    assert all(run.caught_up for run in runs.values())
    assert faulty.proxy.count("GET", r"^/fhir/\$export$") == 1, "the kept export, read again"
    assert tried["Encounter"] == [False], "refused once, then upserted without trying"
    assert runs["Encounter"].stored == len(env.server("Encounter"))
    assert tried["Patient"] and all(tried["Patient"])
    in_step(env)


def test_an_export_under_way_outlives_an_erasure_and_is_gone_on_with(env: SyncEnv, faulty: FaultyEhr) -> None:
    """IT erases the copy while the EHR still holds the export a cut-off first load was storing: the erasure
    takes the rows stored so far and keeps the export's place (a status URL), so enabled again the streams read
    that export again rather than kick off a second one, which many EHRs refuse while one runs."""
    check_connection(env.ctx, env.connection_id)
    faulty.proxy.add_fault(r"^/fhir/bulk-files/.*/Patient\.ndjson$", method="GET", status=400)
    with pytest.raises(PermanentEhrError):
        env.run_all(TYPES)
    assert env.snapshot("Encounter"), "Encounter pages were stored before the cut"
    it, clock = audit.Actor(kind="admin", name="it", role="it_admin"), env.ctx.settings.clock
    with env.ctx.db.session() as session:
        connections.set_enabled(session, clock, it, "ehr", False)
    with env.ctx.db.session() as session:
        erased = erase_snapshot(session, clock, it, env.connection_id)
    assert erased.rows["Encounter"] > 0 and not env.snapshot("Encounter")
    with env.ctx.db.session() as session:
        assert {s.pass_kind for s in streams.of_connection(session, env.connection_id)
                if s.resource_type in TYPES} == {streams.EXPORT_UNDER_WAY}
        connections.set_enabled(session, clock, it, "ehr", True)
    runs = env.run_all(TYPES)
    assert all(run.caught_up and "bulk export" in run.notes for run in runs.values())
    assert faulty.proxy.count("GET", r"^/fhir/\$export$") == 1, "the kept export, read again"
    in_step(env)


def test_a_member_who_joined_after_a_kept_group_export_began_is_read_whole(tmp_path: Path) -> None:
    """A Group's export cut off, then gone on with in a later run: a patient who joined the Group meanwhile is
    not in it, so is not counted as read from it (the Group read now lists them), and is read whole."""
    with FaultyEhr(SandboxConfig(profile="group-export-only", port=0, fhir_internal_port=0)) as ehr, \
            sync_database(ehr.stack, tmp_path) as grouped:
        patients = sorted(i for i, _ in grouped.server("Patient"))
        members, joining = patients[:20], patients[40]

        def group(listed: list[str]) -> dict[str, object]:
            return {"resourceType": "Group", "id": "dental", "type": "person", "actual": True,
                    "member": [{"entity": {"reference": f"Patient/{p}"}} for p in listed]}

        grouped.put(group(members))
        grouped.set_export_group("dental")
        check_connection(grouped.ctx, grouped.connection_id)
        types = ("Patient", "Encounter")
        ehr.proxy.add_fault(r"^/fhir/bulk-status/", method="GET", status=400)
        with pytest.raises(PermanentEhrError):
            grouped.run_all(types)
        grouped.put(group([*members, joining]))
        grouped.run_all(types)
        grouped.run_all(types)  # the joiner's Patient record first, then their visits
        assert ehr.proxy.count("GET", r"^/fhir/Group/dental/\$export$") == 1, "the kept export, gone on with"
        for resource_type in types:
            assert grouped.snapshot(resource_type) == grouped.server(resource_type, [*members, joining])


def test_a_kept_export_the_ehr_has_forgotten_is_replaced_once(env: SyncEnv, faulty: FaultyEhr) -> None:
    check_connection(env.ctx, env.connection_id)
    faulty.proxy.add_fault(r"^/fhir/bulk-status/", method="GET", status=400)
    with pytest.raises(PermanentEhrError):
        env.run_all(TYPES)
    forgotten = faulty.proxy.add_fault(r"^/fhir/bulk-status/", method="GET", status=404)
    runs = env.run_all(TYPES)
    assert forgotten.times == 0 and all(run.caught_up for run in runs.values())
    assert faulty.proxy.count("GET", r"^/fhir/\$export$") == 2, "the first, and one in place of the forgotten one"
    assert faulty.proxy.count("DELETE", r"^/fhir/bulk-status/") == 2, "the forgotten one cancelled, the new released"
    in_step(env)


def test_a_kept_export_of_other_types_is_cancelled_before_a_new_one(env: SyncEnv, faulty: FaultyEhr) -> None:
    """Patient and Encounter were exported together and cut off; this time only Patient joins (a worker holds
    Encounter, say): the kept export is not Patient's alone, so it is cancelled (an EHR that allows one export
    per client would refuse the new one while it runs) and a new one started."""
    check_connection(env.ctx, env.connection_id)
    faulty.proxy.add_fault(r"^/fhir/bulk-status/", method="GET", status=400)
    with pytest.raises(PermanentEhrError):
        env.run_all(TYPES)
    runs = env.run_all(("Patient",))
    assert runs["Patient"].caught_up and "Encounter" not in runs
    assert faulty.proxy.count("GET", r"^/fhir/\$export$") == 2
    assert faulty.proxy.count("DELETE", r"^/fhir/bulk-status/") == 2, "the kept one cancelled, the new released"
    assert env.snapshot("Patient") == env.server("Patient")


def test_invalid_resources_are_quarantined_and_the_rest_synced(env: SyncEnv, faulty: FaultyEhr) -> None:
    bundle = requests.get(f"{faulty.stack.fhir_internal_url}/Patient?_sort=_lastUpdated&_count=200", timeout=30).json()
    broken = copy.deepcopy(bundle)
    broken["entry"][3]["resource"]["birthDate"] = "the year the river froze"
    faulty.proxy.add_fault(r"^/fhir/Patient\?_sort=_lastUpdated&_count=200$", status=200, body=json.dumps(broken))
    runs = env.run_all(("Patient",))
    assert runs["Patient"].quarantined == 1
    with env.ctx.db.session() as session:
        held = streams.quarantined(session, env.connection_id)
    assert [q.fhir_id for q in held] == [broken["entry"][3]["resource"]["id"]] and "birthDate" in held[0].error
    bad_id = held[0].fhir_id
    assert env.snapshot("Patient") == {v for v in env.server("Patient") if v[0] != bad_id}


def test_a_quarantined_resource_the_ehr_mends_or_deletes_leaves_the_quarantine(env: SyncEnv,
                                                                                faulty: FaultyEhr) -> None:
    """Two Patients refused at the first load. The EHR then sends one again, valid (a new version), and deletes
    the other, on an EHR whose `_history` fails, so only the id comparison can see it (the id was never in the
    snapshot). Both leave IT's list, kept on record as resolved; the snapshot then equals the server's."""
    bundle = requests.get(f"{faulty.stack.fhir_internal_url}/Patient?_sort=_lastUpdated&_count=200", timeout=30).json()
    broken = copy.deepcopy(bundle)
    mended, deleted = (broken["entry"][i]["resource"] for i in (3, 5))
    mended["birthDate"], deleted["gender"] = "the year the river froze", "sometimes"
    faulty.proxy.add_fault(r"^/fhir/Patient\?_sort=_lastUpdated&_count=200$", status=200, body=json.dumps(broken))
    assert env.run_all(("Patient",))["Patient"].quarantined == 2
    with env.ctx.db.session() as session:
        assert {q.fhir_id for q in streams.quarantined(session, env.connection_id)} == {mended["id"], deleted["id"]}

    env.put(env.read("Patient", mended["id"]))  # a new version, as the EHR has it (valid)
    env.delete("Patient", deleted["id"])
    faulty.proxy.add_fault(r"/_history", status=404, times=10)
    with env.ctx.db.session() as session:
        [stream] = [s for s in streams.of_connection(session, env.connection_id) if s.resource_type == "Patient"]
        stream.reconciled_at = None  # make the (6-hourly) id comparison due
        session.add(stream)
    env.run_all(("Patient",))
    with env.ctx.db.session() as session:
        assert streams.quarantined(session, env.connection_id) == []
        assert streams.open_quarantine_counts(session) == {}
        kept = session.exec(select(QuarantinedResource)).all()
    assert sorted((q.fhir_id, q.resolved_at is not None, q.payload) for q in kept) == sorted(
        [(mended["id"], True, {}), (deleted["id"], True, {})]), "the refused resources themselves are not kept"
    assert env.snapshot("Patient") == env.server("Patient")


def test_an_expired_paging_link_restarts_the_listing(env: SyncEnv, faulty: FaultyEhr) -> None:
    """Windows never follow offset links; the id listing that finds deletions (where `_history` fails) does,
    and starts over once when a link has expired."""
    env.run_all(TYPES)
    faulty.proxy.add_fault(r"/_history", status=404, times=10)
    expired = faulty.proxy.add_fault(r"_offset=", status=410)
    with env.ctx.db.session() as session:
        for stream in session.exec(select(SyncStream)).all():
            stream.reconciled_at = None  # make the (6-hourly) id comparison due
            session.add(stream)
    env.run_all(TYPES)
    assert expired.times == 0
    in_step(env)


def reread_passes(env: SyncEnv, stream_id: int, most: int) -> list[StreamRun]:
    """Runs with no time to spare (each stops after its first page) until one ends its pass."""
    runs: list[StreamRun] = []
    while not (runs and runs[-1].caught_up) and len(runs) < most:
        runs.append(run_stream(env.ctx, stream_id, time_budget_s=0))
    return runs


def test_a_reread_longer_than_a_run_goes_on_where_the_run_stopped(env: SyncEnv, faulty: FaultyEhr) -> None:
    """IT's `reread` on an EHR without a usable `_history`, where a pass takes longer than a job may: each page
    is committed with the link to the next, and the next run follows it, so the pass ends. (Starting over each
    run, it never did: a large EHR's passes, first load included, went on for ever.) A kept link the EHR has
    forgotten starts the pass again."""
    with env.ctx.db.session() as session:
        [stream] = streams.set_strategy(session, env.ctx.settings.clock, audit.command_line_actor(env.connection_id),
                                        env.connection_id, "reread", ["Encounter"])
    env.run_all(("Encounter",))  # the first load (a bulk export, which this EHR offers)
    faulty.proxy.add_fault(r"/_history", status=404, times=1000)
    changed = env.read("Encounter", "enc-000002-001")
    changed["status"] = "cancelled" if changed["status"] != "cancelled" else "finished"
    env.put(changed)
    pages = -(-len(env.server("Encounter")) // 200)
    assert pages > 3

    runs = reread_passes(env, stream.id or 0, most=pages + 2)
    assert [run.pages for run in runs] == [1] * pages, "each run read one page, the next page on"
    assert runs[-1].caught_up and REREAD in runs[-1].notes
    assert env.snapshot("Encounter") == env.server("Encounter")
    with env.ctx.db.session() as session:
        ended = streams.get(session, stream.id or 0)
    assert (ended.pass_kind, ended.pass_position, ended.pass_started) == (None, None, None) and ended.cursor

    assert not run_stream(env.ctx, stream.id or 0, time_budget_s=0).caught_up
    forgotten = faulty.proxy.add_fault(r"^/fhir/Encounter\?.*_offset=", status=410)
    runs = reread_passes(env, stream.id or 0, most=pages + 2)
    assert forgotten.times == 0 and len(runs) == pages, "the forgotten link's run read the first page again"
    assert runs[-1].caught_up and env.snapshot("Encounter") == env.server("Encounter")


@contextmanager
def a_lease_watch(env: SyncEnv, resource_type: str) -> Iterator[list[str]]:
    """Looks at the stream's lease all the while: yields each moment it found it lapsed while still held (the
    row there, its time up), when any other worker could have taken the stream. (A lease released at the run's
    end has no row: that is not a lapse.)"""
    with env.ctx.db.session() as session:
        [stream] = [s for s in streams.of_connection(session, env.connection_id) if s.resource_type == resource_type]
    name, lapsed, done = streams.lease_name(stream), [], threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            with env.ctx.db.session() as session:
                row = session.get(Lease, name)
                now = env.ctx.settings.clock()
                if row is not None and row.expires_at is not None and row.expires_at < now:
                    lapsed.append(f"{row.holder}'s lease ended {row.expires_at.isoformat()}, seen {now.isoformat()}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield lapsed
    finally:
        done.set()
        watcher.join()


def slowly_under_watch(env: SyncEnv, faulty: FaultyEhr, resource_type: str, slow_path: str) -> StreamRun:
    """Run the stream with each request to `slow_path` held 0.6 s (three or more of them: longer than the
    1.5 s lease), the stream's lease watched all the while: it must never lapse."""
    slow = faulty.proxy.add_fault(slow_path, delay_s=0.6, times=10)
    with a_lease_watch(env, resource_type) as lapsed:
        run = env.run_all((resource_type,))[resource_type]
    assert slow.times <= 10 - 3, "several slow pages, together longer than a lease"
    assert lapsed == [], "the lease lapsed mid-step: another worker could have taken the stream"
    return run


@pytest.fixture
def short_leases(monkeypatch: pytest.MonkeyPatch) -> float:
    """A 1.5 s lease, renewed when due (every 0.2 s at most). Between two renewals come up to 0.2 s, a slow
    request (0.6 s) and the work on its answer: a one-second lease left that work 0.2 s, and a loaded CI machine
    once took longer (the lease lapsed 1 ms before the run released it, after its last request)."""
    monkeypatch.setattr(stream_leases, "LEASE_RENEW_S", 0.2)
    return 1.5


@pytest.mark.serial
def test_a_long_history_read_keeps_the_streams_lease(faulty: FaultyEhr, tmp_path: Path, short_leases: float) -> None:
    """A `_history` that takes longer to read than a lease lasts (a slow EHR, a busy week) is read with the lease
    renewed page by page, as windows are: it never lapses mid-read. (It lapsed after one lease period, and a second
    worker could take the stream and sync it beside the first.)"""
    faulty.proxy.clear()
    with sync_database(faulty.stack, tmp_path, sync_page_size=3, job_lease_s=short_leases) as env:
        env.run_all(("Location",))
        env.run_all(("Location",))  # the history mark moves past the sandbox's load
        for location_id in sorted(i for i, _ in env.server("Location"))[:9]:
            changed = env.read("Location", location_id)
            changed["name"] = f"{changed['name']} (renamed)"
            env.put(changed)
        run = slowly_under_watch(env, faulty, "Location", r"^/fhir/Location/_history")
        assert run.caught_up and run.stored == 9
        assert env.snapshot("Location") == env.server("Location")
    faulty.proxy.clear()


@pytest.mark.serial
def test_a_long_id_comparison_keeps_the_streams_lease(faulty: FaultyEhr, tmp_path: Path, short_leases: float) -> None:
    """The deletion check's id listing (no `_history` here) over a slow EHR outlasts a lease: renewed as the ids
    come, it never lapses, and the deleted Encounter leaves the snapshot."""
    faulty.proxy.clear()
    with sync_database(faulty.stack, tmp_path, job_lease_s=short_leases) as env:
        env.run_all(("Encounter",))
        faulty.proxy.add_fault(r"/_history", status=404, times=1000)
        gone = sorted(i for i, _ in env.server("Encounter"))[5]
        env.delete("Encounter", gone)
        with env.ctx.db.session() as session:
            for stream in streams.of_connection(session, env.connection_id):
                stream.reconciled_at = None  # the (6-hourly) id comparison is due
                session.add(stream)
        run = slowly_under_watch(env, faulty, "Encounter", r"^/fhir/Encounter\?.*_elements=id")
        assert run.caught_up and run.deleted == 1
        assert env.snapshot("Encounter") == env.server("Encounter")
    faulty.proxy.clear()


def test_token_expiry_mid_sync_costs_one_reauthentication(env: SyncEnv, faulty: FaultyEhr) -> None:
    faulty.proxy.add_fault(r"^/fhir/Encounter\?.*_lastUpdated=ge", status=401)
    env.run_all(TYPES)
    in_step(env)
    assert faulty.proxy.count("POST", r"^/oauth/token$") == 2  # the first token, and one after the 401


def test_a_token_refused_after_reauthentication_flags_the_connection_for_it(env: SyncEnv, faulty: FaultyEhr) -> None:
    refused = faulty.proxy.add_fault(r"^/fhir/Patient\?", status=401, times=2)
    with pytest.raises(AuthExpiredError):
        env.run_all(("Patient",))
    assert refused.times == 0 and faulty.proxy.count("POST", r"^/oauth/token$") >= 2
    with env.ctx.db.session() as session:
        row = connections.get(session, env.connection_id)
        assert row is not None and row.needs_it and "Patient sync" in row.needs_it
        [patients] = [s for s in streams.of_connection(session, env.connection_id) if s.resource_type == "Patient"]
        assert patients.last_error and "401" in patients.last_error
    check_connection(env.ctx, env.connection_id)  # IT mends it and checks: a clean check clears the flag
    with env.ctx.db.session() as session:
        row = connections.get(session, env.connection_id)
        assert row is not None and row.needs_it is None
    env.run_all(("Patient",))


def test_records_changed_and_deleted_while_the_sync_pages(env: SyncEnv, faulty: FaultyEhr) -> None:
    """Between two windows the EHR updates resources behind and ahead of the cursor and deletes one."""
    changed = threading.Event()

    def change_now() -> None:
        for resource_id in ("enc-000001-001", "enc-000150-001", "enc-000290-001"):
            resource = env.read("Encounter", resource_id)
            resource["status"] = "cancelled" if resource["status"] != "cancelled" else "finished"
            env.put(resource)
        env.delete("Encounter", "enc-000100-001")
        changed.set()

    faulty.proxy.add_fault(r"^/fhir/Encounter\?.*_lastUpdated=ge", before=change_now)
    env.run_all(TYPES)
    assert changed.is_set()
    env.run_all(TYPES)  # the next run reads the deletion from _history
    in_step(env)


def test_a_deletion_while_ids_are_listed_takes_nothing_else_out_of_the_snapshot(tmp_path: Path) -> None:
    """Without `_history`, deletions are found by listing every id (offset pages) and comparing. A resource
    deleted while that listing pages moves every later one a place forward, so the first id of the next page
    is listed on no page: an id missing from the listing is not proof it is gone."""
    with FaultyEhr(SandboxConfig(profile="no-history", port=0, fhir_internal_port=0)) as ehr, \
            sync_database(ehr.stack, tmp_path) as env:
        env.run_all(("Appointment",))
        listing = requests.get(f"{ehr.stack.fhir_internal_url}/Appointment",
                               params={"_elements": "id", "_count": "1000"}, timeout=30).json()
        first_listed = listing["entry"][0]["resource"]["id"]
        assert any(link["relation"] == "next" for link in listing["link"]), "the listing must span two pages"
        deleted = threading.Event()

        def delete_first_listed() -> None:
            env.delete("Appointment", first_listed)
            deleted.set()

        ehr.proxy.add_fault(r"^/fhir/Appointment\?.*_offset=", before=delete_first_listed)
        with env.ctx.db.session() as session:  # make the (6-hourly) id comparison due
            for stream in session.exec(select(SyncStream)).all():
                stream.reconciled_at = None
                session.add(stream)
        run = env.run_all(("Appointment",))["Appointment"]
        assert deleted.is_set() and run.caught_up
        on_server = env.server("Appointment")
        assert on_server < env.snapshot("Appointment"), "a live Appointment was taken out of the snapshot"
        # The deleted one was listed (page one) before it went: the next comparison takes it out.
        assert env.snapshot("Appointment") - on_server == {(first_listed, "1")} and run.deleted == 0
        with env.ctx.db.session() as session:
            for stream in session.exec(select(SyncStream)).all():
                stream.reconciled_at = None
                session.add(stream)
        assert env.run_all(("Appointment",))["Appointment"].deleted == 1
        assert env.snapshot("Appointment") == env.server("Appointment")
