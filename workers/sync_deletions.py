"""Deleted resources leave the snapshot: from `_history` where the EHR keeps it, else by comparing the ids the
EHR lists with the snapshot's, and then asking the EHR by id about each one the listing missed.

That last step is what makes the comparison safe. An id listing pages by offset, and a resource deleted while
it pages moves every later one a place forward: the first id of the next page is then listed on no page. A
live resource taken out of the snapshot that way would never come back (it has not changed, so no window
finds it). Asked by id, the EHR answers exactly, and the listing's misses are few (the real deletions).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

from fhir_mappings.written import IDENTIFIER_SYSTEM, WRITTEN_TYPES, is_ours
from prm import snapshots, streams
from prm.errors import PermanentEhrError, TransientEhrError
from prm.snapshot_models import SyncStream
from workers.ehr_access import EhrAccess
from workers.page_prep import last_updated
from workers.patient_lists import list_failed, naming, patients_per_search
from workers.runtime import WorkerContext
from workers.stream_leases import StreamLease
from workers.sync_pages import commit_page
from workers.sync_run import EARLIEST

log = logging.getLogger(__name__)
RECONCILE_EVERY = timedelta(hours=6)
LEASE_CHECK_IDS = 500  # ids listed between looks at whether the lease is due for renewal
ID_BATCH = 50  # ids per `_id` search (a URL stays well under common 8 KB limits)
GONE = (404, 410)
T = TypeVar("T")


def batches(items: list[T], size: int) -> list[list[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def find_deletions(ctx: WorkerContext, access: EhrAccess, stream_id: int, mark_before_run: datetime | None,
                   history_deleted: list[str] | None, patient_scoped: bool, lease: StreamLease,
                   listed: set[str] | None = None) -> tuple[int, dict[str, datetime | None]]:
    """Take what the EHR deleted out of the snapshot: the deletions `_history` showed (read before the
    windows), or, where there is no `_history`, what an id comparison finds (against `listed`, the ids a
    run that read everything saw, else a listing). Returns how many left and the stream's marks to store with
    the run's success (one transaction fewer per run).

    `_history` is read since the cursor as it stood before the previous run (server clock), so windows
    overlap and no deletion falls between them; an EHR without `_history` has its ids compared every
    RECONCILE_EVERY, or every run that read them all anyway. A listing takes as long as the EHR is large: the
    stream's lease is renewed as it goes (LeaseLost if another worker took the stream meanwhile).
    """
    marks: dict[str, datetime | None]
    gone: list[str] | None
    refreshed: list[dict[str, Any]] = []
    if history_deleted is not None and mark_before_run is not None:  # the history said it all: no row to read
        gone, marks = history_deleted, {"history_mark": mark_before_run}
    else:
        with ctx.db.session() as session:
            stream = streams.get(session, stream_id)
        now = ctx.settings.clock()
        gone, marks = history_deleted, {"history_mark": mark_before_run or stream.cursor}
        if gone is None:
            if listed is None and stream.reconciled_at is not None and now - stream.reconciled_at < RECONCILE_EVERY:
                return 0, {}  # no _history here: ids are compared every RECONCILE_EVERY, not every run
            gone, refreshed = _reconcile(ctx, access, stream, patient_scoped, lease, listed)
            marks["reconciled_at"] = now
    if not gone and not refreshed:
        return 0, marks
    result = commit_page(ctx, stream_id, refreshed, deleted_ids=gone, move_cursor=False, client=access.client_name,
                         read_by_id=True)
    return result.deleted, marks


def _reconcile(ctx: WorkerContext, access: EhrAccess, stream: SyncStream, patient_scoped: bool, lease: StreamLease,
               listed: set[str] | None) -> tuple[list[str], list[dict[str, Any]]]:
    """The snapshot's live ids the EHR no longer has: missing from its listing, and not found when asked. Ids
    still in quarantine are compared too (they never reached the snapshot): one the EHR deleted is resolved.
    With them, what asking by id read of those it still has, to be stored (`_still_there`)."""
    params = [("identifier", f"{IDENTIFIER_SYSTEM}|")] if stream.resource_type in WRITTEN_TYPES else []
    if listed is not None:
        on_server = listed
    elif patient_scoped:
        on_server = _ids_patient_by_patient(ctx, access, stream, params, lease)
    else:
        on_server = _all_ids(access, stream.resource_type, params or None, lease)
    with ctx.db.session() as session:
        known = snapshots.live_ids(session, stream.connection_id, stream.resource_type)
        if stream.quarantined:
            known |= streams.open_quarantined_ids(session, stream.connection_id, stream.resource_type)
        missing = sorted(known - on_server)
    still_there, read = _still_there(access, stream.resource_type, missing, params, lease,
                                     by_read=patient_scoped and stream.resource_type != "Patient")
    if still_there:
        log.info("stream %s: %d id(s) missing from the listing are still on the EHR (it shifted while it paged, "
                 "or the resource now names another patient)", stream.id, len(still_there))
    return [fhir_id for fhir_id in missing if fhir_id not in still_there], _changed(ctx, stream, read)


def _changed(ctx: WorkerContext, stream: SyncStream, read: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of resources read by id, those newer than the snapshot's row, or with none (one in quarantine): an
    unchanged one (a deleted patient's visit, listed under nobody) is not stored again every comparison."""
    if not read:
        return []
    with ctx.db.session() as session:
        held = snapshots.stamps_of(session, stream.connection_id, stream.resource_type,
                                   sorted(str(r.get("id")) for r in read))
    return [r for r in read if (stamp := held.get(str(r.get("id")), EARLIEST)) is None
            or (at := last_updated(r)) is None or at > stamp]


