"""A named export Group is the population whatever the EHR offers: where it has no Group-level `$export`, the
system-level export is kept to the Group's members as it is stored; where it has no `$export` at all, searches
keep the patients held and each member's whole record is read once. Either way nobody else's records are
stored, then or later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from sqlmodel import select

from prm.errors import PermanentEhrError
from prm.models import AuditRecord
from prm.snapshot_models import Booking, SyncStream
from tests.integration.sync_env import SyncEnv, group_of, sync_env
from workers.connection_check import check_connection
from workers.sync_strategy import GROUP_EXPORTED

SYNCED = ("Organization", "Location", "PractitionerRole", "Patient", "RelatedPerson", "Encounter", "Appointment")
DIRECTORY = ("Organization", "Location", "PractitionerRole")


def in_step_with_the_group(env: SyncEnv, members: list[str]) -> None:
    for resource_type in GROUP_EXPORTED:  # the members' records, and nobody else's
        assert env.snapshot(resource_type) == env.server(resource_type, members), resource_type
    for resource_type in DIRECTORY:  # read whole
        assert env.snapshot(resource_type) == env.server(resource_type), resource_type


def grouped(env: SyncEnv) -> list[str]:
    """25 members, none merged (the data set merges pat-000025 into pat-000026: a survivor joins the population,
    as test_sync shows), one of them booked on a group session a non-member is named first on."""
    members = [p for p in sorted(i for i, _ in env.server("Patient"))[:27] if p not in ("pat-000025", "pat-000026")]
    env.put(group_of("dental-patients", members))
    env.set_export_group("dental-patients")
    env.put(group_session(env, members[3]))
    assert ("appt-group-session", "1") in env.server("Appointment", [members[3]])
    return members


def group_session(env: SyncEnv, member: str) -> dict[str, Any]:
    """A non-member's booking in the data set (which books one patient an appointment) made a group session,
    the member booked on it second: theirs as much as the non-member's, so the Group's copy keeps it."""
    for outsider in sorted((i for i, _ in env.server("Patient")), reverse=True):
        bundle = requests.get(f"{env.stack.fhir_internal_url}/Appointment?patient={outsider}&status=booked",
                              timeout=30).json()
        if bundle.get("entry"):
            template = bundle["entry"][0]["resource"]
            booked = {"actor": {"reference": f"Patient/{member}"}, "required": "required", "status": "accepted"}
            return {**template, "id": "appt-group-session", "meta": {},
                    "participant": [template["participant"][0], booked, *template["participant"][1:]]}
    raise AssertionError("no booked appointment in the data set")


def test_a_system_level_export_is_kept_to_the_groups_members(tmp_path: Path) -> None:
    with sync_env(tmp_path, profile="system-export-only", patients=70) as fresh:
        members = grouped(fresh)
        profile = check_connection(fresh.ctx, fresh.connection_id)
        assert profile["sync"]["strategy"]["initial"] == "bulk-export-system"
        assert ("an export Group is set but the EHR lists no Group-level $export: the first sync exports at system "
                "level (every patient's records cross, only the Group's are kept)") in profile["warnings"]
        first = fresh.run_all(SYNCED)
        assert all("bulk export" in first[t].notes for t in GROUP_EXPORTED)
        assert first["Encounter"].stored == len(fresh.server("Encounter", members)), "only members' rows stored"
        in_step_with_the_group(fresh, members)
        quiet = fresh.run_all(SYNCED)
        assert sum(run.stored for run in quiet.values()) == 0, "the members were read whole by the export"
        in_step_with_the_group(fresh, members)


def test_without_any_export_searches_keep_to_the_group_and_read_each_member_once(tmp_path: Path) -> None:
    with sync_env(tmp_path, profile="no-export", patients=70) as fresh:
        members = grouped(fresh)
        profile = check_connection(fresh.ctx, fresh.connection_id)
        assert profile["sync"]["strategy"]["initial"] == "search"
        first = fresh.run_all(SYNCED)  # Patient first: its search stores nobody, then the members are read
        for resource_type in GROUP_EXPORTED:
            assert "25 patient(s) new to the Group's population read whole" in first[resource_type].notes
        assert first["Patient"].stored == 25
        in_step_with_the_group(fresh, members)
        quiet = fresh.run_all(SYNCED)
        assert sum(run.stored for run in quiet.values()) == 0
        in_step_with_the_group(fresh, members)
        session = fresh.read("Appointment", "appt-group-session")  # the member declines their place on it
        fresh.put({**session, "participant": [{**p, "status": "declined"} if p["actor"]["reference"] ==
                                              f"Patient/{members[3]}" else p for p in session["participant"]]})
        fresh.run_all(SYNCED)
        in_step_with_the_group(fresh, members)  # still in their record, as the EHR's patient search says
        with fresh.ctx.db.session() as db:
            [row] = db.exec(select(Booking).where(Booking.fhir_id == "appt-group-session")).all()
        assert (row.other_patients, row.declined_patients) == ([], [members[3]]), "not on their sidebar"
        visit = fresh.read("Encounter", next(i for i, _ in fresh.server("Encounter", [members[4]])))
        fresh.put({**visit, "subject": {"reference": "Patient/pat-000070"}})  # refiled under a non-member
        fresh.run_all(SYNCED)
        assert visit["id"] not in {i for i, _ in fresh.snapshot("Encounter")}
        with fresh.ctx.db.session() as db:
            details = [r.detail for r in db.exec(select(AuditRecord).where(
                AuditRecord.action == "sync.page", AuditRecord.entity == "Encounter"))]
        assert "left the Group's population 1" in details, "audited with the page that took it out"
        in_step_with_the_group(fresh, members)


def test_a_visit_refiled_under_a_non_member_leaves_a_copy_read_patient_by_patient(tmp_path: Path) -> None:
    """An EHR that lists records patient by patient: a member's visit refiled under a non-member is on no
    listing of the member's any more. Asked by id at the id comparison, it is still there: its new version is
    what the copy takes, and, naming nobody in the Group, the copy drops it, rather than keep the old one."""
    with sync_env(tmp_path, profile="group-export-only", patients=70) as fresh:
        members = grouped(fresh)
        check_connection(fresh.ctx, fresh.connection_id)
        fresh.run_all(SYNCED)
        assert ("pat-000028", "1") not in fresh.snapshot("Patient"), \
            "in the export of pat-000027's compartment (its `seealso` link), not a member"
        in_step_with_the_group(fresh, members)
        visit = fresh.read("Encounter", next(i for i, _ in fresh.server("Encounter", [members[4]])))
        fresh.put({**visit, "subject": {"reference": "Patient/pat-000070"}})
        with fresh.ctx.db.session() as db:  # no _history here: make the (6-hourly) id comparison due
            for stream in db.exec(select(SyncStream)).all():
                stream.reconciled_at = None
                db.add(stream)
        runs = fresh.run_all(SYNCED)
        assert visit["id"] not in {i for i, _ in fresh.snapshot("Encounter")}
        assert runs["Encounter"].deleted == 0, "not deleted at the EHR: refiled"
        in_step_with_the_group(fresh, members)


def test_a_group_export_keeps_a_record_merged_into_a_member_and_not_another_persons_linked_one(
        tmp_path: Path) -> None:
    """The data set merges pat-000025 into pat-000026, and links pat-000027 and pat-000028 as `seealso`. With
    pat-000026 and pat-000027 members: the old record merged into a member's is kept (the member's overview
    shows visits under either), the other person's linked record is not, and no later run erases anybody."""
    with sync_env(tmp_path, profile="group-export-only", patients=70) as fresh:
        members = [p for p in sorted(i for i, _ in fresh.server("Patient"))[:27] if p != "pat-000025"]
        fresh.put(group_of("dental-patients", members))
        fresh.set_export_group("dental-patients")
        check_connection(fresh.ctx, fresh.connection_id)
        fresh.run_all(SYNCED)
        held = {i for i, _ in fresh.snapshot("Patient")}
        assert {"pat-000025", "pat-000026", "pat-000027"} <= held and "pat-000028" not in held
        again = fresh.run_all(SYNCED)
        assert not any("removed" in note for note in again["Patient"].notes), again["Patient"].notes
        assert {i for i, _ in fresh.snapshot("Patient")} == held


