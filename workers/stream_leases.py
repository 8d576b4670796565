"""A sync stream's lease, held by one worker at a time, and the leases of a shared export taken together.

Why together: a bulk first load exports every type at once and so holds one lease a stream (seven). Taking,
renewing and releasing them one transaction each cost a commit apiece before the export could even start;
one transaction for all of them costs one. Rows are touched in name order, so two workers taking
overlapping sets on PostgreSQL wait for each other instead of deadlocking.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlmodel import Session

from prm import leases, streams
from prm.db import enqueue_after_commit
from prm.snapshot_models import SyncStream
from workers.runtime import WorkerContext

LEASE_RENEW_S = 5.0


class LeaseLost(Exception):
    """Another worker took the stream mid-run (ours lapsed): this run stops where its last commit left it."""


class StreamLease:
    """One stream's lease for this worker: renewed at most every few seconds (a quarter of the lease at most),
    so a dead holder's lapses within one lease period while a live one pays few transactions."""

    def __init__(self, ctx: WorkerContext, stream: SyncStream) -> None:
        self.ctx, self.name = ctx, streams.lease_name(stream)
        self._renewed_at: float | None = None
        self._released = False

    def due(self, now: float) -> bool:
        every = min(LEASE_RENEW_S, self.ctx.settings.job_lease_s / 4)
        return self._renewed_at is None or now - self._renewed_at >= every

    def renew(self) -> bool:
        """Take or extend the lease for one job lease period; False when another worker holds it."""
        return renew_together(self.ctx, [self])[0]

    def take_in(self, session: Session) -> bool:
        """Take or extend the lease within the caller's transaction (a run's first, which reads the stream):
        one commit fewer a run. False when another worker holds it."""
        taken = leases.acquire(session, self.name, self.ctx.name, self.ctx.settings.clock(),
                               self.ctx.settings.job_lease_s)
        self._renewed_at, self._released = (time.monotonic() if taken else None), False
        return taken

    def release_in(self, session: Session) -> None:
        """Give the lease up within the caller's transaction (a run's last, which records its success): one
        commit fewer a run. Once that commits, `release_together` has nothing left to do for it."""
        leases.release(session, self.name, self.ctx.name)
        enqueue_after_commit(session, self._forget)

    def _forget(self) -> None:
        self._renewed_at, self._released = None, True

    def keep(self) -> None:
        """Renew where due, for a step that cannot stop halfway and go on later; LeaseLost when it is gone."""
        if not self.renew():
            raise LeaseLost(self.name)

    def release(self) -> None:
        release_together(self.ctx, [self])


def renew_together(ctx: WorkerContext, held: Sequence[StreamLease]) -> list[bool]:
    """Take or extend each lease that is due, in one transaction; whether each is held afterwards."""
    now = time.monotonic()
    due = sorted((lease for lease in held if lease.due(now)), key=lambda lease: lease.name)
    if due:
        with ctx.db.session() as session:
            taken = [leases.acquire(session, lease.name, ctx.name, ctx.settings.clock(), ctx.settings.job_lease_s)
                     for lease in due]
        for lease, ok in zip(due, taken, strict=True):
            lease._renewed_at = now if ok else None
    return [lease._renewed_at is not None for lease in held]


def release_together(ctx: WorkerContext, held: Sequence[StreamLease]) -> None:
    """Give each lease up (only where this worker holds it), in one transaction; none for leases already
    given up with their run's success."""
    left = sorted((lease for lease in held if not lease._released), key=lambda lease: lease.name)
    if left:
        with ctx.db.session() as session:
            for lease in left:
                leases.release(session, lease.name, ctx.name)
    for lease in held:
        lease._renewed_at = None
