"""What one run of a stream did (the figures `prm sync run`, the jobs and the benchmark report), and the two
conversions between the EHR's instants and ours that every part of a run uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from connector.fhir_reader import GroupRoster

Progress = Callable[[str, int], None]
# A cursor or mark taken from the EHR's clock is set this far back: a change the EHR committed with an earlier
# stamp after we read (long transactions, clocks of several nodes) is read again next time, never lost.
OVERLAP = timedelta(minutes=5)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # before any lastUpdated: where a first load's windows start
DISABLED = "connection or stream disabled"  # the note of a run that did not run: paused, or switched off


@dataclass
class StreamRun:
    resource_type: str
    pages: int = 0
    stored: int = 0
    deleted: int = 0
    quarantined: int = 0
    caught_up: bool = False
    busy: bool = False
    server_started: datetime | None = None  # the EHR's clock when this run first read (search time or export)
    notes: list[str] = field(default_factory=list)
    companions: list[StreamRun] = field(default_factory=list)  # streams whose first load shared this export
    group_roster: GroupRoster | None = None  # the export Group's members, once read this run (sync_population)
    lists_failed: bool = False  # a search naming several patients failed this run: one a search (sync_patients)


def count_page(run: StreamRun, stored: int, deleted: int, quarantined: int, progress: Progress | None) -> None:
    run.pages += 1
    run.stored += stored
    run.deleted += deleted
    run.quarantined += quarantined
    if progress:
        progress(run.resource_type, stored + deleted + quarantined)


def iso(value: datetime) -> str:
    """A search parameter's instant: UTC, milliseconds, `Z`."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def server_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
