"""Which rows of a page a Group-scoped connection keeps: its held patients' (and for Patient, the records they
were merged into), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from fhir_mappings.common import patients_named
from fhir_mappings.patient import patient_record_from_patient
from prm import connections, snapshots
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.snapshot_models import PatientRecordCreate
from workers.page_prep import PreparedPage, Target, prepare_lines
from workers.sync_population import keep_members, keep_to_population, population_keeps

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"


def test_a_page_keeps_the_rows_of_held_patients_and_of_records_they_were_merged_into(database: Database,
                                                                                     settings: Settings) -> None:
    with (DATA / "Patient.ndjson").open() as lines:
        patients = {p["id"]: p for p in map(json.loads, lines)}
    held = [patients["pat-000001"], {**patients["pat-000002"], "link": [
        {"type": "replaced-by", "other": {"reference": "Patient/pat-000099"}}]}]
    with database.session() as session:
        cid = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c")).id
        snapshots.upsert_page(session, cid or 0, "Patient", [patient_record_from_patient(p) for p in held])
        snapshots.mark_deleted(session, cid or 0, "Patient", ["pat-000001"])  # deleted: no longer held
        snapshots.upsert_page(session, cid or 0, "Patient", [patient_record_from_patient(patients["pat-000003"])])
    visits = [{"fhir_id": f"enc-{p}", "patient_id": p} for p in ("pat-000001", "pat-000003", "pat-000004")]
    visits.append({"fhir_id": "enc-nobody", "patient_id": None})
    with database.session() as session:
        keeps = population_keeps(session, cid or 0, "Encounter", visits)
        assert [v["fhir_id"] for v in visits if keeps(v)] == ["enc-pat-000003"]
        rows = [{"fhir_id": p} for p in ("pat-000002", "pat-000099", "pat-000004")]
        keeps = population_keeps(session, cid or 0, "Patient", rows)
        assert [r["fhir_id"] for r in rows if keeps(r)] == ["pat-000002", "pat-000099"]


def holding_the_first_patient(database: Database, settings: Settings) -> tuple[int, PatientRecordCreate]:
    """A connection whose snapshot holds the data set's first patient (pat-000001) alone."""
    with (DATA / "Patient.ndjson").open() as lines:
        held = patient_record_from_patient(json.loads(next(lines)))
    with database.session() as session:
        cid = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c")).id
        snapshots.upsert_page(session, cid or 0, "Patient", [held])
    return cid or 0, held


def test_a_refused_resource_is_kept_for_it_only_where_its_patient_is_held_or_cannot_be_told(
        database: Database, settings: Settings) -> None:
    """An outsider's malformed visit is no more the PRM's to keep than a valid one; one that names no readable
    patient is kept, so IT still sees what the EHR sent wrong."""
    cid, held = holding_the_first_patient(database, settings)
    def visit(fhir_id: str, subject: object) -> dict:  # type: ignore[type-arg]
        return {"resourceType": "Encounter", "id": fhir_id, "status": "nonsense", "subject": subject}

    page = PreparedPage(rows=[{"fhir_id": "e1", "patient_id": held.fhir_id}, {"fhir_id": "e2", "patient_id": "x"}],
                        bad=[(visit("b1", {"reference": f"Patient/{held.fhir_id}"}), "status"),
                             (visit("b2", {"reference": "Patient/outsider"}), "status"),
                             (visit("b3", "Patient/not-a-reference-object"), "subject")])
    with database.session() as session:
        keep_to_population(session, cid, "Encounter", page)
    assert [row["fhir_id"] for row in page.rows] == ["e1"]
    assert [payload["id"] for payload, _ in page.bad] == ["b1", "b3"]
    appointment = {"participant": [{"actor": {"reference": "Practitioner/p"}}, {"actor": {"reference": "Patient/q"}}]}
    assert (patients_named("Appointment", appointment), patients_named("RelatedPerson", {"patient": 7}),
            patients_named("Patient", {"id": "p1"})) == (["q"], [], ["p1"])


def test_a_system_exports_page_keeps_the_group_members_rows_encoded_for_either_database() -> None:
    with (DATA / "Encounter.ndjson").open() as lines:
        lines_read = [(n, line.encode()) for n, line in enumerate(lines, 1)][:40]
    members = frozenset({"pat-000002"})
    theirs = {json.loads(raw)["id"] for _, raw in lines_read if json.loads(raw)["subject"]["reference"] ==
              "Patient/pat-000002"}
    assert theirs and len(theirs) < len(lines_read)
    for dialect in ("sqlite", "postgresql"):
        page = prepare_lines("Encounter", lines_read, Target(dialect, 1))
        page.bad = [({"resourceType": "Encounter", "subject": {"reference": f"Patient/{p}"}}, "x")
                    for p in ("pat-000002", "pat-000003")] + [({"resourceType": "Encounter"}, "no subject")]
        keep_members("Encounter", page, members)
        assert page.encoded is not None
        at = page.encoded.columns.index("fhir_id")
        assert {row[at] for row in page.encoded.rows} == theirs, dialect
        assert [error for _, error in page.bad] == ["x", "no subject"], "a member's, and one naming nobody"
    mapped = prepare_lines("Encounter", lines_read)
    keep_members("Encounter", mapped, members)
    assert {row["fhir_id"] for row in mapped.rows} == theirs


