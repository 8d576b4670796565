"""One person's records in a connection's snapshot: the EHR's merges (`Patient.link` replaced-by) followed both
ways, so whatever is kept under any of them is shown as theirs.

Why: when an EHR merges a duplicate record into another, it moves some of what hangs off it and not always all
(visits, bookings, and the tickets and messages fhir-prm made under the old record). A chart opened on either
record must show the same person's whole picture.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from prm.snapshot_models import PatientRecord

MAX_MERGE_HOPS = 5  # merges followed each way: more is a loop or a data error


def live_record(session: Session, connection_id: int, fhir_id: str) -> PatientRecord | None:
    return session.exec(select(PatientRecord).where(
        col(PatientRecord.connection_id) == connection_id, col(PatientRecord.fhir_id) == fhir_id,
        col(PatientRecord.deleted).is_(False))).first()


def same_person(session: Session, connection_id: int, fhir_id: str) -> list[str]:
    """The record, those it was merged into, and those merged into any of them, however many merges back (p3
    into p2, then p2 into p1: p1's chart holds all three); the record first."""
    ids = [fhir_id]
    current = live_record(session, connection_id, fhir_id)
    while current is not None and current.replaced_by and current.replaced_by not in ids and \
            len(ids) <= MAX_MERGE_HOPS:
        ids.append(current.replaced_by)
        current = live_record(session, connection_id, current.replaced_by)
    newest = list(ids)
    for _ in range(MAX_MERGE_HOPS):  # inwards: those merged into these, then those merged into them
        newest = [merged for merged in session.exec(select(PatientRecord.fhir_id).where(
            col(PatientRecord.connection_id) == connection_id, col(PatientRecord.replaced_by).in_(newest),
            col(PatientRecord.deleted).is_(False))) if merged not in ids]
        if not newest:
            break
        ids += newest
    return ids
