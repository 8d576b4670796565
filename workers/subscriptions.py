"""Near-real-time sync: keep a rest-hook Subscription (R4 Backport IG) on each EHR that offers them, for every
topic that fires on a type we sync, and let its notifications wake those streams. An EHR with only plain R4
Subscriptions gets one per search in `CRITERIA` instead (no handshake: the EHR's copy says when it is active).

Polling goes on at each stream's interval whatever happens here: a notification lost, a hook unreachable or an
EHR that drops our Subscription costs only latency. So a notification is never trusted for data, only as a
reason to run the stream's next incremental pass now. The `subscriptions.ensure` job checks the EHR's copies
every `subscription_check_interval_s` and re-activates one the EHR put in error (our app was down during a
handshake, deliveries failed) with a new secret.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from sqlmodel import Session, col, select

from connector.fhir_reader import FhirReader
from connector.fhir_writer import FhirWriter, PreconditionFailed, WriteOutcome
from fhir_mappings.subscriptions import (
    CRITERIA,
    Topic,
    backport_subscription,
    criteria_subscription,
    filters_of,
    ours_only,
    topic_of,
)
from prm import connections, ehr_subscriptions, jobs, streams
from prm.errors import EhrError, PermanentEhrError
from prm.fhir_names import version_of
from prm.models import Connection, Job
from prm.snapshot_models import EhrSubscription
from workers.ehr_access import access_for
from workers.runtime import WorkerContext

log = logging.getLogger(__name__)

SUBSCRIPTIONS_ENSURE = "subscriptions.ensure"
HOOK_PATH = "/fhir/hooks/"
LIVE = ("requested", "active")  # an EHR copy in either state needs nothing from us


@dataclass
class EnsureRun:
    topics: list[str] = field(default_factory=list)
    created: int = 0
    reactivated: int = 0
    switched_off: int = 0
    errors: list[str] = field(default_factory=list)


def hook_url(ctx: WorkerContext, hook_key: str) -> str:
    return f"{ctx.settings.public_url}{HOOK_PATH}{hook_key}"


def usable(connection: Connection) -> bool:
    """The last `prm connection check` found rest-hook Subscriptions offered and the Subscription scope granted."""
    return bool((connection.capability_profile or {}).get("subscriptions", {}).get("usable"))


def kind_of(connection: Connection) -> str:
    """Topic-based where the EHR offers the backport (and for profiles checked before plain R4 was known),
    else criteria-based."""
    mode = (connection.capability_profile or {}).get("subscriptions", {}).get("mode")
    return ehr_subscriptions.CRITERIA if mode == ehr_subscriptions.CRITERIA else ehr_subscriptions.BACKPORT


def criteria_topics() -> list[Topic]:
    """Where the EHR has only plain R4 Subscriptions: one search per type whose changes should wake its stream."""
    return [Topic(criteria, (resource_type,)) for resource_type, criteria in CRITERIA.items()
            if resource_type in streams.SYNC_TYPES]


def plan(ctx: WorkerContext, session: Session) -> None:
    """Every enabled connection that can take our Subscriptions has an ensure job."""
    ids = [c.id for c in session.exec(select(Connection).where(
        col(Connection.enabled).is_(True), col(Connection.backend_client_id).is_not(None))) if usable(c)]
    jobs.ensure_planned(session, SUBSCRIPTIONS_ENSURE, [i for i in ids if i is not None], ctx.settings.clock())


def wanted_topics(reader: FhirReader, advertised: list[str]) -> list[Topic]:
    """The topics (as the EHR defines them: Basic, backport encoding) that fire on a type we sync; only those
    the CapabilityStatement lists, when it lists any."""
    synced = set(streams.SYNC_TYPES)
    found: dict[str, Topic] = {}
    page = reader.search("Basic", [("code", "SubscriptionTopic"), ("_count", "100")])
    while True:
        for basic in page.resources:
            topic = topic_of(basic)
            if topic is None or (advertised and topic.url not in advertised):
                continue
            types = tuple(t for t in topic.resource_types if t in synced)
            if types:
                found[topic.url] = Topic(topic.url, types, topic.filter_parameters)
        if not page.next_url:
            return [found[url] for url in sorted(found)]
        page = reader.follow(page.next_url)


def ensure(ctx: WorkerContext, connection_id: int) -> EnsureRun | None:
    """Bring the EHR's Subscriptions for this connection in line with the topics it offers; None when the
    connection is gone, disabled or cannot take them."""
    with ctx.db.session() as session:
        connection = session.get(Connection, connection_id)
        if connection is None or not connection.enabled or not usable(connection):
            return None
        session.expunge(connection)
        rows = {row.topic: row for row in ehr_subscriptions.of_connection(session, connection_id)}
        for row in rows.values():
            session.expunge(row)
    access = access_for(ctx, connection)
    run = EnsureRun()
    kind = kind_of(connection)
    if kind == ehr_subscriptions.CRITERIA:
        topics = criteria_topics()
    else:
        try:
            topics = wanted_topics(access.reader, connection.capability_profile["subscriptions"].get("topics") or [])
        except PermanentEhrError as exc:  # refused, not down: asking again will not help until IT acts
            run.errors.append(f"topics: {exc}")
            with ctx.db.session() as session:
                connections.flag_for_it(session, ctx.settings.clock, connection_id, (
                    f"EHR notifications: the EHR refused to list its topics (Basic?code=SubscriptionTopic): {exc}. "
                    f"Grant system/Basic.rs and check the connection, or drop system/Subscription.cru to poll only"))
            return run
    run.topics = [t.url for t in topics]
    for topic in topics:
        try:
            _ensure_one(ctx, access.writer, connection_id, topic, rows.get(topic.url), run, kind)
        except EhrError as exc:
            run.errors.append(f"{topic.url}: {exc}")
            _record_error(ctx, connection_id, topic.url, str(exc))
    for url, row in rows.items():
        if url not in run.topics and row.status != "off":
            _switch_off(ctx, access.writer, row)
            run.switched_off += 1
    return run


def _ensure_one(ctx: WorkerContext, writer: FhirWriter, connection_id: int, topic: Topic,
                row: EhrSubscription | None, run: EnsureRun, kind: str) -> None:
    copy = _ehr_copy(writer, row)
    filters = ours_only(topic) if kind == ehr_subscriptions.BACKPORT else ()
    if row is not None and copy is not None and row.status != "error" and copy.get("status") in LIVE and (
            (copy.get("channel") or {}).get("endpoint") == hook_url(ctx, row.hook_key)) and (
            filters_of(copy) == filters):
        if kind == ehr_subscriptions.CRITERIA:
            _note_ehr_state(ctx, row.id, copy)
        return  # a moved PRM_PUBLIC_URL or other filters, like an error, make it ask again
    with ctx.db.session() as session:  # committed before the EHR hears of it: its handshake may come at once
        fresh, secret = ehr_subscriptions.request(session, ctx.settings.clock, connection_id, topic.url,
                                                  list(topic.resource_types), kind)
        hook_key, row_id = fresh.hook_key, fresh.id
    if kind == ehr_subscriptions.CRITERIA:
        body = criteria_subscription(topic.url, hook_url(ctx, hook_key), secret)
    else:
        body = backport_subscription(topic.url, hook_url(ctx, hook_key), secret,
                                     ctx.settings.subscription_heartbeat_s, filters)
    if copy is not None:
        outcome = _replace_copy(writer, body, copy)
        run.reactivated += 1
    else:
        outcome = writer.create(body, urlencode([("url", body["channel"]["endpoint"])]))
        if not outcome.created and outcome.id:  # ours from a create whose answer was lost: it has an old secret
            outcome = writer.update({**body, "id": outcome.id}, None)
        run.created += 1
    with ctx.db.session() as session:
        current = session.get(EhrSubscription, row_id)
        if current is not None:  # the status is the handshake's to set; only the EHR's id is ours to add
            current.ehr_id = outcome.id
            session.add(current)
    if kind == ehr_subscriptions.CRITERIA and outcome.id:  # no handshake: the EHR's copy says how it stands
        _note_ehr_state(ctx, row_id, writer.read("Subscription", outcome.id))
    log.info("subscription to %s on connection %s: %s as %s", topic.url, connection_id,
             "re-activated" if copy is not None else "created", outcome.id)


def _note_ehr_state(ctx: WorkerContext, row_id: int | None, copy: dict[str, Any]) -> None:
    """A plain R4 Subscription has no handshake: it is active, or in error, when the EHR's copy says so."""
    status = copy.get("status")
    if status not in ("active", "error"):
        return  # still requested: the next check looks again
    with ctx.db.session() as session:
        current = session.get(EhrSubscription, row_id)
        if current is not None and current.status != status:
            ehr_subscriptions.set_state(session, ctx.settings.clock, current, str(status),
                                        str(copy.get("error") or "the EHR put it in error") if status == "error"
                                        else None)


