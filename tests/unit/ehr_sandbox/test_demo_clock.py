"""Where `ehr-sandbox up` starts the demo's clock: the data set's "now" in a fresh database, else just after the
last moment an earlier demo recorded there (an audit record, a finished job), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ehr_sandbox.demo_clock import STEP, demo_start
from prm import audit
from prm.config import Settings
from prm.db import Database
from prm.models import Job

DATASET_NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_a_fresh_database_starts_at_the_data_set_s_now(database: Database, settings: Settings) -> None:
    assert demo_start(settings.database_url, DATASET_NOW) == DATASET_NOW


def test_a_used_database_goes_on_from_where_its_clock_had_got_to(database: Database, settings: Settings) -> None:
    """Two hours of an earlier demo: its last sync page audited at 13:10, its last job finished at 14:02."""
    with database.session() as session:
        audit.record(session, lambda: DATASET_NOW + timedelta(minutes=70), audit.Actor("system", "sync"), "sync.page",
                     count=3)
        session.add(Job(kind="sync.stream", subject_id=1, due_at=DATASET_NOW + timedelta(hours=2, minutes=5),
                        status="done", finished_at=DATASET_NOW + timedelta(hours=2, minutes=2)))
        session.add(Job(kind="sync.stream", subject_id=1, due_at=DATASET_NOW + timedelta(hours=2, minutes=10)))
    assert demo_start(settings.database_url, DATASET_NOW) == DATASET_NOW + timedelta(hours=2, minutes=2) + STEP


def test_records_older_than_the_data_set_s_now_start_it_there(database: Database, settings: Settings) -> None:
    with database.session() as session:
        audit.record(session, lambda: DATASET_NOW - timedelta(days=30), audit.Actor("system", "sync"), "sync.page")
    assert demo_start(settings.database_url, DATASET_NOW) == DATASET_NOW
