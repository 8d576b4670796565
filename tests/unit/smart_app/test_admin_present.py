"""What the admin pages say of a connection: how far behind a stream is, the health check, the sync at a glance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prm.snapshot_models import SyncStream
from smart_app.admin_present import health_lines, lag, sync_summary

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_lag_is_said_in_the_largest_whole_unit() -> None:
    assert lag(None, NOW) == "never synced"
    assert [lag(NOW - timedelta(seconds=s), NOW) for s in (0, 59, 60, 3599, 3600, 86400 * 3 + 5)] == [
        "0 s", "59 s", "1 min", "59 min", "1 h", "3 d"]
    assert lag(NOW + timedelta(seconds=2), NOW) == "0 s"  # a worker's clock a little ahead: never negative


def test_health_report_is_said_in_words_not_as_stored() -> None:
    """`connector.health` stores probe objects; the page says what each found, and keeps a key it does not know."""
    lines = health_lines({"discovery": {"ok": True, "source": "well-known"},
                          "metadata": {"ok": True, "fhirVersion": "4.0.1"}, "elapsed_ms": 124, "probe": "new"})
    assert [(x.label, x.ok, x.text) for x in lines] == [
        ("SMART discovery", True, "from .well-known/smart-configuration"),
        ("CapabilityStatement", True, "FHIR 4.0.1"), ("Took", None, "124 ms"), ("probe", None, "new")]
    failing = health_lines({"discovery": {"ok": False, "error": "HTTP 503 from https://ehr/.well-known"},
                            "metadata": {"ok": True, "fhirVersion": "5.0.0", "error": "FHIR 5.0.0 is not R4"}})
    assert [(x.ok, x.text) for x in failing] == [(False, "HTTP 503 from https://ehr/.well-known"),
                                                 (False, "FHIR 5.0.0 is not R4")]


def _stream(resource_type: str, caught_up: datetime | None, error: str | None = None, quarantined: int = 0,
            enabled: bool = True) -> SyncStream:
    return SyncStream(connection_id=1, resource_type=resource_type, caught_up_at=caught_up, last_error=error,
                      quarantined=quarantined, enabled=enabled)


def test_sync_summary_names_failing_streams_quarantine_and_the_worst_lag() -> None:
    """Quarantine as still open (resolved ones are the EHR's mended resources), not the stream's running total."""
    fresh = _stream("Patient", NOW - timedelta(seconds=40))
    assert sync_summary([], NOW, {}).label == "no streams" and sync_summary([], NOW, {}).status == "not-synced"
    calm = sync_summary([fresh, _stream("Encounter", NOW - timedelta(minutes=7))], NOW, {(1, "Encounter"): 0})
    assert (calm.status, calm.label) == ("ok", "2 streams · lag 7 min")
    troubled = sync_summary([fresh, _stream("Encounter", NOW - timedelta(hours=3), "HTTP 503", quarantined=5),
                             _stream("Task", None, enabled=False)], NOW,
                            {(1, "Encounter"): 2, (1, "Task"): 1, (2, "Patient"): 4})  # Task is off; 2 is another
    assert (troubled.status, troubled.label) == ("failing", "1 of 2 streams failing · 1 paused · 2 quarantined · "
                                                            "lag 3 h")
    paused = sync_summary([fresh, _stream("Encounter", NOW - timedelta(hours=3), "HTTP 503")], NOW, {}, paused=True)
    assert (paused.status, paused.label) == ("not-synced", "paused (connection disabled) · 1 of 2 streams failing · "
                                                           "lag 3 h")
    first_load = sync_summary([fresh, _stream("Encounter", None)], NOW, {})
    assert first_load.label == "2 streams · not caught up yet"