def _still_there(access: EhrAccess, resource_type: str, missing: list[str], params: list[tuple[str, str]],
                 lease: StreamLease, by_read: bool) -> tuple[set[str], list[dict[str, Any]]]:
    """Of the ids a listing missed, those the EHR still has (with our identifier, for the types we write).
    `_id` searches in batches; one read per id where the EHR allows patient-scoped searches only, which also
    returns what it read: a per-patient listing misses a resource that now names another patient (a visit
    refiled), and its current version is what the snapshot must keep, or, outside a Group's population,
    drop (workers.sync_population), not the old one under the old patient."""
    if not by_read:
        found: set[str] = set()
        for batch in batches(missing, ID_BATCH):
            found |= _all_ids(access, resource_type, [("_id", ",".join(batch)), *params], lease)
        return found, []
    alive: set[str] = set()
    read: list[dict[str, Any]] = []
    for fhir_id in missing:
        lease.keep()
        try:
            resource = access.reader.read(resource_type, fhir_id)
        except PermanentEhrError as exc:
            if exc.status in GONE:
                continue
            raise
        if not params or is_ours(resource):
            alive.add(fhir_id)
            read.append(resource)
    return alive, read


def _ids_patient_by_patient(ctx: WorkerContext, access: EhrAccess, stream: SyncStream,
                            params: list[tuple[str, str]], lease: StreamLease) -> set[str]:
    """Every id of the type on an EHR that lists only per patient: one listing per known patient, or per
    batch of them where the EHR answers a list of patients (workers.patient_lists; a list that fails, one
    patient a listing from there on). Patients themselves by `_id`, ID_BATCH a listing."""
    with ctx.db.session() as session:
        population = sorted(snapshots.live_ids(session, stream.connection_id, "Patient"))
    found: set[str] = set()
    if stream.resource_type == "Patient":
        for batch in batches(population, ID_BATCH):
            found |= _all_ids(access, "Patient", [("_id", ",".join(batch))], lease)
        return found
    return _ids_of_patients(ctx, access, stream, population, params, lease)


def _ids_of_patients(ctx: WorkerContext, access: EhrAccess, stream: SyncStream, population: list[str],
                     params: list[tuple[str, str]], lease: StreamLease) -> set[str]:
    """The type's ids these patients' records have, as many patients a listing as the EHR answers in full. A
    listing naming several patients that fails, on any page, is made again one patient a listing, as is the
    rest; the stream remembers it once those succeeded (workers.patient_lists.list_failed)."""
    per_search = patients_per_search(ctx, access.reader, stream.id or 0, stream.resource_type, population,
                                     lease.keep)
    found: set[str] = set()
    for at in range(0, len(population), per_search):
        batch = population[at:at + per_search]
        try:
            found |= _all_ids(access, stream.resource_type, [naming(stream.resource_type, batch), *params], lease)
        except (PermanentEhrError, TransientEhrError):
            if len(batch) == 1:
                raise
            for patient in population[at:]:
                found |= _all_ids(access, stream.resource_type, [naming(stream.resource_type, [patient]), *params],
                                  lease)
            list_failed(ctx, stream.id or 0, stream.resource_type)
            return found
    return found


def _all_ids(access: EhrAccess, resource_type: str, params: list[tuple[str, str]] | None,
             lease: StreamLease) -> set[str]:
    """Every id of the type on the EHR; a paging link that expired mid-listing restarts it once."""
    try:
        return _kept_listing(access.reader.ids(resource_type, params), lease)
    except PermanentEhrError as exc:
        if exc.status not in GONE:
            raise
        log.info("id listing of %s: a paging link expired (%s); listing again", resource_type, exc.status)
        return _kept_listing(access.reader.ids(resource_type, params), lease)


def _kept_listing(ids: Iterator[str], lease: StreamLease) -> set[str]:
    """The ids, the lease renewed while they come (it is due every few seconds; looking costs nothing)."""
    found: set[str] = set()
    lease.keep()
    for fhir_id in ids:
        found.add(fhir_id)
        if len(found) % LEASE_CHECK_IDS == 0:
            lease.keep()
    return found
