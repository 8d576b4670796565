"""Where a demo's clock starts: at the data set's "now", or, in a database an earlier demo used, where that
demo's clock had got to.

`ehr-sandbox up` runs fhir-prm on the data set's clock (2026-11-20 12:00 UTC) so the synthetic bookings and
visits sit where the data set put them. Started again on the same database, a clock back at 12:00 would find
the jobs it planned last time due hours ahead (no sync, no subscription check until then), its own rows in
its future and every lag at zero. Going on from the latest moment it recorded keeps each time in the past.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import select

from prm.db import Database
from prm.models import AuditRecord, Job

STEP = timedelta(seconds=1)  # after the last recorded moment, not on it


def demo_start(database_url: str, dataset_now: datetime) -> datetime:
    """The later of the data set's "now" and just after the last audit record or finished job in the database
    (the database must exist and be migrated)."""
    database = Database(database_url)
    try:
        with database.session() as session:
            reached = [session.exec(select(func.max(AuditRecord.occurred_at))).one(),
                       session.exec(select(func.max(Job.finished_at))).one()]
    finally:
        database.dispose()
    return max([dataset_now, *[moment + STEP for moment in reached if moment is not None]])