def _replace_copy(writer: FhirWriter, body: dict[str, Any], copy: dict[str, Any]) -> WriteOutcome:
    """Our new version of the EHR's copy, sent against the version we read. The EHR changes its copy on its own
    (the status after a handshake, or after deliveries failed), so a copy that moved on meanwhile is read again
    and sent once more; a second conflict waits for the next check."""
    try:
        return writer.update({**body, "id": copy["id"]}, version_of(copy))
    except PreconditionFailed:
        moved = writer.read("Subscription", str(copy["id"]))
        log.info("subscription %s moved on at the EHR (version %s) while we replaced it; sending ours again",
                 copy["id"], version_of(moved))
        return writer.update({**body, "id": copy["id"]}, version_of(moved))


def _ehr_copy(writer: FhirWriter, row: EhrSubscription | None) -> dict[str, Any] | None:
    if row is None or not row.ehr_id:
        return None
    try:
        return writer.read("Subscription", row.ehr_id)
    except PermanentEhrError as exc:
        if exc.status in (404, 410):
            return None  # the EHR dropped it: make a new one
        raise


def _record_error(ctx: WorkerContext, connection_id: int, topic: str, error: str) -> None:
    with ctx.db.session() as session:
        row = ehr_subscriptions.for_topic(session, connection_id, topic)
        if row is not None:
            ehr_subscriptions.set_state(session, ctx.settings.clock, row, "error", error)


def _switch_off(ctx: WorkerContext, writer: FhirWriter, row: EhrSubscription) -> None:
    """A topic the EHR no longer offers (or no longer fires on a type we sync): off on both sides."""
    copy = _ehr_copy(writer, row)
    if copy is not None and copy.get("status") != "off":
        _replace_copy(writer, {**copy, "status": "off"}, copy)
    with ctx.db.session() as session:
        current = session.get(EhrSubscription, row.id)
        if current is not None:
            ehr_subscriptions.set_state(session, ctx.settings.clock, current, "off")


def ensure_job(ctx: WorkerContext, job: Job) -> None:
    """Ensure, then plan the next check; an error is kept on the subscription rows and retried at the next one."""
    run = ensure(ctx, job.subject_id)
    if run is None:
        return
    with ctx.db.session() as session:
        jobs.plan(session, SUBSCRIPTIONS_ENSURE, job.subject_id,
                  ctx.settings.clock() + timedelta(seconds=ctx.settings.subscription_check_interval_s))
    log.info("subscriptions for connection %s: %d topic(s), %d created, %d re-activated, %d off, %d error(s)",
             job.subject_id, len(run.topics), run.created, run.reactivated, run.switched_off, len(run.errors))
