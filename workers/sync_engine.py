"""Run one sync stream: bulk first load where offered, then `_lastUpdated` windows from the committed cursor
(`workers.sync_windows`; never trusting offset `next` links, which shift when data changes mid-sync) or a
short `_history`'s changes, then deletions (`workers.sync_deletions`).

A lease per stream, renewed every page, keeps two workers off the same stream; a dead worker's lease
lapses and another takes over from the last committed cursor, so a crash leaves no gap.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from connector.fhir_reader import GroupRoster
from prm import audit, connections, snapshots, streams
from prm.errors import AuthExpiredError, PermanentEhrError, loggable
from prm.models import Connection
from prm.snapshot_models import SyncStream
from workers.ehr_access import EhrAccess, access_for
from workers.gc_quiet import quiet_gc
from workers.page_prep import PreparedPage, Target, prepare_lines
from workers.patient_lists import PATIENT_PARAM
from workers.prep_helper import Preparer, preparer
from workers.runtime import WorkerContext
from workers.stream_leases import LeaseLost, StreamLease, release_together, renew_together
from workers.stream_offers import pause_note
from workers.sync_deletions import find_deletions
from workers.sync_export_place import EXPORT_KIND, export_manifest
from workers.sync_history import history_feeds, next_mark, read_history, store_history, store_news
from workers.sync_leavers import drop_leavers
from workers.sync_pages import commit_prepared
from workers.sync_patients import patient_windows, read_newcomers
from workers.sync_population import keep_members
from workers.sync_run import DISABLED, OVERLAP, Progress, StreamRun, count_page, server_instant
from workers.sync_strategy import GROUP_EXPORTED, group_population, kept_to_group, strategy_of
from workers.sync_windows import RELOADED, read_windows, reread_all

log = logging.getLogger(__name__)
SYNCER = audit.Actor("system", "sync")  # what the sync itself decides about a stream
AFTER_EXPORT_AT_ONCE = 4  # the polite client's default bound on requests in flight
Held = list[tuple[SyncStream, StreamLease, StreamRun]]  # the streams a run holds, each with its lease


def run_stream(ctx: WorkerContext, stream_id: int, *, time_budget_s: float = 120.0,
               progress: Progress | None = None, together: Collection[str] | None = None,
               access_of: Callable[[Connection], EhrAccess] | None = None) -> StreamRun:
    """Sync one stream until caught up or out of time; safe to call from any number of workers.

    A bulk first load exports this stream's type together with every other first-loading bulk stream of the
    connection whose lease it can take (`together` limits which types may join): one `$export` instead of one
    per type. Those streams finish their first load in this run too; their results are in `run.companions`.
    `access_of` builds the EHR access (default `access_for`; a sync of a whole connection shares one).
    """
    with ctx.db.session() as session:
        stream = streams.get(session, stream_id)
        connection = connections.get(session, stream.connection_id)
        enabled = connection is not None and connection.enabled and stream.enabled
        lease = StreamLease(ctx, stream)
        taken = enabled and lease.take_in(session)
    run = StreamRun(stream.resource_type)
    if connection is None or not enabled:
        run.notes.append(DISABLED)
        return run
    if not taken:
        run.busy = True
        return run
    held: Held = [(stream, lease, run)]
    try:
        access = access_of(connection) if access_of is not None else access_for(ctx, connection)
        deadline = time.monotonic() + time_budget_s
        if needs_export(stream, connection):
            held += _companions(ctx, stream, connection, together)
            _bulk_initial(ctx, access, connection, held, progress)
            run.companions = [r for _, _, r in held[1:]]
        if len(held) == 1:
            _sync_after(ctx, access, stream, connection, run, lease, deadline, progress)
        else:  # after a shared export, each stream catches up from it on its own thread (each its own lease)
            with ThreadPoolExecutor(max_workers=AFTER_EXPORT_AT_ONCE, thread_name_prefix="after-export") as pool:
                for finished in [pool.submit(_sync_after, ctx, access, member, connection, member_run, member_lease,
                                             deadline, progress) for member, member_lease, member_run in held]:
                    finished.result()
    except Exception as exc:
        note = pause_note(connection, stream, run, exc) if len(held) == 1 else None
        with ctx.db.session() as session:
            for member, _, _ in held:
                fresh = streams.get(session, member.id or 0)
                streams.record_error(fresh, ctx.settings.clock, f"{type(exc).__name__}: {exc}")
                note = note if fresh.enabled else None  # IT paused it meanwhile: IT's pause, not the sync's
                if note is not None:  # a type the EHR does not offer us: not a failure to alert on
                    streams.pause_refused(session, ctx.settings.clock, SYNCER, fresh, note)
                session.add(fresh)
            if isinstance(exc, AuthExpiredError):  # refused again after re-authenticating: IT must act
                connections.flag_for_it(session, ctx.settings.clock, stream.connection_id,
                                        f"the EHR refused the backend token after re-authentication "
                                        f"({stream.resource_type} sync): {exc}")
        if note is None:
            raise
        log.warning("stream %s (%s): paused, the EHR refuses a type it does not offer: %s", stream.id,
                    stream.resource_type, loggable(exc))
        run.notes.append(note)
    finally:
        release_together(ctx, [member_lease for _, member_lease, _ in held])
    return run


def needs_export(stream: SyncStream, connection: Connection) -> bool:
    """A first load by bulk export that has not finished its export yet (the cursor is set when it has)."""
    initial, _ = strategy_of(stream, connection)
    return stream.phase == "initial" and stream.cursor is None and initial.startswith("bulk-export")


def _export_group(stream: SyncStream, connection: Connection) -> str | None:
    """The Group to export, where the strategy is a Group-level export; None for a system-level one."""
    return connection.export_group if strategy_of(stream, connection)[0] == "bulk-export-group" else None


def _companions(ctx: WorkerContext, stream: SyncStream, connection: Connection,
                together: Collection[str] | None) -> Held:
    """The connection's other streams that still need the same export (system, or the Group's: IT may have set
    one stream apart), each with its lease taken."""
    initial, _ = strategy_of(stream, connection)
    with ctx.db.session() as session:
        siblings = [s for s in streams.of_connection(session, stream.connection_id)
                    if s.id != stream.id and s.enabled and needs_export(s, connection)
                    and strategy_of(s, connection)[0] == initial
                    and (together is None or s.resource_type in together)]
    sibling_leases = [StreamLease(ctx, sibling) for sibling in siblings]
    return [(sibling, sibling_lease, StreamRun(sibling.resource_type))  # one a worker holds stays with it
            for sibling, sibling_lease, taken in zip(siblings, sibling_leases, renew_together(ctx, sibling_leases),
                                                     strict=True) if taken]


def _sync_after(ctx: WorkerContext, access: EhrAccess, stream: SyncStream, connection: Connection, run: StreamRun,
                lease: StreamLease, deadline: float, progress: Progress | None) -> None:
    """What changed since the cursor (after an export: since it), from a short `_history` or else windows;
    then deletions, then success. A step that cannot stop halfway (the history, the deletion check) renews the
    lease as it goes, and ends the run as busy if another worker took the stream meanwhile."""
    try:
        _sync_steps(ctx, access, stream, connection, run, lease, deadline, progress)
    except LeaseLost:  # another worker has the stream now: it goes on from what this run committed
        run.busy = True
        run.notes.append("lease lost mid-run: another worker has the stream")


def _sync_steps(ctx: WorkerContext, access: EhrAccess, stream: SyncStream, connection: Connection, run: StreamRun,
                lease: StreamLease, deadline: float, progress: Progress | None) -> None:
    """`_sync_after`'s steps."""
    stream_id = stream.id or 0
    first_load = stream.phase == "initial"
    resumed_reload = stream.reload_serving is not None  # a reload's pass an earlier run began
    reloading = not first_load and streams.reload_due(stream) and _begin_reload(ctx, stream_id)
    history = None if first_load else read_history(ctx, access, stream, lease)
    mark_before_run = None if first_load else next_mark(stream, history)
    listed: set[str] | None = None  # every id the EHR has, where this run read them all
    if reloading and _patient_scoped(stream, connection):  # every patient's whole record (begin_reload)
        patient_windows(ctx, access, connection, stream_id, run, lease, deadline, progress)
    elif reloading:  # everything, page by page; the history mark left as it was
        if resumed_reload and history is not None and history_feeds(stream, history):
            # What changed since the pass began may sit on pages it has read, and would wait for the pass's
            # end (the cursor goes back to its start then): a booking made mid-reload is known at once.
            store_news(ctx, access, stream_id, run, history, progress)
        listed = reread_all(ctx, access, stream_id, run, lease, deadline, progress, why=RELOADED)
    elif history is not None and history.quiet:  # nothing changed since the mark: no window can find anything
        run.caught_up = True
        run.notes.append("unchanged (_history)")
    elif _patient_scoped(stream, connection):  # after the bulk first load, or on a known population
        patient_windows(ctx, access, connection, stream_id, run, lease, deadline, progress)
    elif history is not None and history_feeds(stream, history):
        store_history(ctx, access, stream_id, run, history, progress)  # one request, not two
    elif strategy_of(stream, connection)[1] == "full-reread":  # no window can find what changed
        listed = reread_all(ctx, access, stream_id, run, lease, deadline, progress)
    else:
        read_windows(ctx, access, stream_id, run, lease, deadline, progress, ehr_sorts=_ehr_sorts(connection))
    if run.caught_up and not first_load and stream.resource_type == "Patient" and group_population(stream, connection):
        drop_leavers(ctx, access, connection, stream_id, run, lease)  # the Group's leavers, whose records go
    if run.caught_up and kept_to_group(stream, connection):  # and its newcomers, whose records are older
        read_newcomers(ctx, access, connection, stream_id, run, lease, deadline, progress)
    marks: dict[str, datetime | None] = {}
    if run.caught_up:
        if first_load:
            _after_first_load(ctx, stream_id, run)
        else:
            deleted, marks = find_deletions(ctx, access, stream_id, mark_before_run,
                                            history.deleted if history is not None else None,
                                            _patient_scoped(stream, connection), lease, listed)
            run.deleted += deleted
    with ctx.db.session() as session:
        fresh = streams.get(session, stream_id)
        for name, value in marks.items():
            setattr(fresh, name, value)
        if run.caught_up and fresh.phase == "initial":
            fresh.phase = "incremental"
            fresh.initial_done_at = ctx.settings.clock()
        if run.caught_up:  # a pass left unfinished by another strategy is not gone on with
            fresh.pass_kind = fresh.pass_position = fresh.pass_started = None
        if run.caught_up and reloading:
            streams.finish_reload(fresh)
        streams.record_success(fresh, ctx.settings.clock, run.caught_up)
        session.add(fresh)
        lease.release_in(session)  # the run is over: let the next one in, with its success


