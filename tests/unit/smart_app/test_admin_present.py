"""How far behind a stream is, as the connection page says it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from smart_app.admin_present import lag

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_lag_is_said_in_the_largest_whole_unit() -> None:
    assert lag(None, NOW) == "never synced"
    assert [lag(NOW - timedelta(seconds=s), NOW) for s in (0, 59, 60, 3599, 3600, 86400 * 3 + 5)] == [
        "0 s", "59 s", "1 min", "59 min", "1 h", "3 d"]
    assert lag(NOW + timedelta(seconds=2), NOW) == "0 s"  # a worker's clock a little ahead: never negative