def test_a_refused_resource_names_its_patient_by_any_literal_reference() -> None:
    for reference in ("Patient/pat-000002", "https://ehr.example/fhir/Patient/pat-000002",
                      "Patient/pat-000002/_history/3"):
        assert patients_named("Encounter", {"subject": {"reference": reference}}) == ["pat-000002"], reference
    assert patients_named("Encounter", {"subject": {"reference": 7}}) == []
    assert patients_named("Appointment", {"participant": [
        {"actor": {"reference": "Practitioner/x"}}, {"actor": {"reference": "Patient/p-9"}},
        {"actor": {"reference": "Patient/p-8"}, "status": "declined"}, {"actor": {"reference": "Patient/p-9"}}]}) == [
        "p-9", "p-8"], "every patient a group session names, once"


def test_an_exports_patient_page_keeps_the_members_by_their_own_id_and_those_merged_into_them() -> None:
    """And the records merged into a member's: the data set merges pat-000025 into pat-000026 (replaced-by),
    so with pat-000026 a member pat-000025 stays too (the member's overview shows visits under either);
    pat-000028, whose `seealso` names member pat-000027, is another person and goes."""
    with (DATA / "Patient.ndjson").open() as lines:
        lines_read = [(n, line.encode()) for n, line in enumerate(lines, 1)][:30]
    members = frozenset({"pat-000001", "pat-000004", "pat-000026", "pat-000027"})
    kept = ["pat-000001", "pat-000004", "pat-000025", "pat-000026", "pat-000027"]
    for dialect in ("sqlite", "postgresql"):
        page = prepare_lines("Patient", lines_read, Target(dialect, 1))
        keep_members("Patient", page, members)
        assert page.encoded is not None
        at = page.encoded.columns.index("fhir_id")
        assert sorted(row[at] for row in page.encoded.rows) == kept, dialect
    mapped = prepare_lines("Patient", lines_read)
    keep_members("Patient", mapped, members)
    assert sorted(row["fhir_id"] for row in mapped.rows) == kept


def test_a_group_session_is_kept_for_any_member_booked_on_it_mapped_or_encoded(database: Database,
                                                                               settings: Settings) -> None:
    """A data set booking of an outsider made a group session with a member: kept, whoever is named first;
    the outsider's own booking is not. The same for a Group-scoped search page and a system export's page."""
    with (DATA / "Appointment.ndjson").open() as lines:
        appointments = [json.loads(line) for line in lines]
    outsider = next(a for a in appointments if a["participant"][0]["actor"]["reference"] == "Patient/pat-000002")
    member = {"actor": {"reference": "Patient/pat-000001"}, "status": "accepted"}
    group = [{**outsider, "id": "appt-group-1", "participant": [*outsider["participant"], member]},
             {**outsider, "id": "appt-group-2", "participant": [member, *outsider["participant"]]}]
    lines_read = [(n, json.dumps(a).encode()) for n, a in enumerate([outsider, *group], 1)]
    for dialect in ("sqlite", "postgresql"):
        page = prepare_lines("Appointment", lines_read, Target(dialect, 1))
        keep_members("Appointment", page, frozenset({"pat-000001"}))
        assert page.encoded is not None
        at = page.encoded.columns.index("fhir_id")
        assert sorted(row[at] for row in page.encoded.rows) == ["appt-group-1", "appt-group-2"], dialect
    cid, _ = holding_the_first_patient(database, settings)
    mapped = prepare_lines("Appointment", lines_read)
    refused = {**group[1], "id": "bad-group", "status": "nonsense"}
    mapped.bad = [(refused, "status"), ({**outsider, "id": "bad-outsider", "status": "nonsense"}, "status")]
    with database.session() as session:
        keep_to_population(session, cid, "Appointment", mapped)
    assert [row["fhir_id"] for row in mapped.rows] == ["appt-group-1", "appt-group-2"]
    assert [payload["id"] for payload, _ in mapped.bad] == ["bad-group"], "a member is booked on it, named second"


def test_a_held_row_whose_new_version_names_nobody_in_the_population_leaves_with_its_page(
        database: Database, settings: Settings) -> None:
    """The EHR moves a member's visit, filed under the wrong patient, to a non-member's record, and takes the
    patient off another (Encounter.subject is optional): both leave the snapshot with the page (kept, the
    member's sidebar would go on showing visits not theirs); a refused new version of a third held visit stays
    for IT's quarantine, though it names a non-member; a new visit of the non-member's is dropped."""
    cid, held = holding_the_first_patient(database, settings)
    with (DATA / "Encounter.ndjson").open() as lines:
        encounters = [json.loads(line) for line in lines]
    theirs = [e for e in encounters if e["subject"]["reference"] == f"Patient/{held.fhir_id}"][:3]
    outsiders = next(e for e in encounters if e["subject"]["reference"] == "Patient/pat-000002")
    with database.session() as session:
        snapshots.upsert_page(session, cid, "Encounter", prepare_lines("Encounter", [
            (n, json.dumps(e).encode()) for n, e in enumerate(theirs, 1)]).rows)
    later = {"lastUpdated": "2026-11-25T10:00:00Z"}
    moved = {**theirs[0], "meta": later, "subject": outsiders["subject"]}
    nobodys = {key: value for key, value in {**theirs[1], "meta": later}.items() if key != "subject"}
    page = prepare_lines("Encounter", [(n, json.dumps(e).encode()) for n, e in enumerate(
        [moved, nobodys, outsiders], 1)])
    page.bad = [({**theirs[2], "meta": later, "subject": outsiders["subject"], "status": "nonsense"}, "status")]
    with database.session() as session:
        keep_to_population(session, cid, "Encounter", page)
    assert (page.rows, [payload["id"] for payload, _ in page.bad], page.left) == ([], [theirs[2]["id"]], 2)
    with database.session() as session:
        assert snapshots.live_ids(session, cid, "Encounter") == {theirs[2]["id"]}
        assert snapshots.patients_named(session, cid) == {held.fhir_id}, "nobody to erase at the Patient run"
