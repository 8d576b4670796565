"""Sync and write-back health as Prometheus metrics, for the monitoring a hospital's IT already runs.

IT watches many systems and is alerted by its monitoring, not by remembering to open our admin page: a stream
that stopped catching up, a failing connection check, write-backs that died. Every figure is read from the
database at scrape time (nothing is counted in the web process), so any number of app processes and workers
give the same answer, and a scrape shows what the workers last committed.

No patient data: connection names, resource types, subscription topics and counts only. Times are the product
clock's, as on the admin page; `prm_sync_stream_lag_seconds` is computed on that clock too, so alert on it
rather than on `time() - ..._timestamp_seconds` where a demo clock runs (PRM_NOW).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from prm import connections, ehr_subscriptions, jobs, outbox, snapshots, streams
from prm.clock import Clock
from prm.db import Database
from prm.models import Connection
from prm.snapshot_models import EhrSubscription, SyncStream

STREAM = ["connection", "type"]


def _stamp(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


class _Families:
    """The metric families of one scrape, filled connection by connection."""

    def __init__(self) -> None:
        self.gauges: dict[str, GaugeMetricFamily] = {}
        self.counters: dict[str, CounterMetricFamily] = {}

    def gauge(self, name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        if name not in self.gauges:
            self.gauges[name] = GaugeMetricFamily(name, doc, labels=labels)
        return self.gauges[name]

    def counter(self, name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        """`name` without `_total`: the exposition adds it."""
        if name not in self.counters:
            self.counters[name] = CounterMetricFamily(name, doc, labels=labels)
        return self.counters[name]

    def all(self) -> Iterator[Metric]:
        yield from self.gauges.values()
        yield from self.counters.values()


class HealthCollector(Collector):
    """Reads connections, streams, EHR subscriptions and the outbox at each scrape."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        now = self.clock()
        with self.db.session() as session:
            rows = connections.list_all(session)
            names = {row.id or 0: row.name for row in rows}
            grouped = streams.by_connection(session)
            open_quarantined = streams.open_quarantine_counts(session)
            for row in rows:
                _connection(families, row)
                for stream in grouped.get(row.id or 0, []):
                    held = snapshots.held(session, row.id or 0, stream.resource_type)
                    _stream(families, row.name, stream, now, held,
                            open_quarantined.get((row.id or 0, stream.resource_type), 0), row.enabled)
                for subscription in ehr_subscriptions.of_connection(session, row.id or 0):
                    _subscription(families, row.name, subscription)
            outbox_rows = families.gauge("prm_outbox_rows", "Write-back outbox rows by status (dead: needs IT).",
                                         ["connection", "status"])
            for connection_id, status, count in outbox.counts_by_connection(session):
                outbox_rows.add_metric([names.get(connection_id, str(connection_id)), status], count)
            waiting = families.gauge("prm_jobs_waiting", "Jobs due that no worker has taken yet.", ["kind"])
            oldest_wait = families.gauge("prm_jobs_waiting_oldest_seconds", "How long the oldest of them has waited: "
                                         "stopped workers or scheduler, or too few workers.", ["kind"])
            for kind, count, oldest in jobs.waiting(session, now):
                waiting.add_metric([kind], count)
                oldest_wait.add_metric([kind], max(0.0, (now - oldest).total_seconds()))
        yield from families.all()


def _connection(families: _Families, row: Connection) -> None:
    labels = [row.name]
    families.gauge("prm_connection_enabled", "1 while the connection is enabled (disabled: nothing syncs).",
                   ["connection"]).add_metric(labels, 1 if row.enabled else 0)
    families.gauge("prm_connection_check_ok", "1 if the last connection check passed (0: failing or never checked).",
                   ["connection"]).add_metric(labels, 1 if row.health_status == "ok" else 0)
    families.gauge("prm_connection_needs_it", "1 while the EHR refuses our backend token even after a new one.",
                   ["connection"]).add_metric(labels, 1 if row.needs_it else 0)
    if (checked := _stamp(row.health_checked_at)) is not None:
        families.gauge("prm_connection_checked_timestamp_seconds", "When the connection was last checked.",
                       ["connection"]).add_metric(labels, checked)


