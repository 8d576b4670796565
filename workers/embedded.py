"""The embedded worker and scheduler for the no-Redis default, inside `prm serve`.

Only the process holding the database lease "scheduler" sweeps, so two app processes (or two
gunicorn workers) never run two schedulers; if the holder dies its lease lapses and another takes over.
"""

from __future__ import annotations

import logging
import threading

from prm import leases
from workers.dispatch import InProcessDispatcher
from workers.runtime import WorkerContext
from workers.sweeper import sweep

log = logging.getLogger(__name__)
LEASE = "scheduler"


class EmbeddedRunner:
    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prm-scheduler", daemon=True)
        self.holds_lease = False

    def start(self) -> None:
        self._thread.start()

    def _ttl(self) -> float:
        return max(3 * self._ctx.settings.sweep_interval_s, 15.0)

    def tick(self) -> None:
        """One scheduler step: keep (or take) the lease, and sweep if we hold it."""
        with self._ctx.db.session() as session:
            self.holds_lease = leases.acquire(session, LEASE, self._ctx.name, self._ctx.settings.clock(),
                                              self._ttl())
        if self.holds_lease:
            sweep(self._ctx)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed; trying again next interval")
            self._stop.wait(self._ctx.settings.sweep_interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.holds_lease:
            with self._ctx.db.session() as session:
                leases.release(session, LEASE, self._ctx.name)
        if isinstance(self._ctx.dispatcher, InProcessDispatcher):
            self._ctx.dispatcher.shutdown()
