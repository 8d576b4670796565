"""Patient by patient: how a stream syncs on an EHR that allows patient-scoped searches only (common in
production). One `_lastUpdated` window per known patient, or per batch of them (Patient by `_id`; the
others where the EHR answers a search naming several patients in full, workers.patient_lists), all from the same
cursor; a patient this stream has not read in full yet (new to the population: the export
Group's new members, the record a known patient was merged into, or someone another stream found) has no
window: their whole record is read once.

A population is large and a run is short (a job's time budget), so a pass goes on where the last run stopped:
the population is walked in id order, and the stream keeps the last patient done, and who among the new ones
was read whole, every few seconds and when the run stops. Each run does at least one step (a patient, or a
batch of them), so a pass always ends. (Started afresh each run, a pass over more patients than one run
reaches never ended: the rest were never read, and the first ones were read again every run.)
"""

from __future__ import annotations

import time
from datetime import datetime

from prm import snapshots, streams
from prm.errors import PermanentEhrError, TransientEhrError
from prm.models import Connection
from prm.snapshot_models import SyncStream
from workers.ehr_access import EhrAccess
from workers.patient_lists import list_failed, naming, one_by_one, patients_per_search, type_params
from workers.runtime import WorkerContext
from workers.stream_leases import StreamLease
from workers.sync_deletions import ID_BATCH, batches
from workers.sync_pages import commit_page
from workers.sync_population import group_members, group_roster, population_of
from workers.sync_run import OVERLAP, Progress, StreamRun, count_page, iso, server_instant
from workers.sync_strategy import group_population

PATIENT_KIND = "patient"  # the kind of pass a stream keeps the place of
KEEP_PLACE_EVERY_S = 5.0  # a run killed mid-pass redoes at most this much of it
# One step of a pass: the last patient it completes, and its searches (parameters, and the patients each reads
# whole). A step is done only when all its searches are: the place kept is always a step's end.
Search = tuple[list[tuple[str, str]], list[str]]
Step = tuple[str, list[Search]]


def patient_windows(ctx: WorkerContext, access: EhrAccess, connection: Connection, stream_id: int, run: StreamRun,
                    lease: StreamLease, deadline: float, progress: Progress | None) -> None:
    """One pass, or the part of it this run has time for (see the module docstring).

    The next cursor is the server's own clock when the pass's first search ran, less an overlap: a resource
    changed for a patient already read in this pass is read again next time, never lost. Upserts are
    version-aware, so reading twice changes nothing.
    """
    stream, known, read = _population(ctx, access, connection, stream_id, run)
    known = _of_the_group(ctx, access, connection, stream, run, known)
    position, began = streams.pass_place(stream, PATIENT_KIND)
    rest = [p for p in sorted(known) if position is None or p > position]
    since = [("_lastUpdated", f"ge{iso(stream.cursor)}")] if stream.cursor else []
    steps = _steps(stream.resource_type, rest, read, since, _per_search(ctx, access, stream, known, rest, lease))
    done_through, read_whole = position, []
    kept_at = time.monotonic()
    index = 0
    while index < len(steps):
        last, searches = steps[index]
        for params, whole in searches:
            server_time = _store_search(ctx, access, stream_id, stream.resource_type, params, run, progress, lease)
            if began is None and server_time:
                began = server_instant(server_time)
            read_whole += whole
        done_through = last
        if index + 1 == len(steps):
            break
        steps = _one_by_one_after(steps, index, run, stream.resource_type, rest, read, since)
        index += 1
        if time.monotonic() > deadline or not lease.renew():
            _keep_place(ctx, stream_id, done_through, began, read_whole)
            run.notes.append("time or lease ran out mid-pass: the next run goes on from here")
            return
        if time.monotonic() - kept_at >= KEEP_PLACE_EVERY_S:
            _keep_place(ctx, stream_id, done_through, began, read_whole)
            read_whole, kept_at = [], time.monotonic()
    with ctx.db.session() as session:
        fresh = streams.get(session, stream_id)
        if began is not None and (fresh.cursor is None or began - OVERLAP > fresh.cursor):
            fresh.cursor, fresh.cursor_ids = began - OVERLAP, []
        streams.note_patients_read(session, stream_id, read_whole)
        streams.keep_place(fresh, PATIENT_KIND, None, None)
        session.add(fresh)
    run.caught_up = True
    run.notes.append(f"patient by patient ({len(known)} patients)")