def _begin_reload(ctx: WorkerContext, stream_id: int) -> bool:
    """streams.begin_reload in a transaction of its own: only runs with a reload asked or under way pay it."""
    with ctx.db.session() as session:
        return streams.begin_reload(session, stream_id)


def _bulk_initial(ctx: WorkerContext, access: EhrAccess, connection: Connection,
                  held: Held, progress: Progress | None) -> None:
    """One Bulk `$export` of every held stream's type (of the connection's export Group where the strategy says
    so, else system-level; the one these streams kept, where a run before this one was cut off), streamed page
    by page into each stream; afterwards each cursor starts at the export's transactionTime (deletions are read
    from there on, less an overlap)."""
    by_type = {member.resource_type: (member, run) for member, _, run in held}
    group = _export_group(held[0][0], connection)
    scoped = any(group_population(member, connection) for member, _, _ in held)
    roster = _export_roster(access, connection, level_group=group is not None) if scoped else None
    members = list(roster.patients) if roster is not None else None
    # A system-level export holds every patient's records: a Group's connection keeps its members' only. A
    # Group-level one holds the members' compartments, which take in any Patient whose `link` names a member (a
    # `seealso` record of another person, a record the member was merged into): its Patient pages keep the
    # members' own and those merged into them, where the roster says who every member is (else the EHR's own
    # reading of its Group is all there is). Records members were merged into are read by the Patient pass.
    members_only = frozenset(members) if members is not None and not group else None
    patients_only = frozenset(roster.patients) if group and roster is not None and not roster.unreadable else None
    target = Target(ctx.db.engine.dialect.name, connection.id or 0)  # pages come back ready for the driver
    with preparer(ctx.settings.sync_prep_helper == "on", by_type, target) as prep:  # it starts while the EHR writes

        def waiting(_: str) -> None:  # between status polls: compile here too, and keep the leases (waits are long)
            prep.warm()
            _renew_all(ctx, held)

        status_url, manifest = export_manifest(ctx, access, [member for member, _, _ in held], group, waiting)
        with quiet_gc():
            _store_export(ctx, access, manifest, held, by_type, prep, progress, members_only, patients_only)
    access.bulk.delete(status_url)
    _finish_export(ctx, connection, manifest, held, members)


