"""A stream's `_history` since its mark: whether anything new happened to its type (one request for a type
nothing happened to), what was deleted, and, when short, the changes themselves; and where the next run's
history starts.

The mark overlaps the run before it (a write can commit late with a `lastUpdated` behind what a run saw), so
the versions that run stored come back: only a version newer than the snapshot's row, or of a resource it
lacks, is news. Task and Communication are synced only where fhir-prm wrote them: the EHR's own Tasks in the
history are neither news nor a reason to search.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connector.fhir_reader import Page
from fhir_mappings.written import WRITTEN_TYPES, is_ours
from prm import snapshots
from prm.errors import PermanentEhrError
from prm.snapshot_models import SyncStream
from workers.ehr_access import EhrAccess
from workers.page_prep import last_updated
from workers.runtime import WorkerContext
from workers.stream_leases import StreamLease
from workers.sync_deletions import batches
from workers.sync_pages import commit_page
from workers.sync_run import EARLIEST, OVERLAP, Progress, StreamRun, count_page, iso

log = logging.getLogger(__name__)
HISTORY_FEED_PAGES = 4  # a `_history` of at most this many pages brings the run's changes itself


@dataclass
class History:
    """What `_history` says happened to a stream's type since its mark."""

    deleted: list[str]
    quiet: bool  # no version the snapshot lacks: a window would find nothing new
    news: list[dict[str, Any]] | None  # those versions, where the history was short enough to keep (else None)
    newest: datetime | None = None  # the newest lastUpdated of any version in it (ours or not): the EHR's clock


def read_history(ctx: WorkerContext, access: EhrAccess, stream: SyncStream, lease: StreamLease) -> History | None:
    """`_history` since the stream's mark, read before the windows, so a type nothing new happened to costs
    one request a run, not two. History is newest first (FHIR R4 §3.1.0.9), on every page: an id's first
    entry decides whether it was deleted or changed, so a resource deleted and created again stays. Resources
    are kept while the history is at most HISTORY_FEED_PAGES pages (memory stays bounded). None where there
    is no mark yet, or the EHR keeps no usable `_history` (then ids are compared)."""
    if stream.history_mark is None:
        return None
    ours_only = stream.resource_type in WRITTEN_TYPES
    stamps: dict[str, datetime | None] = {}  # each id's newest lastUpdated
    bodies: dict[str, dict[str, Any]] | None = {}  # each id's newest version, until there are too many pages
    gone: list[str] = []
    newest: datetime | None = None
    try:
        page = access.reader.history(stream.resource_type, iso(stream.history_mark), ctx.settings.sync_page_size)
        pages = 1
        newest = _note_newest(page, stream.resource_type, ours_only, stamps, gone, bodies)
        while page.next_url:
            lease.keep()  # a long history outlasts a lease: renewed page by page, like windows
            page = access.reader.follow(page.next_url)
            pages += 1
            bodies = bodies if pages <= HISTORY_FEED_PAGES else None
            on_page = _note_newest(page, stream.resource_type, ours_only, stamps, gone, bodies)
            newest = newest or on_page  # newest first: the first page with a resource holds the newest
    except PermanentEhrError as exc:
        log.info("stream %s: no usable _history (%s); reconciling ids", stream.id, type(exc).__name__)
        return None
    held: dict[str, datetime | None] = {}
    if stamps:  # most runs of most types: nothing in the history, nothing to look up
        with ctx.db.session() as session:
            held = snapshots.stamps_of(session, stream.connection_id, stream.resource_type, sorted(stamps))
    news = [i for i, stamp in stamps.items() if stamp is None or (held.get(i) or EARLIEST) < stamp]
    return History(gone, not news, [bodies[i] for i in news] if bodies is not None else None, newest)


def _note_newest(page: Page, resource_type: str, ours_only: bool, stamps: dict[str, datetime | None],
                 gone: list[str], bodies: dict[str, dict[str, Any]] | None) -> datetime | None:
    """Each id's first (newest) entry across the pages read so far: a deletion, or the resource as it is now
    (its lastUpdated, and the resource itself into `bodies` when given); with `ours_only`, only resources
    fhir-prm wrote count (a deletion carries no identifier: deleting an id the snapshot lacks changes nothing).
    Returns the newest lastUpdated on the page, whoever wrote it."""
    decided = set(gone)
    newest: datetime | None = None
    for kind, fhir_id in page.deleted:
        if kind == resource_type and fhir_id not in stamps and fhir_id not in decided:
            gone.append(fhir_id)
            decided.add(fhir_id)
    for resource in page.resources:  # a page holds an id once (connector.fhir_reader.page_of)
        rid = resource.get("id")
        if resource.get("resourceType") != resource_type or not isinstance(rid, str):
            continue
        stamp = last_updated(resource)
        if stamp is not None and (newest is None or stamp > newest):
            newest = stamp
        if rid not in stamps and rid not in decided and (not ours_only or is_ours(resource)):
            stamps[rid] = stamp
            if bodies is not None:
                bodies[rid] = resource
    return newest


def next_mark(stream: SyncStream, history: History | None) -> datetime | None:
    """Where the next run's `_history` starts; it overlaps this run. For a type the snapshot holds whole, the
    cursor as it stood before this run. Task and Communication move their cursor only with ours, and an EHR
    changes its own Tasks all day: there the newest change this history showed, anyone's, less OVERLAP, so
    each run reads the churn of a few minutes, not all since fhir-prm last wrote. A stream with no cursor yet
    (nothing of its type stored) keeps its mark, rather than losing it and searching every run."""
    if stream.resource_type in WRITTEN_TYPES and history is not None and history.newest is not None:
        return max(stream.history_mark or EARLIEST, stream.cursor or EARLIEST, history.newest - OVERLAP)
    return stream.cursor or stream.history_mark


def history_feeds(stream: SyncStream, history: History) -> bool:
    """`_history` can stand in for the windows when it was short enough to keep and the stream takes every
    resource of its type (Task and Communication are ours only, by identifier; searches filter them). A
    write made while its pages were read is newer than all of them: the next run finds it."""
    return history.news is not None and stream.resource_type not in WRITTEN_TYPES


def store_history(ctx: WorkerContext, access: EhrAccess, stream_id: int, run: StreamRun, history: History,
                  progress: Progress | None) -> None:
    """The news from a short `_history` in place of the windows: the run is caught up once they are stored."""
    store_news(ctx, access, stream_id, run, history, progress)
    run.caught_up = True
    run.notes.append("changes from _history")


def store_news(ctx: WorkerContext, access: EhrAccess, stream_id: int, run: StreamRun, history: History,
               progress: Progress | None) -> None:
    """The news from a short `_history`, stored page by page as windows' pages would be, oldest first: the edge
    checks, and the cursor moved past each page, so a run that stops midway leaves no gap behind its cursor."""
    news = sorted(history.news or [], key=lambda resource: last_updated(resource) or EARLIEST)
    for page in batches(news, ctx.settings.sync_page_size):
        result = commit_page(ctx, stream_id, page, client=access.client_name)
        count_page(run, result.stored, 0, result.quarantined, progress)
