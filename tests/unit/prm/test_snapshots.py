"""Snapshot upserts and stream cursors on SQLite and PostgreSQL: idempotent, version-aware, gap-free."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import select

from fhir_mappings.encounter import visit_from_encounter
from fhir_mappings.patient import patient_record_from_patient
from prm import connections, snapshots, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import IDS_PER_STATEMENT, Database
from prm.pg_copy import COPY_FROM_ROWS
from prm.snapshot_models import PatientRecord, QuarantinedResource, SyncStream, Visit
from prm.snapshot_rows import encode_rows

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"
T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


def connection_id(database: Database, settings: Settings) -> int:
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
        return row.id or 0


def encounters(n: int) -> list[dict]:  # type: ignore[type-arg]
    with (DATA / "Encounter.ndjson").open() as lines:
        return [json.loads(next(lines)) for _ in range(n)]


def test_upserting_a_page_twice_changes_nothing(database: Database, settings: Settings) -> None:
    cid = connection_id(database, settings)
    page = [visit_from_encounter(r) for r in encounters(50)]
    for _ in range(2):
        with database.session() as session:
            assert snapshots.upsert_page(session, cid, "Encounter", list(page)) == 50
    with database.session() as session:
        assert len(session.exec(select(Visit)).all()) == 50


def test_an_older_version_never_overwrites_a_newer_one(database: Database, settings: Settings) -> None:
    cid = connection_id(database, settings)
    resource = encounters(1)[0]
    newer = visit_from_encounter({**resource, "status": "finished", "meta": {"versionId": "2",
                                                                              "lastUpdated": "2026-11-20T12:00:00Z"}})
    older = visit_from_encounter({**resource, "status": "in-progress",
                                  "meta": {"versionId": "1", "lastUpdated": "2026-11-20T11:00:00Z"}})
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", [newer])
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", [older])
    with database.session() as session:
        assert snapshots.versions(session, cid, "Encounter") == {(resource["id"], "2")}
        row = session.exec(select(Visit)).one()
        assert row.status == "finished" and row.last_updated == T0


def test_deleted_rows_leave_every_live_query(database: Database, settings: Settings) -> None:
    cid = connection_id(database, settings)
    page = [visit_from_encounter(r) for r in encounters(3)]
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", page)
        assert snapshots.mark_deleted(session, cid, "Encounter", [page[0].fhir_id]) == 1
    with database.session() as session:
        assert snapshots.live_ids(session, cid, "Encounter") == {page[1].fhir_id, page[2].fhir_id}


def patients(*fhir_ids: str) -> list[dict]:  # type: ignore[type-arg]
    with (DATA / "Patient.ndjson").open() as lines:
        by_id = {p["id"]: p for p in map(json.loads, lines)}
    return [by_id[fhir_id] for fhir_id in fhir_ids]


def test_a_tombstone_keeps_its_key_and_stamps_and_nothing_of_the_person(database: Database,
                                                                        settings: Settings) -> None:
    """The EHR deleted the record: the PRM keeps what stops an older copy coming back, not the person."""
    cid = connection_id(database, settings)
    gone, kept = patients("pat-000001", "pat-000002")
    gone = {**gone, "meta": {**gone["meta"], "versionId": "4"}}  # as a server stamps it (the data set does not)
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Patient", [patient_record_from_patient(p) for p in (gone, kept)])
        assert snapshots.mark_deleted(session, cid, "Patient", [gone["id"]]) == 1
    with database.session() as session:
        rows = {r.fhir_id: r for r in session.exec(select(PatientRecord))}
    tomb, live = rows[gone["id"]], rows[kept["id"]]
    assert (tomb.deleted, tomb.version_id, tomb.last_updated) == (
        True, gone["meta"]["versionId"], datetime.fromisoformat(gone["meta"]["lastUpdated"]))
    assert (tomb.display_name, tomb.birth_date, tomb.gender, tomb.postcode, tomb.telecom, tomb.languages,
            tomb.general_practitioners, tomb.managing_organization) == ("", None, None, None, [], [], [], None)
    assert live.display_name and live.birth_date == kept["birthDate"] and live.telecom, "other rows keep theirs"


def test_a_deleted_visit_keeps_no_patient_or_times_and_a_newer_version_brings_it_back_whole(
        database: Database, settings: Settings) -> None:
    """FHIR lets a deleted resource be created again under its id: the newer version restores every field;
    the deleted one's own version never does."""
    cid = connection_id(database, settings)
    resource = encounters(1)[0]
    first = visit_from_encounter({**resource, "meta": {"versionId": "1", "lastUpdated": "2026-11-20T11:00:00Z"}})
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", [first])
        snapshots.mark_deleted(session, cid, "Encounter", [first.fhir_id])
    with database.session() as session:
        tomb = session.exec(select(Visit)).one()
        assert (tomb.patient_id, tomb.start_at, tomb.type_codes, tomb.practitioners) == (None, None, [], [])
        assert tomb.status == resource["status"], "NOT NULL and not personal: kept"
    again = visit_from_encounter({**resource, "meta": {"versionId": "3", "lastUpdated": "2026-11-20T12:00:00Z"}})
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", [again])
    with database.session() as session:
        back = session.exec(select(Visit)).one()
        assert (back.deleted, back.version_id, back.patient_id, back.start_at) == (
            False, "3", again.patient_id, again.start_at)
        assert back.patient_id is not None


