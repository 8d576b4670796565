"""`prm sync check`'s judgement: the worst finding sets the level, every finding is named worst first, nothing
disabled is judged, and no stored error reaches the line (it may hold the EHR's words)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prm.models import Connection
from prm.snapshot_models import SyncStream
from smart_app.sync_verdict import CRITICAL, OK, WARNING, ConnectionState, Limits, verdict

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
LIMITS = Limits(warn_lag_s=1800, crit_lag_s=7200)


def stream(resource_type: str, behind_s: float | None = 60, **fields: object) -> SyncStream:
    caught_up = None if behind_s is None else NOW - timedelta(seconds=behind_s)
    return SyncStream(connection_id=1, resource_type=resource_type, caught_up_at=caught_up, **fields)


def state(*streams: SyncStream, name: str = "north", quarantined: int = 0, dead_writes: int = 0,
          **connection: object) -> ConnectionState:
    row = Connection(id=1, name=name, iss=f"https://{name}.example/fhir", client_id="prm", **connection)
    return ConnectionState(connection=row, streams=list(streams), quarantined=quarantined, dead_writes=dead_writes)


def test_all_in_step_is_ok_with_the_worst_lag_and_performance_data() -> None:
    result = verdict([state(stream("Patient", 60), stream("Encounter", 240), stream("Task", None))], NOW, LIMITS)
    assert result.level == OK
    assert result.line == ("OK: 1 connection(s), 3 streams, worst lag 4 min, 1 on their first load | "
                           "worst_lag=240s failing_streams=0 quarantined=0 dead_writes=0")


@pytest.mark.parametrize(("behind_s", "interval_s", "level", "said"), [
    (2100, 300, OK, None), (2101, 300, WARNING, "WARNING: north/Encounter 35 min behind"),
    (7501, 300, CRITICAL, "CRITICAL: north/Encounter 2 h behind"),
    (6 * 3600 + 60, 6 * 3600, OK, None), (6 * 3600 + 1801, 6 * 3600, WARNING, "WARNING: north/Encounter 6 h behind")])
def test_a_lag_past_the_interval_and_the_limits(behind_s: float, interval_s: int, level: int,
                                                said: str | None) -> None:
    result = verdict([state(stream("Patient"), stream("Encounter", behind_s, interval_s=interval_s))], NOW, LIMITS)
    assert result.level == level
    assert said is None or result.line.startswith(said), result.line


def test_every_finding_is_named_worst_first_and_no_error_text_is_quoted() -> None:
    failing = stream("Location", 60, last_error="HTTP 404 from the EHR: Patient Jane Example (MRN 12345) not found")
    result = verdict([state(stream("Encounter", 3 * 3600), failing, quarantined=2, dead_writes=1,
                            health_status="failing")], NOW, LIMITS)
    assert result.level == CRITICAL
    what = result.line.split(" | ")[0]
    assert what == ("CRITICAL: north: connection check failing; north/Encounter 3 h behind; north/Location failing; "
                    "north: 2 quarantined; north: 1 write-backs dead (see `prm sync status`)")
    assert "Jane" not in result.line and "12345" not in result.line
    assert result.line.endswith("failing_streams=1 quarantined=2 dead_writes=1")


def test_a_token_the_ehr_refuses_is_critical() -> None:
    result = verdict([state(stream("Patient"), needs_it="invalid_client: unknown key")], NOW, LIMITS)
    assert result.level == CRITICAL and "north: the EHR refuses our backend token" in result.line
    assert "unknown key" not in result.line


def test_disabled_connections_and_streams_are_not_judged() -> None:
    paused = state(stream("Encounter", 30 * 86400, last_error="HTTP 503"), name="south", enabled=False)
    quiet = stream("Appointment", 30 * 86400, enabled=False)
    result = verdict([state(stream("Patient"), quiet), paused], NOW, LIMITS)
    assert result.level == OK
    assert result.line.startswith("OK: 1 connection(s), 1 streams, worst lag 1 min, 1 connection(s) disabled |")
    nothing = verdict([paused], NOW, LIMITS)
    assert nothing.level == OK and nothing.line.startswith("OK: no stream to judge (1 connection(s) disabled) |")


def test_limits_must_be_in_order() -> None:
    with pytest.raises(ValueError, match="at most the critical"):
        Limits(warn_lag_s=7200, crit_lag_s=1800)


def test_due_work_no_worker_took_is_named_by_how_long_it_waited() -> None:
    waiting = [("sync.stream", 9, NOW - timedelta(minutes=45)), ("writeback.drain", 1, NOW - timedelta(minutes=11)),
               ("connection.health", 1, NOW - timedelta(seconds=5))]
    result = verdict([state(stream("Patient"))], NOW, LIMITS, waiting)
    assert result.level == CRITICAL
    assert result.line.startswith(
        "CRITICAL: 9 sync.stream job(s) waiting for a worker, the oldest 45 min (are the workers and the scheduler "
        "running?); 1 writeback.drain job(s) waiting for a worker, the oldest 11 min (are the workers and the "
        "scheduler running?) (see `prm sync status`) |"), result.line
    assert verdict([state(stream("Patient"))], NOW, LIMITS, waiting[2:]).level == OK, "seconds: a sweep away"