def read_newcomers(ctx: WorkerContext, access: EhrAccess, connection: Connection, stream_id: int, run: StreamRun,
                   lease: StreamLease, deadline: float, progress: Progress | None) -> None:
    """For a stream kept to a Group's patients (workers.sync_strategy.kept_to_group), whose type-level searches
    find what changed but never a record older than the cursor: the whole record of each patient new to the
    population (a new member of the Group, a record one was merged into, for Patient; a Patient newly held,
    for the others), once. The cursor is the type-level searches': this leaves it alone.

    Each patient is noted as read with its step, so a run out of time (a Group whose export came before this
    rule has every member to read once) leaves the rest to the next run, which comes at once (not caught up)."""
    stream, known, read = _population(ctx, access, connection, stream_id, run)
    newcomers = sorted(_of_the_group(ctx, access, connection, stream, run, {p for p in known if p not in read}))
    steps = _steps(stream.resource_type, newcomers, read, [],
                   _per_search(ctx, access, stream, known, newcomers, lease))
    index = 0
    while index < len(steps):
        if index and (time.monotonic() > deadline or not lease.renew()):
            run.caught_up = False
            run.notes.append("time or lease ran out reading the Group's newcomers: the next run goes on")
            return
        for params, whole in steps[index][1]:
            _store_search(ctx, access, stream_id, stream.resource_type, params, run, progress, lease)
            with ctx.db.session() as session:
                streams.note_patients_read(session, stream_id, whole)
        steps = _one_by_one_after(steps, index, run, stream.resource_type, newcomers, read, [])
        index += 1
    if newcomers:
        run.notes.append(f"{len(newcomers)} patient(s) new to the Group's population read whole")


def _store_search(ctx: WorkerContext, access: EhrAccess, stream_id: int, resource_type: str,
                  params: list[tuple[str, str]], run: StreamRun, progress: Progress | None,
                  lease: StreamLease) -> str | None:
    """One search of the population's records, every page stored (no cursor moves: a pass keeps its own), the
    lease kept between pages (a batch's whole records can be many); returns the server's time on its first
    page, if it gave one. A search naming several patients that fails, on any page (refused, or no answer once
    the polite client's retries are spent), is made again one patient a search (what its pages stored is
    upserted again, unchanged), as is every list after it this run; the stream remembers it once those searches
    succeeded (workers.patient_lists.list_failed). A one-patient search's failure is the stream's own."""
    singles = one_by_one(resource_type, params)
    if singles and run.lists_failed:
        return _store_one_by_one(ctx, access, stream_id, resource_type, singles, run, progress, lease)
    try:
        return _store_pages(ctx, access, stream_id, resource_type, params, run, progress, lease)
    except (PermanentEhrError, TransientEhrError):
        if not singles:
            raise
    server_time = _store_one_by_one(ctx, access, stream_id, resource_type, singles, run, progress, lease)
    list_failed(ctx, stream_id, resource_type)
    run.lists_failed = True
    run.notes.append("a search naming several patients failed: one patient a search this run, the list asked "
                     "again in a day")
    return server_time


def _store_pages(ctx: WorkerContext, access: EhrAccess, stream_id: int, resource_type: str,
                 params: list[tuple[str, str]], run: StreamRun, progress: Progress | None,
                 lease: StreamLease) -> str | None:
    page = access.reader.search(resource_type, params)
    server_time = page.server_time
    while True:
        result = commit_page(ctx, stream_id, page.resources, move_cursor=False, client=access.client_name,
                             of_population=True)
        count_page(run, result.stored, 0, result.quarantined, progress)
        if not page.next_url:
            return server_time
        lease.keep()
        page = access.reader.follow(page.next_url)


def _store_one_by_one(ctx: WorkerContext, access: EhrAccess, stream_id: int, resource_type: str,
                      singles: list[list[tuple[str, str]]], run: StreamRun, progress: Progress | None,
                      lease: StreamLease) -> str | None:
    """Each one-patient search in turn, the lease kept before each; the first server time any gave (the
    earliest: a pass's start)."""
    times = []
    for single in singles:
        lease.keep()
        times.append(_store_search(ctx, access, stream_id, resource_type, single, run, progress, lease))
    return next((t for t in times if t), None)


