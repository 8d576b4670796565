"""Type-level `_lastUpdated` windows: what changed since a stream's committed cursor, read without trusting
offset `next` links (they shift when data changes mid-sync). The cursor moves only past what is committed.

Where the EHR honours `_sort=_lastUpdated`, each page is asked for again from the cursor the page before it
moved (`ge`, and the ids at that instant remembered). Many EHRs ignore `_sort` (FHIR lets a server ignore a
parameter it does not support) and answer in an order of their own; a page's newest instant then says nothing
about the next page, and moving the cursor to it would skip the rest. There the pass cuts the time since the
cursor into `ge lo & lt hi` windows, halving any that does not fit in one page, oldest first, and moves the
cursor to each window's end once the window is stored. `prm connection check` finds such an EHR; the first page
that comes back out of order finds one the check could not judge. Where the EHR has no `_lastUpdated` search at
all (the check finds none in its CapabilityStatement), every pass reads every page, and the ids it read tell
what was deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from connector.fhir_reader import Page, in_last_updated_order
from fhir_mappings.written import IDENTIFIER_SYSTEM, WRITTEN_TYPES
from prm import streams
from prm.errors import PermanentEhrError, loggable
from prm.snapshot_models import SyncStream
from workers.ehr_access import EhrAccess
from workers.page_prep import last_updated
from workers.runtime import WorkerContext
from workers.stream_leases import StreamLease
from workers.sync_deletions import GONE
from workers.sync_pages import commit_page
from workers.sync_run import EARLIEST, Progress, StreamRun, count_page, iso, server_instant

log = logging.getLogger(__name__)
# Windows are cut on whole seconds only, and one with no whole second inside it is walked by its own links:
# some EHRs compare instants to the second, and a bulk-loaded EHR can hold more than a page in one second.
SECOND = timedelta(seconds=1)
CLOCK_MARGIN = timedelta(minutes=5)  # our clock stands in for the EHR's only when it gives none, less this
UNSORTED = "the EHR ignores _sort=_lastUpdated: windows halved until each fits a page"
REREAD = "no _lastUpdated search: every resource read again"
RELOADED = "read again as asked (a reload, by IT or an upgrade)"
REREAD_KIND = "reread"  # the kind of pass a stream keeps the place of


def window_params(resource_type: str, since: datetime | None, page_size: int, *, before: datetime | None = None,
                  sort: bool = True) -> list[tuple[str, str]]:
    params = [("_sort", "_lastUpdated")] if sort else []
    params.append(("_count", str(page_size)))
    if since is not None:
        params.append(("_lastUpdated", f"ge{iso(since)}"))
    if before is not None:
        params.append(("_lastUpdated", f"lt{iso(before)}"))
    if resource_type in WRITTEN_TYPES:
        params.append(("identifier", f"{IDENTIFIER_SYSTEM}|"))
    return params


def read_windows(ctx: WorkerContext, access: EhrAccess, stream_id: int, run: StreamRun, lease: StreamLease,
                 deadline: float, progress: Progress | None, *, ehr_sorts: bool = True) -> None:
    """Sorted windows until a page has no `next` link (or holds nothing); halved windows where the EHR does
    not sort. Not "until a page comes back short": an EHR may cap `_count` below the page size we ask for
    (sekmet at 1000, others at 100 or 200), and every page is then "short" while more are waiting.

    Each sorted window is asked for while the page before it is stored, from the cursor that page will leave
    (its newest instant), and used only if the committed cursor is that one: the EHR and the worker are busy
    at once, and a search first load ran ~20% faster (bench/sync.py --strategies search)."""
    if not ehr_sorts:
        _halved_windows(ctx, access, stream_id, run, lease, deadline, progress, None)
        return
    page_size = ctx.settings.sync_page_size
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"window-ahead-{stream_id}") as ahead:
        asked: tuple[datetime | None, Future[Page]] | None = None  # the next window, asked from this cursor
        try:
            while time.monotonic() < deadline:
                with ctx.db.session() as session:
                    stream = streams.get(session, stream_id)
                if asked is not None and asked[0] == stream.cursor:
                    page = asked[1].result()
                else:
                    if asked is not None:
                        asked[1].result()  # asked from another cursor: its answer is dropped, an error raised
                    page = access.reader.search(stream.resource_type,
                                                window_params(stream.resource_type, stream.cursor, page_size))
                asked = None
                _note_start(run, page)
                if stream.cursor is not None:
                    _check_within(page, stream.cursor, None, stream_id)
                if page.next_url and not in_last_updated_order(page.resources):  # with no next, it is all there
                    log.warning("stream %s: the EHR answered out of _lastUpdated order; reading by halved windows",
                                stream_id)
                    _halved_windows(ctx, access, stream_id, run, lease, deadline, progress, page)
                    return
                if page.next_url and _moves(page, stream.cursor):
                    # The next window starts where this page will move the cursor: asked for now, it comes back
                    # while this page is checked, mapped and stored (the EHR and the worker busy at once).
                    following = _cursor_after(page, stream.cursor)
                    asked = (following, ahead.submit(access.reader.search, stream.resource_type,
                                                     window_params(stream.resource_type, following, page_size)))
                _commit(ctx, access, stream_id, run, page, progress)
                while page.next_url and not _moves(page, stream.cursor):
                    # The page leaves the cursor where it was (more resources share its instant than a page holds,
                    # or the EHR compares instants to the second and answers from the start of it): asking again
                    # would bring the same page, so that run is walked by its links until a page moves it.
                    page = access.reader.follow(page.next_url)
                    _commit(ctx, access, stream_id, run, page, progress)
                if not lease.renew():
                    run.notes.append("lease lost")
                    return
                if not page.next_url or not page.resources:
                    run.caught_up = True
                    return
        finally:
            failed = asked[1].exception() if asked is not None and not asked[1].cancel() else None
            if failed is not None:
                log.info("stream %s: a window asked ahead and not needed failed: %s", stream_id, loggable(failed))


def _cursor_after(page: Page, cursor: datetime | None) -> datetime | None:
    """Where committing `page` moves the cursor (as prm.streams.advance moves it): to its newest instant."""
    stamps = [stamp for stamp in (last_updated(resource) for resource in page.resources) if stamp is not None]
    if not stamps:
        return cursor
    return max(stamps) if cursor is None else max(max(stamps), cursor)


def _halved_windows(ctx: WorkerContext, access: EhrAccess, stream_id: int, run: StreamRun, lease: StreamLease,
                    deadline: float, progress: Progress | None, first: Page | None) -> None:
    """Everything from the cursor up to the last whole second of the EHR's clock at the first search, in
    `ge lo & lt hi` windows that each fit one page (a window that does not is halved on a whole second; the
    older half goes first), so no window relies on an order or an offset. The cursor moves to each window's end
    as it is stored: a run that stops midway resumes from there. Then the rest (that last second, and what
    changed during the pass), which cannot be cut: by its links, the cursor left at its start, so whatever an
    offset skipped there is read again next pass."""
    run.notes.append(UNSORTED)
    page_size = ctx.settings.sync_page_size
    with ctx.db.session() as session:
        stream = streams.get(session, stream_id)
    resource_type, start = stream.resource_type, stream.cursor or EARLIEST

    def since(moment: datetime) -> Page:
        return access.reader.search(resource_type, window_params(resource_type, moment, page_size, sort=False))

    if first is None:  # what is there since the cursor, and the EHR's clock
        first = since(start)
        _note_start(run, first)
    clock = server_instant(first.server_time) if first.server_time else ctx.settings.clock() - CLOCK_MARGIN
    end = max(clock.replace(microsecond=0), start)  # a whole second: where any EHR cuts as we do
    if not first.next_url:  # all of it in one page, as of the EHR's clock: nothing before `end` is missing
        _store_window(ctx, access, stream_id, run, [first], end, progress)
        run.caught_up = True
        return
    pending = [(start, end)] if end > start else []
    while pending:
        if time.monotonic() >= deadline or not lease.renew():
            run.notes.append("time or lease ran out mid-pass")
            return
        low, high = pending.pop()
        page = access.reader.search(resource_type, window_params(resource_type, low, page_size, before=high,
                                                                 sort=False))
        _check_within(page, low, high, stream_id)
        middle = _middle(low, high) if page.next_url and page.resources else None
        if middle is not None:
            pending += [(middle, high), (low, middle)]  # the older half is taken first
            continue
        _store_window(ctx, access, stream_id, run, _with_following(access, page), high, progress)
    rest = first if end == start else since(end)
    _store_window(ctx, access, stream_id, run, _with_following(access, rest), end, progress)
    run.caught_up = True


def _with_following(access: EhrAccess, page: Page) -> list[Page]:
    """The page and every page its `next` links lead to (a window that cannot be cut further)."""
    pages = [page]
    while page.next_url:
        page = access.reader.follow(page.next_url)
        pages.append(page)
    return pages


def _store_window(ctx: WorkerContext, access: EhrAccess, stream_id: int, run: StreamRun, pages: list[Page],
                  end: datetime, progress: Progress | None) -> None:
    """A whole window's pages, then the cursor to its end (its resources are all older than that)."""
    for page in pages:
        _commit(ctx, access, stream_id, run, page, progress, move_cursor=False)
    with ctx.db.session() as session:
        fresh = streams.get(session, stream_id)
        if fresh.cursor is None or end > fresh.cursor:
            fresh.cursor, fresh.cursor_ids = end, []
        session.add(fresh)


