"""What the admin pages show: of a connection never a secret, of a write to the EHR never its contents.

The capability profile is written by `prm connection check` (`ok`, `errors`, `warnings`, ...); it may be
empty (never checked), and an item that is an object rather than a string is shown by its `message`.
An outbox row is shown by ids, types, statuses and errors only: the resource it writes holds patient data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prm import outbox
from prm.models import OutboxRow
from prm.snapshot_models import SyncStream

OUTBOX_STATUSES = (*outbox.OPEN_STATUSES, *outbox.SETTLED_STATUSES)
ACTIONABLE = ("dead", "kept")  # what IT may retry or discard (prm.outbox.retry / discard)


@dataclass(frozen=True)
class CapabilitySummary:
    status: str  # not checked | ok | errors
    errors: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def label(self) -> str:
        if self.status == "not checked":
            return "not checked"
        counts = f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        return f"{self.status} · {counts}"


def _messages(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        if isinstance(item, dict):
            out.append(str(item.get("message") or item.get("code") or item))
        else:
            out.append(str(item))
    return tuple(out)


def capability(profile: dict[str, Any] | None) -> CapabilitySummary:
    if not profile:
        return CapabilitySummary("not checked", (), ())
    errors, warnings = _messages(profile.get("errors")), _messages(profile.get("warnings"))
    failing = bool(errors) or profile.get("ok") is False
    return CapabilitySummary("errors" if failing else "ok", errors, warnings)


def lag(caught_up: datetime | None, now: datetime) -> str:
    """How far a stream's picture trails the EHR: the time since a run last read all there was, coarsely."""
    return lag_words(None if caught_up is None else (now - caught_up).total_seconds())


def lag_words(seconds_behind: float | None) -> str:
    """A lag in seconds (None: never caught up) in its largest whole unit; never negative (clocks differ)."""
    if seconds_behind is None:
        return "never synced"
    seconds = max(0, round(seconds_behind))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


INTERVAL_CHOICES_S = (60, 120, 300, 600, 900, 1800, 3600, 6 * 3600, 86400)


