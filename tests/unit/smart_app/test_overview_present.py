"""What the sidebar says of a patient's visits and of how fresh fhir-prm's copy is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from prm.patient_overview import Occasion
from smart_app.overview_present import counts_text, freshness, when_text

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_an_occasion_is_said_in_local_time_with_an_unusual_status() -> None:
    at = datetime(2026, 11, 24, 10, 15, tzinfo=ZoneInfo("America/New_York"))
    assert when_text(Occasion("a", at, "Hudson Skin & Aesthetics – Midtown", "booked", "Chemical peel")) == \
        "Tue 24 Nov 2026, 10:15"
    assert when_text(Occasion("b", at, None, "noshow")) == "Tue 24 Nov 2026, 10:15 (noshow)"


def test_a_copy_older_than_an_hour_is_said_to_be_stale() -> None:
    fresh = freshness(NOW - timedelta(minutes=4), NOW)
    assert (fresh.text, fresh.stale) == ("From fhir-prm's copy of the EHR, synced 4 min ago.", False)
    old = freshness(NOW - timedelta(hours=3), NOW)
    assert old.stale and old.text.startswith("From fhir-prm's copy of the EHR, synced 3 h ago. It may be out of date")
    loading = freshness(None, NOW)
    assert loading.stale and "first sync is still under way" in loading.text


def test_counts_are_said_in_words() -> None:
    assert counts_text(1, 0) == "1 visit · 0 missed bookings"
    assert counts_text(4, 1) == "4 visits · 1 missed booking"
