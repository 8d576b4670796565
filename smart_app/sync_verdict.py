"""`prm sync check`: one verdict on sync and write-back health, as the check commands of Nagios, Icinga and
Zabbix read it: one line, performance data after `|`, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

Many hospitals watch their systems that way rather than with Prometheus (`/metrics` serves the raw figures).
The judgement is ours, so every such system judges alike: a stream that has not read all there was for
longer than its interval and the limits, a connection whose check fails or whose EHR refuses our token,
streams ending in an error, resources quarantined, write-backs dead. Disabled connections and streams are not
judged.

The line never quotes an error: stored errors may hold the EHR's own words (DESIGN.md invariant 6), and a
monitoring system keeps check output in its logs. It names where to look (`prm sync status`, the admin page).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from prm.models import Connection
from prm.snapshot_models import SyncStream
from smart_app.admin_present import lag_words

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LEVELS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclass(frozen=True)
class Limits:
    """How far past its interval a stream's lag may go before it is a warning, then critical (a stream that runs
    every 5 minutes, the default, warns when 35 minutes behind); and how long due work may wait for a worker
    (the sweeper hands it over within seconds while workers and scheduler run)."""

    warn_lag_s: float = 1800.0
    crit_lag_s: float = 7200.0
    warn_wait_s: float = 600.0
    crit_wait_s: float = 1800.0

    def __post_init__(self) -> None:
        if not 0 < self.warn_lag_s <= self.crit_lag_s:
            raise ValueError("the warning lag must be positive and at most the critical lag")
        if not 0 < self.warn_wait_s <= self.crit_wait_s:
            raise ValueError("the warning wait must be positive and at most the critical wait")


@dataclass(frozen=True)
class ConnectionState:
    """What the check reads of one connection."""

    connection: Connection
    streams: list[SyncStream]
    quarantined: int  # resources quarantined and not resolved
    dead_writes: int  # outbox rows that gave up, for IT to retry or discard


@dataclass(frozen=True)
class Finding:
    level: int
    text: str


@dataclass(frozen=True)
class Verdict:
    level: int
    line: str  # what the check prints: "<LEVEL>: <what> | <performance data>"


def findings(state: ConnectionState, now: datetime, limits: Limits) -> list[Finding]:
    """What is wrong with one enabled connection (nothing for a disabled one: nothing is meant to run)."""
    row = state.connection
    if not row.enabled:
        return []
    found: list[Finding] = []
    if row.needs_it:
        found.append(Finding(CRITICAL, f"{row.name}: the EHR refuses our backend token (IT must mend the client)"))
    if row.health_status == "failing":
        found.append(Finding(CRITICAL, f"{row.name}: connection check failing"))
    for stream in (s for s in state.streams if s.enabled):
        where = f"{row.name}/{stream.resource_type}"
        if stream.caught_up_at is not None:  # judged past its interval: a stream run every 6 h is 5 h behind by design
            behind = (now - stream.caught_up_at).total_seconds()
            overdue = behind - stream.interval_s
            if overdue > limits.warn_lag_s:
                level = CRITICAL if overdue > limits.crit_lag_s else WARNING
                found.append(Finding(level, f"{where} {lag_words(behind)} behind"))
        if stream.last_error:
            found.append(Finding(WARNING, f"{where} failing"))
    if state.quarantined:
        found.append(Finding(WARNING, f"{row.name}: {state.quarantined} quarantined"))
    if state.dead_writes:
        found.append(Finding(WARNING, f"{row.name}: {state.dead_writes} write-backs dead"))
    return found


def waiting_findings(waiting: Iterable[tuple[str, int, datetime]], now: datetime, limits: Limits) -> list[Finding]:
    """Due work no worker took (`prm.jobs.waiting`): stopped workers or scheduler show here first."""
    found = []
    for kind, count, oldest in waiting:
        waited = (now - oldest).total_seconds()
        if waited > limits.warn_wait_s:
            level = CRITICAL if waited > limits.crit_wait_s else WARNING
            found.append(Finding(level, f"{count} {kind} job(s) waiting for a worker, the oldest {lag_words(waited)} "
                                        "(are the workers and the scheduler running?)"))
    return found


def verdict(states: Iterable[ConnectionState], now: datetime, limits: Limits,
            waiting: Iterable[tuple[str, int, datetime]] = ()) -> Verdict:
    """The worst finding decides the level; the line names every finding, worst first."""
    states = list(states)
    found = sorted([*waiting_findings(waiting, now, limits), *(f for s in states for f in findings(s, now, limits))],
                   key=lambda f: -f.level)
    judged = [s for s in states if s.connection.enabled]
    streams = [t for s in judged for t in s.streams if t.enabled]
    lags = [(now - t.caught_up_at).total_seconds() for t in streams if t.caught_up_at is not None]
    worst = max(lags, default=0.0)
    disabled = len(states) - len(judged)
    if found:
        what = "; ".join(f.text for f in found) + " (see `prm sync status`)"
    elif not streams:
        what = "no stream to judge" + (f" ({disabled} connection(s) disabled)" if disabled else "")
    else:
        first_loads = len(streams) - len(lags)
        what = (f"{len(judged)} connection(s), {len(streams)} streams, worst lag {lag_words(worst)}"
                + (f", {first_loads} on their first load" if first_loads else "")
                + (f", {disabled} connection(s) disabled" if disabled else ""))
    level = max((f.level for f in found), default=OK)
    performance = _performance(judged, worst, streams)
    return Verdict(level, f"{LEVELS[level]}: {what} | {performance}")


def _performance(judged: list[ConnectionState], worst: float, streams: list[SyncStream]) -> str:
    """Nagios performance data (`label=value[unit]`). The lag carries no thresholds: each stream is judged
    past its own interval, so no one figure is the limit."""
    return (f"worst_lag={round(worst)}s "
            f"failing_streams={sum(1 for t in streams if t.last_error)} "
            f"quarantined={sum(s.quarantined for s in judged)} "
            f"dead_writes={sum(s.dead_writes for s in judged)}")


def dead_writes_by_connection(counted: Iterable[tuple[int, str, int]]) -> Mapping[int, int]:
    """(connection id, status, rows), as `prm.outbox.counts_by_connection` -> dead rows per connection."""
    return {connection_id: rows for connection_id, status, rows in counted if status == "dead"}