def interval_words(seconds: int) -> str:
    """A stream's interval exactly, in its largest whole unit ("5 min", "90 s", "6 h")."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def interval_choices(current: int) -> list[tuple[int, str]]:
    """The page's menu of intervals, with the stream's own among them where the CLI set an unusual one."""
    return [(s, interval_words(s)) for s in sorted({*INTERVAL_CHOICES_S, current})]


@dataclass(frozen=True)
class HealthLine:
    label: str
    ok: bool | None  # None: a figure, neither good nor bad
    text: str


_DISCOVERY_SOURCES = {"well-known": "from .well-known/smart-configuration",
                      "capability-statement": "from the CapabilityStatement's security extension"}


def health_lines(detail: dict[str, Any]) -> tuple[HealthLine, ...]:
    """The periodic health check's report (`connector.health`) in words, a line per probe; a key this version does
    not know (a newer worker wrote it) is shown as it is rather than dropped."""
    lines = []
    for key, value in detail.items():
        if key == "discovery" and isinstance(value, dict):
            text = _DISCOVERY_SOURCES.get(str(value.get("source")), "found") if value.get("ok") else value.get("error")
            lines.append(HealthLine("SMART discovery", bool(value.get("ok")), str(text)))
        elif key == "metadata" and isinstance(value, dict):
            ok = bool(value.get("ok")) and not value.get("error")
            text = value.get("error") or f"FHIR {value.get('fhirVersion')}"
            lines.append(HealthLine("CapabilityStatement", ok, str(text)))
        elif key == "elapsed_ms":
            lines.append(HealthLine("Took", None, f"{value} ms"))
        elif isinstance(value, dict):
            lines.append(HealthLine(key, value.get("ok") if isinstance(value.get("ok"), bool) else None,
                                    ", ".join(f"{k}: {v}" for k, v in value.items() if k != "ok")))
        else:
            lines.append(HealthLine(key, None, str(value)))
    return tuple(lines)


@dataclass(frozen=True)
class SyncSummary:
    """A connection's sync at a glance, for the connection list: are its streams erring, and how far behind is
    the worst of them."""

    streams: int
    failing: int
    quarantined: int
    worst_lag: str
    paused: bool = False  # the connection is disabled: no stream runs, and the lag only grows
    streams_paused: int = 0  # streams IT paused (not counted in `streams`)

    @property
    def status(self) -> str:
        if not self.streams or self.paused:
            return "not-synced"
        return "failing" if self.failing else "ok"

    @property
    def label(self) -> str:
        if not self.streams:
            return "no streams"
        parts = ["paused (connection disabled)"] if self.paused else []
        parts.append(f"{self.failing} of {self.streams} streams failing" if self.failing else f"{self.streams} streams")
        if self.streams_paused:
            parts.append(f"{self.streams_paused} paused")
        if self.quarantined:
            parts.append(f"{self.quarantined} quarantined")
        parts.append(f"lag {self.worst_lag}" if self.worst_lag != "never synced" else "not caught up yet")
        return " · ".join(parts)


def sync_summary(sync_streams: Iterable[SyncStream], now: datetime,
                 open_quarantined: Mapping[tuple[int, str], int], paused: bool = False) -> SyncSummary:
    """Over the enabled streams: how many end in an error, what is still quarantined (`open_quarantined`:
    (connection id, type) -> count, as `prm.streams.open_quarantine_counts`), and the largest lag (a stream
    never caught up makes the whole connection "never synced")."""
    listed = list(sync_streams)
    enabled = [s for s in listed if s.enabled]
    caught_up = [s.caught_up_at for s in enabled]
    oldest = None if not caught_up or None in caught_up else min(c for c in caught_up if c is not None)
    held = sum(open_quarantined.get((s.connection_id, s.resource_type), 0) for s in enabled)
    return SyncSummary(streams=len(enabled), failing=sum(1 for s in enabled if s.last_error), quarantined=held,
                       worst_lag=lag(oldest, now), paused=paused, streams_paused=len(listed) - len(enabled))


def secret_state(sealed: str | None) -> str:
    return "(set)" if sealed else "(not set)"


@dataclass(frozen=True)
class OutboxTotals:
    connection: str
    counts: tuple[tuple[str, int], ...]  # (status, rows) in OUTBOX_STATUSES order, then any other status

    @property
    def total(self) -> int:
        return sum(n for _, n in self.counts)


@dataclass(frozen=True)
class OutboxItem:
    """One row needing attention, without its business identifier or anything of the resource it writes."""

    id: int
    connection: str
    resource_type: str
    written_as: str | None  # "Communication/123" when a fallback type was written
    fallback: bool
    source: str
    status: str
    attempts: int
    last_error: str | None
    degraded_reason: str | None
    duplicates: tuple[str, ...]
    updated_at: datetime | None

    @property
    def actionable(self) -> bool:
        return self.status in ACTIONABLE


def outbox_totals(names: Mapping[int, str], counted: Iterable[tuple[int, str, int]]) -> list[OutboxTotals]:
    """Rows per status for every connection (zeros included), from (connection id, status, rows) counts."""
    by_connection: dict[int, dict[str, int]] = {cid: dict.fromkeys(OUTBOX_STATUSES, 0) for cid in names}
    for connection_id, status, rows in counted:
        by_connection.setdefault(connection_id, dict.fromkeys(OUTBOX_STATUSES, 0))
        by_connection[connection_id][status] = by_connection[connection_id].get(status, 0) + rows
    return sorted((OutboxTotals(names.get(cid, f"connection {cid}"), tuple(counts.items()))
                   for cid, counts in by_connection.items()), key=lambda t: t.connection)


def outbox_item(row: OutboxRow, names: Mapping[int, str]) -> OutboxItem:
    written = row.written_type
    if written and row.fhir_id:
        written = f"{written}/{row.fhir_id}"
    return OutboxItem(
        id=row.id or 0, connection=names.get(row.connection_id, f"connection {row.connection_id}"),
        resource_type=row.resource_type, written_as=written,
        fallback=bool(row.written_type and row.written_type != row.resource_type), source=row.source,
        status=row.status, attempts=row.attempts, last_error=row.last_error, degraded_reason=row.degraded_reason,
        duplicates=tuple(str(d) for d in row.duplicates or ()), updated_at=row.updated_at)


_OUTBOX_NOTICES = {
    "retried": (False, "Row {row} will be written again from the start."),
    "discarded": (False, "Row {row} is discarded: it stays on record and is not written."),
    "unchanged": (True, "Row {row} is no longer dead or kept (someone acted on it already): nothing changed."),
}


def outbox_notice(done: str | None, row_id: int | None) -> tuple[bool, str] | None:
    """(is_error, text) after a retry or discard; from a fixed list, so the URL cannot put words on the page."""
    if done not in _OUTBOX_NOTICES or row_id is None:
        return None
    is_error, text = _OUTBOX_NOTICES[done]
    return is_error, text.format(row=row_id)