def test_a_group_named_later_keeps_to_it_without_first_reading_the_others_whole(tmp_path: Path) -> None:
    """A connection that held everyone, then given its clinic's Group: the non-members go at the Patient run,
    and no stream reads their whole records first (a request each; hours for a hospital's worth)."""
    with sync_env(tmp_path, profile="system-export-only", patients=70) as fresh:
        check_connection(fresh.ctx, fresh.connection_id)
        fresh.run_all(SYNCED)
        assert len(fresh.snapshot("Patient")) == 70
        members = grouped(fresh)
        check_connection(fresh.ctx, fresh.connection_id)
        visits = fresh.run_all(("Encounter",))["Encounter"]  # before the Patient run that erases the others
        assert "25 patient(s) new to the Group's population read whole" in visits.notes
        left = fresh.run_all(("Patient",))["Patient"]
        assert any(n.startswith("45 patient(s) who left Group/dental-patients removed") for n in left.notes)
        fresh.run_all(SYNCED)
        in_step_with_the_group(fresh, members)


def test_a_system_export_is_not_kept_to_a_group_that_lists_nobody_or_members_it_cannot_read(tmp_path: Path) -> None:
    """It would keep nobody, or miss members it cannot read: the check says so, and the sync stops with a clear
    error before the EHR does any work, nothing stored."""
    with sync_env(tmp_path, profile="system-export-only", patients=70) as fresh:
        grouped(fresh)
        check_connection(fresh.ctx, fresh.connection_id)
        fresh.put(group_of("dental-patients", []))
        checked = check_connection(fresh.ctx, fresh.connection_id)  # the check says so first
        assert not checked["ok"] and ("export Group/dental-patients lists no patients: a system-level export cannot "
                                      "be kept to it") in checked["errors"]
        with pytest.raises(PermanentEhrError, match="export Group/dental-patients lists no members: a system-level "
                                                   "export cannot be kept to it"):
            fresh.run_all(GROUP_EXPORTED)
        assert all(not fresh.snapshot(t) for t in GROUP_EXPORTED)
        unreadable = group_of("dental-patients", ["pat-000001"])
        unreadable["member"].append({"entity": {"identifier": {"system": "urn:mrn", "value": "88"}}})  # type: ignore[attr-defined]
        fresh.put(unreadable)
        checked = check_connection(fresh.ctx, fresh.connection_id)
        assert checked["sync"]["export_group"]["unresolved"] == 1
        assert ("export Group/dental-patients names 1 member(s) by no Patient reference fhir-prm can read: a "
                "system-level export cannot be kept to it") in checked["errors"]
