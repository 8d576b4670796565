"""A Group-scoped connection's population: the patients whose records the PRM keeps (workers.sync_strategy.
kept_to_group). Type-level searches after the Group's export bring every changed record of the EHR; a page
keeps the rows of patients the snapshot holds, and drops the rest before they are stored.

The population is the Patient records the snapshot holds (the export's members, and later newcomers read whole
by `sync_patients.patient_windows(newcomers_only=True)`) and the records they were merged into. A row of a
newcomer that a type-level page meets before its Patient record is held is dropped too: the newcomer's whole
record is read once it joins, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlmodel import Session

from prm import snapshots

Row = dict[str, Any]


def population_keeps(session: Session, connection_id: int, resource_type: str,
                     rows: list[Row]) -> Callable[[Row], bool]:
    """Whether a mapped row of this page belongs to the population: a Patient row by its own id, the others by
    their patient's (a row with no patient belongs to nobody's record here)."""
    key = "fhir_id" if resource_type == "Patient" else "patient_id"
    asked = sorted({str(row[key]) for row in rows if row.get(key)})
    held = set(snapshots.stamps_of(session, connection_id, "Patient", asked)) if asked else set()
    if resource_type == "Patient":
        held |= snapshots.merge_survivors(session, connection_id)
    return lambda row: row.get(key) in held
