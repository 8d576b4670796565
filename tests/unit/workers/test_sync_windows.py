"""The pure parts of the windows: where a window is halved, and how an EHR that ignores `_lastUpdated` shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connector.fhir_reader import Page
from prm.errors import PermanentEhrError
from workers.sync_windows import _check_within, _middle, window_params

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)


def page_of_instants(*instants: datetime) -> Page:
    return Page([{"resourceType": "Encounter", "id": f"e{n}",
                  "meta": {"lastUpdated": t.isoformat().replace("+00:00", "Z")}} for n, t in enumerate(instants)],
                None, None)


def test_a_window_is_halved_on_a_whole_second_strictly_inside_it_or_not_at_all() -> None:
    assert _middle(T0, T0 + timedelta(hours=2)) == T0 + timedelta(hours=1)
    assert _middle(T0, T0 + timedelta(seconds=3)) == T0 + timedelta(seconds=1)  # 1.5 s down to a whole second
    low = T0 + timedelta(milliseconds=200)
    assert _middle(low, low + timedelta(milliseconds=1200)) == T0 + timedelta(seconds=1)  # up, to stay inside
    assert _middle(low, low + timedelta(milliseconds=700)) is None  # no whole second inside: walked, not cut
    assert _middle(T0, T0 + timedelta(seconds=1)) is None  # its ends are not inside it


def test_resources_far_outside_the_window_show_an_ehr_that_ignores_last_updated() -> None:
    high = T0 + timedelta(minutes=10)
    _check_within(page_of_instants(T0, T0 + timedelta(minutes=5)), T0, high, 1)
    _check_within(page_of_instants(T0 - timedelta(milliseconds=500)), T0, high, 1)  # compared to the second
    _check_within(page_of_instants(T0 + timedelta(days=300)), T0, None, 1)  # a cursor has no upper end
    with pytest.raises(PermanentEhrError, match="does not filter by _lastUpdated"):
        _check_within(page_of_instants(T0 + timedelta(minutes=5), T0 - timedelta(days=2)), T0, high, 1)
    with pytest.raises(PermanentEhrError, match=r"ge2026-11-20T10:00:00.000Z with Encounter/e0"):
        _check_within(page_of_instants(T0 - timedelta(seconds=2)), T0, None, 1)
    with pytest.raises(PermanentEhrError):
        _check_within(page_of_instants(high + timedelta(seconds=2)), T0, high, 1)


def test_window_params() -> None:
    assert window_params("Encounter", None, 500) == [("_sort", "_lastUpdated"), ("_count", "500")]
    assert window_params("Task", T0, 50, before=T0 + timedelta(seconds=1), sort=False) == [
        ("_count", "50"), ("_lastUpdated", "ge2026-11-20T10:00:00.000Z"),
        ("_lastUpdated", "lt2026-11-20T10:00:01.000Z"),
        ("identifier", "https://fhir-prm.org/fhir/sid/business-key|")]
