"""Sync every stream of one connection now, side by side: `prm sync run` and the sync benchmark.

Background workers sync one stream per job; a foreground sync wants the whole connection, fast. Streams
run on threads, one each, that share the connection's polite client, so its bound on requests in flight (4)
holds across them. A bulk first load starts from the first stream that needs one and takes the leases of every
other stream it can export together; only streams that are not exported run beside it, so none is
exported twice. A stream a background worker holds is waited for (its
lease ends when that worker finishes, or lapses if it died), then run here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor

from prm import connections, streams
from prm.models import Connection
from workers.ehr_access import EhrAccess, access_for
from workers.runtime import WorkerContext
from workers.sync_engine import needs_export, run_stream
from workers.sync_run import Progress, StreamRun

# Every stream on its own thread: the polite client still bounds requests in flight (4), and the threads
# beyond that store pages and read the database while the others wait for the EHR.
STREAMS_AT_ONCE = len(streams.SYNC_TYPES)
BUSY_POLL_S = 1.0


def sync_connection(ctx: WorkerContext, connection_id: int, *, types: Collection[str] | None = None,
                    time_budget_s: float = 24 * 3600, progress: Progress | None = None,
                    finished: Callable[[StreamRun], None] | None = None) -> dict[str, StreamRun]:
    """Run each chosen stream (all by default) until caught up; returns each stream's run by type."""
    with ctx.db.session() as session:
        connection = connections.get(session, connection_id)
        chosen = [(s.id or 0, s.resource_type, connection is not None and needs_export(s, connection))
                  for s in streams.ensure(session, connection_id) if types is None or s.resource_type in types]
    runs: dict[str, StreamRun] = {}
    busy_wait_s = max(60.0, 2 * ctx.settings.job_lease_s)

    access_of = shared_access(ctx)

    def one(stream_id: int) -> StreamRun:
        run = run_stream(ctx, stream_id, time_budget_s=time_budget_s, progress=progress, together=types,
                         access_of=access_of)
        waited_until = time.monotonic() + busy_wait_s
        while run.busy and time.monotonic() < waited_until:
            time.sleep(BUSY_POLL_S)
            run = run_stream(ctx, stream_id, time_budget_s=time_budget_s, progress=progress, together=types,
                             access_of=access_of)
        return run

    def record(run: StreamRun) -> None:
        for each in [run, *run.companions]:
            runs[each.resource_type] = each
            if finished:
                finished(each)

    exportable = [stream_id for stream_id, _, export in chosen if export]
    others = [stream_id for stream_id, _, export in chosen if not export]
    with ThreadPoolExecutor(max_workers=STREAMS_AT_ONCE, thread_name_prefix="sync") as pool:
        export = pool.submit(one, exportable[0]) if exportable else None  # its companions are the other exportable
        for run in pool.map(one, others):
            record(run)
        if export is not None:
            record(export.result())
        left = [stream_id for stream_id, resource_type, _ in chosen if resource_type not in runs]
        for run in pool.map(one, left):  # exportable streams the export could not take (a worker held them)
            record(run)
    return runs


def shared_access(ctx: WorkerContext) -> Callable[[Connection], EhrAccess]:
    """One EHR access for every stream of this sync (they share the connection), built by the first stream to
    ask: the others skip reading and decrypting the signing key again. A build that failed is not kept, so
    each stream fails, and records why, as it would alone."""
    lock = threading.Lock()
    built: list[EhrAccess] = []

    def access_of(connection: Connection) -> EhrAccess:
        with lock:
            if not built:
                built.append(access_for(ctx, connection))
            return built[0]

    return access_of