def reread_all(ctx: WorkerContext, access: EhrAccess, stream_id: int, run: StreamRun, lease: StreamLease,
               deadline: float, progress: Progress | None, why: str = REREAD) -> set[str] | None:
    """Every resource of the type, page by page by the EHR's own links: for an EHR whose searches cannot
    filter by `_lastUpdated` (`prm connection check` found none in its CapabilityStatement), where no window
    can find what changed; and when a reload is asked (`why` says which). A version already held is written
    again as it maps now (upserts take a version as new as the row's), nothing else. An offset link
    may skip a resource when data changes mid-pass: the next pass reads it, and the deletion check asks for a
    missed id before taking it out.

    A pass longer than a run goes on where the run stopped (ran out of time, lost its lease, failed or was
    killed): each page is committed with the link to the next one, kept on the stream. Starting over each
    run would never finish a large EHR, its first load included. A kept link the EHR no longer knows starts
    the pass again. Returns the ids read when the whole pass was read in this run, else None (the deletion
    check then lists the ids itself, on its own schedule)."""
    with ctx.db.session() as session:
        stream = streams.get(session, stream_id)
        resource_type = stream.resource_type
        kept, began = streams.pass_place(stream, REREAD_KIND)
    page = _reread_from(access, resource_type, kept)
    if page is None:
        kept = None
        page = access.reader.search(resource_type, window_params(resource_type, None, ctx.settings.sync_page_size,
                                                                 sort=False))
    else:
        run.server_started = began
    _note_start(run, page)
    listed: set[str] = set()
    while True:
        _commit(ctx, access, stream_id, run, page, progress, move_cursor=False,
                then=_place(page.next_url, run.server_started))
        listed.update(str(resource.get("id")) for resource in page.resources)
        if not page.next_url:
            break
        if time.monotonic() >= deadline or not lease.renew():
            run.notes.append("time or lease ran out mid-pass: the next run goes on from here")
            return None
        page = access.reader.follow(page.next_url)
    run.caught_up = True
    run.notes.append(why)
    return None if kept is not None else listed


