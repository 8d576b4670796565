"""A Group-scoped connection's population: the patients whose records the PRM keeps (workers.sync_strategy.
kept_to_group). Type-level searches bring every changed record of the EHR; a page keeps the rows of patients
the snapshot holds, and drops the rest before they are stored. A system-level export (an EHR with no
Group-level one) holds every patient's records: its pages keep the Group's members' (`keep_members`).

The population is the Patient records the snapshot holds (the export's members, and later newcomers read whole
by `sync_patients.read_newcomers`) and the records they were merged into. A row of a newcomer that a
type-level page meets before its Patient record is held is dropped too: the newcomer's whole record is read
once it joins, so nothing is lost. A resource that failed the edge check is kept for IT's quarantine only where
the patient it names is in the population, or where it names none that can be read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlmodel import Session

from connector.fhir_reader import GroupRoster
from fhir_mappings.common import patients_named
from prm import snapshots
from prm.models import Connection
from workers.ehr_access import EhrAccess
from workers.page_prep import PreparedPage
from workers.sync_run import StreamRun

Row = dict[str, Any]


def keep_to_population(session: Session, connection_id: int, resource_type: str, page: PreparedPage) -> None:
    """Drop from the page the rows, and the refused resources, of patients outside the population.

    A row the snapshot holds whose new version names nobody in it (a visit moved to another patient's record,
    a group session every member left) leaves the snapshot with this page: kept, it would go on showing what
    the EHR no longer says, as nothing reads it again. A refused new version of a held row stays for IT's
    quarantine, whoever it names."""
    keeps = population_keeps(session, connection_id, resource_type, page.rows)
    ids = {str(row["fhir_id"]) for row in page.rows if row.get("fhir_id")}
    ids |= {payload["id"] for payload, _ in page.bad if isinstance(payload.get("id"), str)}
    stored = snapshots.stamps_of(session, connection_id, resource_type, sorted(ids)) if ids else {}
    leaving = [row["fhir_id"] for row in page.rows
               if not keeps(row) and row.get("fhir_id") in stored and _not_older(row, stored[row["fhir_id"]])]
    page.left += snapshots.remove(session, connection_id, resource_type, leaving)
    page.rows = [row for row in page.rows if keeps(row)]  # the cursor still moves past the rest
    claims = [(payload, error, patients_named(resource_type, payload)) for payload, error in page.bad]
    if claims:
        held = population_held(session, connection_id, resource_type, {p for _, _, c in claims for p in c})
        page.bad = [(payload, error) for payload, error, claimed in claims
                    if not claimed or not held.isdisjoint(claimed) or payload.get("id") in stored]


def _not_older(row: Row, stored: datetime | None) -> bool:
    return stored is None or row.get("last_updated") is None or row["last_updated"] >= stored


def keep_members(resource_type: str, page: PreparedPage, members: frozenset[str]) -> None:
    """Keep, of a system-level export's page, the rows (mapped or encoded) and refused resources of the Group's
    members only: the export holds every patient's, and a Group's connection stores its members'. A refused
    resource naming no readable patient stays, for IT's quarantine."""
    if page.encoded is not None:
        names = encoded_patients(resource_type, page.encoded.columns)
        page.encoded = replace(page.encoded, rows=[row for row in page.encoded.rows
                                                   if not members.isdisjoint(names(row))])
    page.rows = [row for row in page.rows if not members.isdisjoint(row_patients(resource_type, row))]
    page.bad = [(payload, error) for payload, error in page.bad
                if not (claimed := patients_named(resource_type, payload)) or not members.isdisjoint(claimed)]


def population_keeps(session: Session, connection_id: int, resource_type: str,
                     rows: list[Row]) -> Callable[[Row], bool]:
    """Whether a mapped row of this page belongs to the population: a Patient by its own id, a booking by any
    patient it names, the others by their patient's (a row with no patient is nobody's record here)."""
    held = population_held(session, connection_id, resource_type,
                           {patient for row in rows for patient in row_patients(resource_type, row)})
    return lambda row: not held.isdisjoint(row_patients(resource_type, row))


def population_held(session: Session, connection_id: int, resource_type: str, patients: set[str]) -> set[str]:
    """Those of these patients the population holds (their Patient record; for Patient pages also the records
    the held ones were merged into)."""
    held = set(snapshots.stamps_of(session, connection_id, "Patient", sorted(patients))) if patients else set()
    if resource_type == "Patient":
        held |= snapshots.merge_survivors(session, connection_id)
    return held


def row_patients(resource_type: str, row: Row) -> list[str]:
    """The patients a mapped row is kept for: a Patient by its own id and the record it was merged into (an old
    record merged into a member's is the member's: their overview shows visits under either), a booking by
    every patient it names (a group session is a member's even where its first patient is not), the others by
    their patient."""
    if resource_type == "Patient":
        return [p for p in (row.get("fhir_id"), row.get("replaced_by")) if p]
    if resource_type != "Appointment":
        return [row["patient_id"]] if row.get("patient_id") else []
    return list(dict.fromkeys(p for p in (row.get("patient_id"), *row.get("other_patients", ()),
                                         *row.get("declined_patients", ())) if p))


def encoded_patients(resource_type: str, columns: tuple[str, ...]) -> Callable[[tuple[Any, ...]], list[str]]:
    """`row_patients` of rows encoded for the database driver (prm.snapshot_rows): a shared booking's other
    patients are JSON text there, read only for the few rows marked shared."""
    if resource_type == "Patient":
        at_id, at_survivor = columns.index("fhir_id"), columns.index("replaced_by")
        return lambda row: [p for p in (row[at_id], row[at_survivor]) if p]
    at = columns.index("patient_id")
    if resource_type != "Appointment":
        return lambda row: [row[at]] if row[at] else []
    at_shared, at_lists = columns.index("shared"), (columns.index("other_patients"), columns.index("declined_patients"))

    def named(row: tuple[Any, ...]) -> list[str]:
        others = [p for i in at_lists for p in json.loads(row[i])] if row[at_shared] else []
        return list(dict.fromkeys(patient for patient in (row[at], *others) if patient))
    return named


def group_members(access: EhrAccess, connection: Connection, run: StreamRun) -> set[str]:
    """The export Group's active Patient members (`group_roster`)."""
    return set(group_roster(access, connection, run).patients)


def group_roster(access: EhrAccess, connection: Connection, run: StreamRun) -> GroupRoster:
    """The export Group's active members, read once a run: the Patient stream's population and its leavers
    (workers.sync_leavers) both start from them, and a clinic's Group can list thousands."""
    if run.group_roster is None:
        run.group_roster = access.reader.group_roster(connection.export_group or "")
    return run.group_roster


def population_of(members: set[str], merged_into: dict[str, str]) -> set[str]:
    """The members and the records merged with them either way, link after link: the record a member was merged
    into (a survivor merged again too), and a held record merged into a member (the EHR may list only the
    survivor; the patient's overview shows visits under either record)."""
    population, frontier = set(members), set(members)
    while frontier:
        frontier = ({merged_into[p] for p in frontier if p in merged_into}
                    | {old for old, survivor in merged_into.items() if survivor in frontier}) - population
        population |= frontier
    return population