def test_the_cursor_remembers_ties_and_never_moves_back(database: Database, settings: Settings) -> None:
    cid = connection_id(database, settings)
    with database.session() as session:
        stream = next(s for s in streams.ensure(session, cid) if s.resource_type == "Encounter")
        streams.advance(stream, [("a", T0), ("b", T0 + timedelta(seconds=1)), ("c", T0 + timedelta(seconds=1))])
        assert stream.cursor == T0 + timedelta(seconds=1) and stream.cursor_ids == ["b", "c"]
        streams.advance(stream, [("d", T0 + timedelta(seconds=1))])  # another tie at the same instant
        assert stream.cursor_ids == ["b", "c", "d"]
        assert streams.already_seen(stream, "c", T0 + timedelta(seconds=1))
        assert not streams.already_seen(stream, "e", T0 + timedelta(seconds=1))
        streams.advance(stream, [("e", T0)])  # an older instant never moves the cursor back
        assert stream.cursor == T0 + timedelta(seconds=1)
        session.add(stream)
    with database.session() as session:
        again = streams.ensure(session, cid)
        assert len(again) == len(streams.SYNC_TYPES)
        stored = session.exec(select(SyncStream).where(SyncStream.resource_type == "Encounter")).one()
        assert stored.cursor == T0 + timedelta(seconds=1) and stored.cursor_ids == ["b", "c", "d"]


def test_ensure_adds_only_the_missing_streams_and_keeps_the_others_as_they_are(database: Database,
                                                                              settings: Settings) -> None:
    cid = connection_id(database, settings)
    with database.session() as session:
        (patient,) = streams.ensure(session, cid, ("Patient",))
        patient.cursor, patient.resources_synced = T0, 7
        session.add(patient)
    with database.session() as session:
        every = streams.ensure(session, cid)
        assert sorted(s.resource_type for s in every) == sorted(streams.SYNC_TYPES)
        assert streams.ensure(session, cid) == every
    with database.session() as session:
        kept = session.exec(select(SyncStream).where(SyncStream.resource_type == "Patient")).one()
        assert (kept.cursor, kept.resources_synced) == (T0, 7)


def test_quarantine_keeps_each_bad_version_once(database: Database, settings: Settings) -> None:
    cid = connection_id(database, settings)
    bad = {"resourceType": "Encounter", "id": "x", "meta": {"versionId": "1"}, "status": "nonsense"}
    with database.session() as session:
        assert streams.quarantine(session, settings.clock, cid, "Encounter", bad, "status: not a code")
        assert not streams.quarantine(session, settings.clock, cid, "Encounter", bad, "status: not a code")
        assert [q.fhir_id for q in streams.quarantined(session, cid)] == ["x"]