def _one_by_one_after(steps: list[Step], index: int, run: StreamRun, resource_type: str, patients: list[str],
                      read: set[str], since: list[tuple[str, str]]) -> list[Step]:
    """Once a list failed this run (`run.lists_failed`), the steps after `index` planned again one patient each:
    the deadline, the lease and the place are then looked at per patient, as they were before lists."""
    following = steps[index + 1][1] if index + 1 < len(steps) else []
    if not run.lists_failed or not any(one_by_one(resource_type, params) for params, _ in following):
        return steps
    last = steps[index][0]
    return steps[:index + 1] + _steps(resource_type, [p for p in patients if p > last], read, since, 1)


def _of_the_group(ctx: WorkerContext, access: EhrAccess, connection: Connection, stream: SyncStream,
                  run: StreamRun, patients: set[str]) -> set[str]:
    """Of these patients, those in the export Group's population (its members and the records merged with
    them), where the stream's population is the Group's and the Group can be read whole; else all of them.

    Why: a patient held who has left the Group (or every non-member a connection held before its Group became
    its population) is erased by the Patient stream's next run; reading their whole record first, a request
    each, would be wasted, and for a hospital's worth of patients would take hours. The Group is read at most
    once a run, and only when there is someone to read."""
    if not patients or not group_population(stream, connection):
        return patients
    roster = group_roster(access, connection, run)
    if roster.unreadable:
        return patients
    with ctx.db.session() as session:
        merged_into = snapshots.merge_links(session, stream.connection_id)
    return patients & population_of(set(roster.patients), merged_into)


def _population(ctx: WorkerContext, access: EhrAccess, connection: Connection, stream_id: int,
                run: StreamRun) -> tuple[SyncStream, set[str], set[str]]:
    """The stream, the patients whose records it reads (those the snapshot holds; for Patient also the records
    they were merged into and the export Group's members), and those it has read whole."""
    with ctx.db.session() as session:
        stream = streams.get(session, stream_id)
        known = snapshots.live_ids(session, stream.connection_id, "Patient")
        if stream.resource_type == "Patient":  # follow `replaced-by`: a merge's survivor joins the population
            known |= snapshots.merge_survivors(session, stream.connection_id)
        read = streams.patients_read(session, stream_id)
    if stream.resource_type == "Patient" and connection.export_group:  # the Group's new members join
        known |= group_members(access, connection, run)
    return stream, known, read


def _steps(resource_type: str, patients: list[str], read: set[str], since: list[tuple[str, str]],
           size: int) -> list[Step]:
    """The pass over these patients, in id order, `size` patients a step: Patients by `_id`; other types by
    their patient parameter. A batch's patients read before are asked for since the cursor, its new ones whole:
    up to two searches a step."""
    steps: list[Step] = []
    for batch in batches(patients, size):
        known, new = [p for p in batch if p in read], [p for p in batch if p not in read]
        steps.append((batch[-1], [([*_named(resource_type, ids), *extra], whole)
                                  for ids, extra, whole in ((known, since, []), (new, [], new)) if ids]))
    return steps


def _named(resource_type: str, patients: list[str]) -> list[tuple[str, str]]:
    if resource_type == "Patient":
        return [("_id", ",".join(patients))]
    return [naming(resource_type, patients), *type_params(resource_type)]


def _per_search(ctx: WorkerContext, access: EhrAccess, stream: SyncStream, population: set[str],
                reading: list[str], lease: StreamLease) -> int:
    """Patients a step names: ID_BATCH Patients by `_id`; for other types as many as the EHR answers in full
    (workers.patient_lists), asked of the stream's whole population, not a pass's rest; one where this run
    reads fewer than two (nothing to ask the EHR for)."""
    if stream.resource_type == "Patient":
        return ID_BATCH
    if len(reading) < 2:
        return 1
    return patients_per_search(ctx, access.reader, stream.id or 0, stream.resource_type, sorted(population),
                               lease.keep)


def _keep_place(ctx: WorkerContext, stream_id: int, done_through: str | None, began: datetime | None,
                read_whole: list[str]) -> None:
    with ctx.db.session() as session:
        fresh = streams.get(session, stream_id)
        streams.keep_place(fresh, PATIENT_KIND, done_through, began)
        streams.note_patients_read(session, stream_id, read_whole)
        session.add(fresh)