def _export_roster(access: EhrAccess, connection: Connection, *, level_group: bool) -> GroupRoster:
    """The export Group's members: whom a Group-level export is for, or whom a system-level one is kept to. A
    system-level export cannot be kept to a Group that lists nobody or names members by no Patient reference
    (it would keep nobody, or silently miss them): that is an error for IT, before the EHR does any work."""
    roster = access.reader.group_roster(connection.export_group or "")
    if not level_group and roster.unreadable:
        raise PermanentEhrError(f"export Group/{connection.export_group} {roster.unreadable}: a system-level export "
                                "cannot be kept to it (list the members by Patient reference, or remove the "
                                "connection's export Group)")
    return roster


def _renew_all(ctx: WorkerContext, held: Held) -> None:
    """Keep every stream of a shared export leased (each renewal is skipped when it is recent)."""
    renew_together(ctx, [lease for _, lease, _ in held])


# Pages queued at the helper; when it has not finished the oldest, the worker prepares the next. 8, not 4: with 4
# the helper idled between the worker's bursts (storing the backlog, preparing pages itself), and a 50k load spent
# ~0.15 s more after its manifest. At most ~7 MB of pages in flight, whatever the load's size.
PAGES_AHEAD = 8

# An export's lines go to the helper in pages of at most this many (fewer where PRM_SYNC_PAGE_SIZE is lower): a
# 500-Encounter page (~0.8 MB) crosses the helper's 1 MiB pipe in one write, and a search's larger pages (up to
# PRM_SYNC_PAGE_SIZE, each one request) would not. Unlike a search page, an export page costs no request.
EXPORT_PAGE_LINES = 500