def test_a_resolved_quarantine_leaves_the_open_list_and_stays_on_record(database: Database,
                                                                         settings: Settings) -> None:
    """Resolving touches only this connection and type, only open rows, and any number of ids (in chunks); a
    resolved row keeps what was refused and why, not the resource."""
    cid = connection_id(database, settings)
    with database.session() as session:
        for fhir_id, rtype in (("x", "Encounter"), ("y", "Encounter"), ("x", "Appointment"), ("", "Encounter")):
            streams.quarantine(session, settings.clock, cid, rtype, {"resourceType": rtype, "id": fhir_id}, "bad")
    with database.session() as session:
        assert streams.open_quarantine_counts(session) == {(cid, "Encounter"): 3, (cid, "Appointment"): 1}
        assert streams.open_quarantine_counts(session, cid + 1) == {}  # another connection's: none
        assert streams.open_quarantined_ids(session, cid, "Encounter") == {"x", "y"}  # "" is no id to ask about
        many = [f"id-{n}" for n in range(IDS_PER_STATEMENT * 2)] + ["x"]
        assert streams.resolve_quarantined(session, settings.clock, cid, "Encounter", many) == 1
        assert streams.resolve_quarantined(session, settings.clock, cid, "Encounter", ["x"]) == 0  # once
        assert streams.resolve_quarantined(session, settings.clock, cid + 1, "Encounter", ["y"]) == 0
    with database.session() as session:
        assert sorted((q.resource_type, q.fhir_id) for q in streams.quarantined(session, cid)) == [
            ("Appointment", "x"), ("Encounter", ""), ("Encounter", "y")]
        kept = session.exec(select(QuarantinedResource).where(QuarantinedResource.fhir_id == "x")).all()
        assert sorted((q.resource_type, q.resolved_at is not None, q.payload) for q in kept) == [
            ("Appointment", False, {"resourceType": "Appointment", "id": "x"}),  # open: kept for IT to look into
            ("Encounter", True, {})]  # resolved: the record of what was refused, not the resource


def test_a_page_with_the_same_resource_twice_keeps_the_newer(database: Database, settings: Settings) -> None:
    cid = connection_id(database, settings)
    resource = encounters(1)[0]
    unstamped = visit_from_encounter({**resource, "meta": {"versionId": "1"}})
    stamped = visit_from_encounter({**resource, "meta": {"versionId": "2", "lastUpdated": "2026-11-20T12:00:00Z"}})
    with database.session() as session:
        assert snapshots.upsert_page(session, cid, "Encounter", [stamped, unstamped]) == 1
    with database.session() as session:
        assert snapshots.versions(session, cid, "Encounter") == {(resource["id"], "2")}


def test_a_large_page_keeps_the_version_rule_and_every_field(database: Database, settings: Settings) -> None:
    """Pages of COPY_FROM_ROWS or more go through COPY on PostgreSQL: same rows, same rule as small pages."""
    cid = connection_id(database, settings)
    resources = encounters(COPY_FROM_ROWS + 50)
    stamp = {"versionId": "2", "lastUpdated": "2026-11-20T12:00:00Z"}
    page = [visit_from_encounter({**r, "meta": stamp}) for r in resources]
    older = [visit_from_encounter({**r, "status": "cancelled", "meta": {"versionId": "1",
                                                                          "lastUpdated": "2026-11-20T11:00:00Z"}})
             for r in resources]
    newest = [visit_from_encounter({**r, "status": "entered-in-error", "meta": {
        "versionId": "3", "lastUpdated": "2026-11-20T13:00:00Z"}}) for r in resources[:COPY_FROM_ROWS]]
    for rows in (page, page, older, newest, newest):  # twice each: idempotent
        with database.session() as session:
            assert snapshots.upsert_page(session, cid, "Encounter", rows) == len(rows)
    with database.session() as session:
        stored = {v.fhir_id: v for v in session.exec(select(Visit))}
    assert len(stored) == len(resources)
    expected = {r.fhir_id: r for r in [*page[COPY_FROM_ROWS:], *newest]}
    for fhir_id, row in expected.items():
        kept = stored[fhir_id]
        assert (kept.version_id, kept.status, kept.last_updated) == (row.version_id, row.status, row.last_updated)
        assert (kept.type_codes, kept.location_ids, kept.start_at, kept.start_offset_min) == \
            (row.type_codes, row.location_ids, row.start_at, row.start_offset_min)


