"""The one clock of the product, injectable through PRM_NOW so app, workers and scheduler agree.

PRM_NOW forms:
- unset: the real UTC time;
- ``2026-11-20T12:00:00Z``: frozen at that instant (unit tests, screenshots);
- ``2026-11-20T12:00:00Z@1763640000``: it was that instant at the given Unix time, and time runs
  from there. Every process given the same value agrees on "now", which a frozen clock cannot do
  for periodic work and a per-process offset cannot do across processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from prm.errors import ConfigError

Clock = Callable[[], datetime]


def parse_instant(text: str) -> datetime:
    """Parse an ISO 8601 instant that must carry a zone; return it in UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"not an ISO 8601 instant: {text!r}") from exc
    if value.tzinfo is None:
        raise ConfigError(f"instant without a time zone: {text!r} (add Z or an offset)")
    return value.astimezone(UTC)


def system_clock() -> datetime:
    return datetime.now(UTC)


def clock_from_setting(value: str | None) -> Clock:
    """Build the clock PRM_NOW describes (see the module docstring)."""
    if not value:
        return system_clock
    instant_text, sep, anchor_text = value.partition("@")
    instant = parse_instant(instant_text)
    if not sep:
        return lambda: instant
    try:
        anchor = float(anchor_text)
    except ValueError as exc:
        raise ConfigError(f"PRM_NOW anchor is not a Unix time: {anchor_text!r}") from exc
    offset = instant.timestamp() - anchor
    return lambda: datetime.fromtimestamp(time.time() + offset, UTC)


def running_from(instant: datetime) -> str:
    """The PRM_NOW value for a clock that starts at `instant` now and runs."""
    return f"{instant.astimezone(UTC).isoformat().replace('+00:00', 'Z')}@{time.time():.3f}"