def _store_export(ctx: WorkerContext, access: EhrAccess, manifest: dict[str, Any],
                  held: Held, by_type: dict[str, tuple[SyncStream, StreamRun]],
                  prep: Preparer, progress: Progress | None, members_only: frozenset[str] | None = None,
                  patients_only: frozenset[str] | None = None) -> None:
    """Each output file of a held type, read line by line into pages: the preparer parses, checks and maps a
    page while this thread stores the one before it into its stream. When the preparer is behind (its pages
    cost more than storing them), this thread prepares the page in hand itself rather than wait: it would
    idle otherwise. An export's pages are independent (no cursor moves until it is all in), so their order
    does not matter. They go in as new rows until a type's page meets stored ones (an export read again after
    a cut): that type is upserted from then on. `members_only`: the patient-compartment types' pages keep only
    these patients' rows (a system-level export for a Group's connection); `patients_only`: the Patient pages
    keep only these patients' own records and those merged into them (a Group-level export, whose
    compartments take in linked records)."""
    pending: deque[tuple[SyncStream, StreamRun]] = deque()
    upserting: set[str] = set()  # types a page of which met rows already stored (a resumed load): no more tries

    def store(member: SyncStream, run: StreamRun, page: PreparedPage) -> None:
        if members_only is not None and member.resource_type in GROUP_EXPORTED:
            keep_members(member.resource_type, page, members_only)
        elif patients_only is not None and member.resource_type == "Patient":
            keep_members("Patient", page, patients_only)
        result = commit_prepared(ctx, member.id or 0, page, client=access.client_name,
                                 expect_new=member.resource_type not in upserting)
        if result.met_stored:
            upserting.add(member.resource_type)
        count_page(run, result.stored, 0, result.quarantined, progress)
        _renew_all(ctx, held)

    def store_oldest() -> None:
        member, run = pending.popleft()
        store(member, run, prep.result())

    def send(member: SyncStream, run: StreamRun, lines: list[tuple[int, bytes]]) -> None:
        while len(pending) >= PAGES_AHEAD:
            if not prep.ready():  # the preparer is behind: this page is prepared here
                store(member, run, prepare_lines(member.resource_type, lines, prep.target))
                return
            store_oldest()
        prep.submit(member.resource_type, lines)
        pending.append((member, run))

    page_lines = min(ctx.settings.sync_page_size, EXPORT_PAGE_LINES)
    for item in manifest.get("output", []):
        if item.get("type") not in by_type:
            continue
        member, run = by_type[item["type"]]
        lines: list[tuple[int, bytes]] = []
        for numbered in access.bulk.lines(item["url"]):
            lines.append(numbered)
            if len(lines) >= page_lines:
                send(member, run, lines)
                lines = []
        if lines:
            send(member, run, lines)
    while pending:
        store_oldest()