def _stream(families: _Families, name: str, stream: SyncStream, now: datetime, held: int,
            open_quarantined: int, connection_enabled: bool) -> None:
    """A stream paused, or of a disabled connection, has no lag and is not failing (nothing runs to fail or
    catch up; `prm sync check` does not judge it either): alerts on those two need no exceptions."""
    labels = [name, stream.resource_type]
    running = connection_enabled and stream.enabled
    families.gauge("prm_sync_stream_enabled", "1 while the stream is enabled.", STREAM).add_metric(
        labels, 1 if stream.enabled else 0)
    families.gauge("prm_sync_stream_initial", "1 until the stream's first load has finished.", STREAM).add_metric(
        labels, 1 if stream.phase != "incremental" else 0)
    families.gauge("prm_sync_stream_failing", "1 if the stream runs and its last run ended with an error.",
                   STREAM).add_metric(labels, 1 if running and stream.last_error else 0)
    families.gauge("prm_sync_stream_interval_seconds", "How often the stream runs once caught up.",
                   STREAM).add_metric(labels, stream.interval_s)
    families.gauge("prm_sync_stream_held_resources", "Resources of the type the snapshot holds now.",
                   STREAM).add_metric(labels, held)
    families.gauge("prm_sync_stream_quarantined_open", "Resources refused at the edge, not since mended at the EHR.",
                   STREAM).add_metric(labels, open_quarantined)
    for metric, doc, value in (
            ("prm_sync_stream_written_resources", "Resources written to the snapshot (a change writes one again).",
             stream.resources_synced),
            ("prm_sync_stream_deleted_resources", "Deletions applied to the snapshot.", stream.deleted_synced),
            ("prm_sync_stream_quarantined_resources", "Resources ever refused at the edge.", stream.quarantined),
            ("prm_sync_stream_pages", "Pages committed.", stream.pages)):
        families.counter(metric, doc, STREAM).add_metric(labels, value)
    if running and stream.caught_up_at is not None:
        families.gauge("prm_sync_stream_lag_seconds", "How far the snapshot may trail the EHR: the time since the "
                       "stream last read all there was (absent until it first has, and while it does not run).",
                       STREAM).add_metric(
            labels, max(0.0, (now - stream.caught_up_at).total_seconds()))
    for metric, doc, when in (
            ("prm_sync_stream_caught_up_timestamp_seconds", "When the stream last read all there was.",
             stream.caught_up_at),
            ("prm_sync_stream_last_success_timestamp_seconds", "When a run of the stream last ended well.",
             stream.last_success_at)):
        if (stamp := _stamp(when)) is not None:
            families.gauge(metric, doc, STREAM).add_metric(labels, stamp)


def _subscription(families: _Families, name: str, row: EhrSubscription) -> None:
    labels = [name, row.topic]
    families.gauge("prm_ehr_subscription_active", "1 while the EHR subscription is active (else polling alone).",
                   ["connection", "topic"]).add_metric(labels, 1 if row.status == "active" else 0)
    families.counter("prm_ehr_subscription_notifications", "Notifications heard from the EHR.",
                     ["connection", "topic"]).add_metric(labels, row.notifications)
    if (heard := _stamp(row.last_heard_at)) is not None:
        families.gauge("prm_ehr_subscription_last_heard_timestamp_seconds", "When the EHR was last heard "
                       "(handshake, heartbeat or event).", ["connection", "topic"]).add_metric(labels, heard)


def exposition(db: Database, clock: Clock, accept: str | None) -> tuple[bytes, str]:
    """One scrape and its content type, in the format the scraper's Accept header asks for (Prometheus text
    0.0.4 where it names none, which every Prometheus reads; OpenMetrics or text 1.0.0 where it names them)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(db, clock))
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type