def test_a_first_loads_new_rows_go_straight_in_and_a_page_meeting_stored_ones_is_upserted(
        database: Database, settings: Settings) -> None:
    """`store_new` (a first load's pages): new rows are stored; on PostgreSQL, where they go straight into the
    table by COPY, a page holding a row already there is refused whole, the transaction still usable, and the
    upsert then keeps the version rule. SQLite's `store_new` is its upsert."""
    cid = connection_id(database, settings)
    stamp = {"versionId": "1", "lastUpdated": "2026-11-20T12:00:00Z"}
    resources = [{**r, "meta": stamp} for r in encounters(COPY_FROM_ROWS + 20)]
    dialect = database.engine.dialect
    first = [visit_from_encounter(r) for r in resources[:-1]]
    with database.session() as session:
        assert snapshots.store_new(session, "Encounter", encode_rows(dialect, cid, "Encounter", first))
    with database.session() as session:
        assert snapshots.versions(session, cid, "Encounter") == {(r["id"], "1") for r in resources[:-1]}
    newer = {**resources[0], "status": "cancelled", "meta": {"versionId": "2", "lastUpdated": "2026-11-20T13:00:00Z"}}
    older = {**resources[1], "status": "cancelled", "meta": {"versionId": "0", "lastUpdated": "2020-01-01T00:00:00Z"}}
    page = encode_rows(dialect, cid, "Encounter", [visit_from_encounter(r) for r in (newer, older, resources[-1])])
    with database.session() as session:
        taken = snapshots.store_new(session, "Encounter", page)
        assert taken is (dialect.name == "sqlite")
        if not taken:
            assert snapshots.versions(session, cid, "Encounter") == {(r["id"], "1") for r in resources[:-1]}
            assert snapshots.store_encoded(session, "Encounter", page) == 3
    expected = {(r["id"], "1") for r in resources[1:]} | {(newer["id"], "2")}
    with database.session() as session:
        assert snapshots.versions(session, cid, "Encounter") == expected


def test_stamps_of_answers_for_more_ids_than_one_query_takes(database: Database, settings: Settings) -> None:
    cid = connection_id(database, settings)
    page = [visit_from_encounter(r) for r in encounters(IDS_PER_STATEMENT * 2 + 10)]
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", page)
        snapshots.mark_deleted(session, cid, "Encounter", [page[0].fhir_id])
    asked = [v.fhir_id for v in page] + ["not-synced"]
    with database.session() as session:
        stamps = snapshots.stamps_of(session, cid, "Encounter", asked)
    assert set(stamps) == {v.fhir_id for v in page[1:]}, "live rows only, each chunk answered"
    assert all(stamps[v.fhir_id] == v.last_updated for v in page[1:])


def test_a_mass_deletion_is_marked_whatever_its_size(database: Database, settings: Settings) -> None:
    """An EHR that purged a lot hands the sync more ids than one statement may bind (PostgreSQL takes 65,535;
    SQLite's limit depends on its build): marked all the same, in chunks. One IN of them all failed the stream
    on PostgreSQL, on every run."""
    cid = connection_id(database, settings)
    page = [visit_from_encounter(r) for r in encounters(30)]
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", page)
    gone = [f"purged-{n}" for n in range(70_000)] + [v.fhir_id for v in page[:20]]
    with database.session() as session:
        assert snapshots.mark_deleted(session, cid, "Encounter", gone) == 20
    with database.session() as session:
        assert snapshots.live_ids(session, cid, "Encounter") == {v.fhir_id for v in page[20:]}


def test_merge_survivors_are_the_live_records_replaced_by_links(database: Database, settings: Settings) -> None:
    """The data set's merged duplicate (pat-000025 replaced-by pat-000026) is followed; a tombstoned record's
    link is not, nor a link that names no FHIR id."""
    cid = connection_id(database, settings)
    with (DATA / "Patient.ndjson").open() as lines:
        patients = {p["id"]: p for p in map(json.loads, lines)}
    merged = patients["pat-000025"]
    gone = {**patients["pat-000001"], "link": [{"type": "replaced-by", "other": {"reference": "Patient/pat-x"}}]}
    odd = {**patients["pat-000002"], "link": [{"type": "replaced-by", "other": {"reference": "Patient/a b"}}]}
    rows = [patient_record_from_patient(p) for p in (merged, gone, odd, patients["pat-000026"])]
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Patient", rows)
        snapshots.mark_deleted(session, cid, "Patient", ["pat-000001"])
    with database.session() as session:
        assert snapshots.merge_survivors(session, cid) == {"pat-000026"}