def _reread_from(access: EhrAccess, resource_type: str, link: str | None) -> Page | None:
    """The page a kept link names; None where there is none, or the EHR has forgotten it (404, 410)."""
    if link is None:
        return None
    try:
        return access.reader.follow(link)
    except PermanentEhrError as exc:
        if exc.status not in GONE:
            raise
        log.info("a kept re-read link of %s expired (%s): the pass starts again", resource_type, exc.status)
        return None


def _place(next_url: str | None, began: datetime | None) -> Callable[[SyncStream], None]:
    """What a re-read page settles on the stream: where the pass goes on, or, on its last page, that it
    ended (the cursor then says the snapshot is as of the pass's start)."""
    def mark(stream: SyncStream) -> None:
        streams.keep_place(stream, REREAD_KIND, next_url, began)
        if next_url is None and began is not None:
            stream.cursor, stream.cursor_ids = began, []
    return mark


def _middle(low: datetime, high: datetime) -> datetime | None:
    """The whole second nearest halfway, strictly inside the window; None where there is none. An EHR that
    compares instants to the second then cuts exactly where we do (an `lt` on a fraction of a second would
    lose the rest of that second there)."""
    half = low + (high - low) / 2
    for second in (half.replace(microsecond=0), half.replace(microsecond=0) + SECOND):
        if low < second < high:
            return second
    return None


def _check_within(page: Page, low: datetime, high: datetime | None, stream_id: int) -> None:
    """An EHR that ignores `_lastUpdated` answers every window with the same resources: halving would never end,
    and re-asking from a cursor would read the same pages until the time ran out. Refuse it with the reason (a
    second's slack either side, for EHRs that compare instants to the second)."""
    for resource in page.resources:
        stamp = last_updated(resource)
        if stamp is not None and not (low - SECOND <= stamp and (high is None or stamp < high + SECOND)):
            asked = f"_lastUpdated=ge{iso(low)}" + (f"&_lastUpdated=lt{iso(high)}" if high is not None else "")
            raise PermanentEhrError(
                f"the EHR answered {asked} with "
                f"{resource.get('resourceType')}/{resource.get('id')} of {iso(stamp)}: it does not filter by "
                f"_lastUpdated, so its changes cannot be found by windows (stream {stream_id}): `prm sync strategy "
                "... reread` reads everything each pass (as `prm connection check` chooses where the "
                "CapabilityStatement lists no _lastUpdated search), `... patient` reads patient by patient")


def _note_start(run: StreamRun, page: Page) -> None:
    if run.server_started is None and page.server_time:
        run.server_started = server_instant(page.server_time)


def _moves(page: Page, cursor: datetime | None) -> bool:
    """Whether committing the page moves the cursor: a resource newer than it (any, where there is none yet)."""
    return any(stamp is not None and (cursor is None or stamp > cursor)
               for stamp in (last_updated(resource) for resource in page.resources))


def _commit(ctx: WorkerContext, access: EhrAccess, stream_id: int, run: StreamRun, page: Page,
            progress: Progress | None, *, move_cursor: bool = True,
            then: Callable[[SyncStream], None] | None = None) -> None:
    """One page stored and counted; `move_cursor=False` where the caller moves the cursor past a whole window."""
    result = commit_page(ctx, stream_id, page.resources, move_cursor=move_cursor, client=access.client_name,
                         then=then)
    count_page(run, result.stored, 0, result.quarantined, progress)