def _finish_export(ctx: WorkerContext, connection: Connection, manifest: dict[str, Any],
                   held: Held, members: list[str] | None) -> None:
    """Each exported stream's cursor starts at the export's transactionTime, its deletions an overlap before.
    The patients the export covered (`members` of a Group export, else every patient known now) count as read
    in full, so a patient-by-patient pass asks them only what changed since."""
    transaction_time = manifest.get("transactionTime")
    started = server_instant(str(transaction_time)) if transaction_time else ctx.settings.clock()
    with ctx.db.session() as session:
        scoped = [member for member, _, _ in held
                  if _patient_scoped(member, connection) or kept_to_group(member, connection)]
        if scoped:
            held_now = snapshots.live_ids(session, connection.id or 0, "Patient")
            # A member who joined after the export began (a kept one resumed later, say) is not in it: read whole.
            covered = held_now if members is None else set(members) & held_now
            for member in scoped:
                streams.note_patients_read(session, member.id or 0, covered)
        for member, _, run in held:
            run.server_started = started
            run.notes.append("bulk export")
            fresh = streams.get(session, member.id or 0)
            if fresh.cursor is None or started > fresh.cursor:
                fresh.cursor, fresh.cursor_ids = started, []
            fresh.history_mark = started - OVERLAP
            streams.keep_place(fresh, EXPORT_KIND, None, None)  # the export is stored: nothing to go on with
            session.add(fresh)


def _ehr_sorts(connection: Connection) -> bool:
    """Unless `prm connection check` found the EHR ignoring `_sort=_lastUpdated`; the windows also notice."""
    return ((connection.capability_profile or {}).get("sync") or {}).get("sort_last_updated") is not False


def _patient_scoped(stream: SyncStream, connection: Connection) -> bool:
    """EHRs that refuse type-level searches are read patient by patient (after a bulk or earlier first load)."""
    _, incremental = strategy_of(stream, connection)
    return incremental == "patient-by-patient" and (
        stream.resource_type == "Patient" or stream.resource_type in PATIENT_PARAM)


def _after_first_load(ctx: WorkerContext, stream_id: int, run: StreamRun) -> None:
    """A first load has nothing to delete yet: no id listing (on offset-paging servers it costs more than the
    load). Deletions from the moment it began are read from `_history` next time; where there is no
    `_history`, the periodic id comparison finds them."""
    with ctx.db.session() as session:
        fresh = streams.get(session, stream_id)
        start = run.server_started
        fresh.history_mark = start - OVERLAP if start else fresh.history_mark or fresh.cursor
        fresh.reconciled_at = ctx.settings.clock()
        session.add(fresh)
