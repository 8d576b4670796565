"""The injectable clock: frozen, running from an anchor, and the same across processes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from prm.clock import clock_from_setting, parse_instant, running_from, system_clock
from prm.errors import ConfigError


def test_offsets_are_normalised_to_utc() -> None:
    assert parse_instant("2026-11-20T17:30:00+05:30") == datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_running_clock_starts_at_the_instant_and_moves() -> None:
    start = datetime(2026, 11, 20, 12, tzinfo=UTC)
    clock = clock_from_setting(running_from(start))
    first = clock()
    assert abs((first - start).total_seconds()) < 1
    time.sleep(0.05)
    assert clock() > first


def test_two_processes_given_the_same_value_agree() -> None:
    value = f"2026-11-20T12:00:00Z@{time.time() - 3600:.3f}"
    a, b = clock_from_setting(value), clock_from_setting(value)
    assert abs((a() - b()).total_seconds()) < 0.01
    assert abs(a() - datetime(2026, 11, 20, 13, tzinfo=UTC)) < timedelta(seconds=1)


def test_unset_is_the_system_clock() -> None:
    assert clock_from_setting(None) is system_clock
    assert system_clock().tzinfo is UTC


def test_bad_anchor_is_rejected() -> None:
    with pytest.raises(ConfigError, match="anchor"):
        clock_from_setting("2026-11-20T12:00:00Z@noon")
