"""One page of one stream, committed as a unit: check and map each resource, quarantine the bad ones,
upsert the rest, tombstone deletions, move the cursor, and write one audit record for the page."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from fhir_mappings.written import WRITTEN_TYPES
from prm import audit, snapshots, streams
from prm.models import Connection
from prm.snapshot_models import SyncStream
from workers.page_prep import PreparedPage, prepare_page
from workers.runtime import WorkerContext
from workers.sync_population import keep_to_population
from workers.sync_strategy import GROUP_EXPORTED, group_population, kept_to_group
from workers.writeback_status import follow_written

log = logging.getLogger(__name__)


@dataclass
class PageResult:
    stored: int = 0
    quarantined: int = 0
    deleted: int = 0
    skipped: int = 0
    left: int = 0  # held rows taken out as no longer the Group's population's (workers.sync_population)
    met_stored: bool = False  # expected as new rows, the page held one the snapshot had (so it was upserted)


def commit_page(ctx: WorkerContext, stream_id: int, resources: list[dict[str, Any]], *,
                deleted_ids: list[str] | None = None, move_cursor: bool = True, client: str = "sync",
                then: Callable[[SyncStream], None] | None = None, of_population: bool = False,
                read_by_id: bool = False) -> PageResult:
    """Store one page in one transaction; the cursor only moves with the page it covers, and `then` marks
    the stream with what else the page settles (a re-read's place). An empty page with nothing to mark
    changes nothing, so it costs no transaction. A stream kept to a Group's patients stores only their rows
    (workers.sync_population), unless the caller asked for the population's own records (`of_population`);
    resources `read_by_id` are kept to a Group's population even on a stream read patient by patient, as
    they may name anyone now (a visit refiled under another patient)."""
    if not resources and not deleted_ids and then is None:
        return PageResult()
    with ctx.db.session() as session:
        stream: SyncStream = streams.get(session, stream_id)
        seen = (lambda fhir_id, stamp: streams.already_seen(stream, fhir_id, stamp)) if move_cursor else None
        prepared = prepare_page(stream.resource_type, resources, seen)
        if not of_population and (prepared.rows or prepared.bad) and _kept_to_group(session, stream, read_by_id):
            keep_to_population(session, stream.connection_id, stream.resource_type, prepared)
        result = _store(ctx, session, stream, prepared, deleted_ids or [], move_cursor, client)
        if then is not None:
            then(stream)
        if stream.resource_type in WRITTEN_TYPES:  # status back: the PRM item follows the EHR
            follow_written(session, ctx.settings.clock, stream.connection_id, resources)
    _warn(stream_id, result)
    return result


def commit_prepared(ctx: WorkerContext, stream_id: int, prepared: PreparedPage, client: str = "sync",
                    expect_new: bool = False) -> PageResult:
    """Store a page a helper process has already checked and mapped (a bulk first load: no cursor to move).
    `expect_new`: the page's resources are probably not in the snapshot yet (a first load that has met none
    there so far), so they are first tried as new rows (`snapshots.store_new`); `met_stored` says that did not
    hold, and the caller stops expecting it."""
    with ctx.db.session(refetchable=True) as session:
        stream: SyncStream = streams.get(session, stream_id)
        result = _store(ctx, session, stream, prepared, [], False, client, expect_new)
    _warn(stream_id, result)
    return result


def _kept_to_group(session: Session, stream: SyncStream, read_by_id: bool = False) -> bool:
    if stream.resource_type not in GROUP_EXPORTED:  # the usual case: no connection to read
        return False
    connection = session.get(Connection, stream.connection_id)
    if connection is None:
        return False
    return group_population(stream, connection) if read_by_id else kept_to_group(stream, connection)


def _store(ctx: WorkerContext, session: Session, stream: SyncStream, prepared: PreparedPage, deleted_ids: list[str],
           move_cursor: bool, client: str, expect_new: bool = False) -> PageResult:
    result = PageResult(skipped=prepared.skipped, left=prepared.left)
    if stream.quarantined:  # a stream that never quarantined anything has nothing to resolve: no query
        _resolve_quarantined(ctx, session, stream, prepared, deleted_ids)
    for payload, error in prepared.bad:
        if streams.quarantine(session, ctx.settings.clock, stream.connection_id, stream.resource_type, payload, error):
            result.quarantined += 1
    if prepared.encoded is not None:
        if expect_new and snapshots.store_new(session, stream.resource_type, prepared.encoded):
            result.stored = len(prepared.encoded.rows)
        else:
            result.met_stored = expect_new
            result.stored = snapshots.store_encoded(session, stream.resource_type, prepared.encoded)
    else:
        result.stored = snapshots.upsert_page(session, stream.connection_id, stream.resource_type, prepared.rows)
    result.deleted = snapshots.mark_deleted(session, stream.connection_id, stream.resource_type, deleted_ids)
    if move_cursor:
        streams.advance(stream, prepared.instants)
    stream.quarantined += result.quarantined
    stream.pages += 1
    stream.resources_synced += result.stored
    stream.deleted_synced += result.deleted
    session.add(stream)
    if result.stored or result.deleted or result.quarantined or result.left:
        details = [f"{what} {n}" for what, n in (("quarantined", result.quarantined),
                                                  ("left the Group's population", result.left)) if n]
        audit.record(session, ctx.settings.clock, audit.Actor("system", client, connection_id=stream.connection_id),
                     "sync.page", entity=stream.resource_type, count=result.stored + result.deleted + result.left,
                     outcome="success" if not result.quarantined else "partial",
                     detail="; ".join(details) or None)
    return result


def _resolve_quarantined(ctx: WorkerContext, session: Session, stream: SyncStream, prepared: PreparedPage,
                         deleted_ids: list[str]) -> None:
    """A resource quarantined earlier that this page brings valid (pages come in `_lastUpdated` order, so it is
    the EHR's newer copy) or deleted is mended at the source; one the page brings invalid again stays open."""
    bad = {str(payload.get("id")) for payload, _ in prepared.bad}
    settled = {fhir_id for fhir_id, _ in prepared.instants if fhir_id not in bad} | set(deleted_ids)
    if settled and (resolved := streams.resolve_quarantined(session, ctx.settings.clock, stream.connection_id,
                                                             stream.resource_type, settled)):
        log.info("stream %s: %d quarantined resource(s) resolved by the EHR", stream.id, resolved)


def _warn(stream_id: int, result: PageResult) -> None:
    if result.quarantined:
        log.warning("stream %s: %d resource(s) quarantined", stream_id, result.quarantined)
    if result.left:
        log.info("stream %s: %d held resource(s) now name nobody in the Group's population: taken out",
                 stream_id, result.left)
