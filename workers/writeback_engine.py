"""The write-back drain for one connection: claim due outbox rows, write them exactly once, record the outcome.

Exactly once rests on four things: our business identifier on every resource; `If-None-Exist` on creates; a
search by identifier before writing again whenever an earlier answer was lost (timeout, worker killed after the
call); and claims, so one row is never in flight in two drains. An EHR whose conditional creates race may still
end up with copies: they are reconciled (the oldest kept, the others marked entered-in-error) and shown to IT.
Updates carry `If-Match`; a 412 re-reads, follows what the EHR changed (a Task completed there) and merges.
A type the EHR refuses degrades along the configured fallbacks (Task -> Communication -> kept in fhir-prm).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import SQLModel

from connector.capability_rules import bundle_type_for_writes
from connector.fhir_writer import BundleWrite, FhirWriter, PreconditionFailed, WriteOutcome, WriteRefused
from prm import audit, connections, outbox
from prm.errors import AuthExpiredError, EhrError, PermanentEhrError, TransientEhrError, ValidationError, loggable
from prm.fhir_names import version_of
from prm.followup_models import CareTicket
from prm.models import Connection, OutboxRow
from workers.runtime import WorkerContext
from workers.writeback_render import (
    WITHDRAWN,
    Rendered,
    fallback_chain,
    follow_remote_status,
    merge,
    preload_items,
    refused_by_profile,
    render,
    withdrawn,
)

log = logging.getLogger(__name__)


@dataclass
class DrainRun:
    written: int = 0
    degraded: int = 0
    kept: int = 0
    failed: int = 0
    dead: int = 0
    duplicates: int = 0
    claimed: int = 0
    more: bool = False  # the time budget ran out with rows still due


@dataclass
class Attempt:
    """One row's write in this pass; `error` set when it failed, `outcome` when the EHR answered."""

    rendered: Rendered
    token: str  # the claim it was made under: its outcome is stored only while that claim stands
    version_id: str | None = None  # If-Match for an update
    outcome: WriteOutcome | None = None
    error: EhrError | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_update(self) -> bool:
        return "id" in self.rendered.resource


@dataclass
class Batch:
    """One claim's rows and what they will write."""

    token: str
    rows: list[OutboxRow]
    attempts: list[Attempt]


def choose_bundle(setting: str, profile: dict[str, Any]) -> str | None:
    if setting == "none":
        return None
    if setting in ("batch", "transaction"):
        return setting
    return bundle_type_for_writes(profile)


class Drain:
    def __init__(self, ctx: WorkerContext, connection: Connection, writer: FhirWriter, client_name: str) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.connection = connection
        self.connection_id = connection.id or 0
        self.writer = writer
        self.actor = audit.Actor("system", client_name, connection_id=self.connection_id)
        self.bundle_type = choose_bundle(self.settings.writeback_bundle, connection.capability_profile or {})
        self.run_result = DrainRun()
        self.needs_it: str | None = None
        self._lock = threading.Lock()

    def run(self, time_budget_s: float) -> DrainRun:
        """Drain until nothing is due or the time is up, as a pipeline: up to `writeback_bundles_in_flight`
        Bundles at the EHR at once (each a different claim, so a row is only ever in one request), while a
        database thread stores finished batches' outcomes and claims and renders the next ones."""
        deadline = time.monotonic() + time_budget_s
        width = max(1, self.settings.writeback_bundles_in_flight)
        with ThreadPoolExecutor(1, thread_name_prefix="prm-drain-db") as db_thread, \
                ThreadPoolExecutor(width, thread_name_prefix="prm-drain-http") as http_threads:
            ahead: Future[Batch | None] | None = db_thread.submit(self._next_batch)
            flying: deque[tuple[Batch, Future[None]]] = deque()
            settling: list[Future[None]] = []
            while True:
                while ahead is not None and len(flying) < width:
                    batch, ahead = ahead.result(), None
                    if batch is None and not flying and settling:  # the last outcomes may have made rows due
                        _wait(settling)                              # again (a fallback type to try): look once
                        batch = self._next_batch()
                    if batch is None:
                        break
                    flying.append((batch, http_threads.submit(self._write, batch)))
                    if time.monotonic() < deadline:
                        ahead = db_thread.submit(self._next_batch)
                    else:
                        self.run_result.more = True
                if not flying:
                    break
                batch, written = flying.popleft()
                written.result()
                settling.append(db_thread.submit(self._settle, batch))
                if ahead is None and not self.run_result.more:
                    ahead = db_thread.submit(self._next_batch)  # after that settle: rows it made due again
            _wait(settling)
        return self.run_result

    def drain_batch(self, token: str, rows: list[OutboxRow]) -> None:
        """One claimed batch, start to end, on this thread (the pipeline's steps, in order)."""
        batch = Batch(token, rows, self._prepare(token, rows))
        self._write(batch)
        self._settle(batch)

    def _next_batch(self) -> Batch | None:
        with self.ctx.db.session() as session:
            token, rows = outbox.claim(session, self.settings.clock, connection_id=self.connection_id,
                                       holder=self.ctx.name, limit=self.settings.writeback_batch_size,
                                       lease_s=self.settings.job_lease_s)
        if not rows:
            return None
        self._count("claimed", len(rows))
        return Batch(token, rows, self._prepare(token, rows))

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:  # the pipeline's two threads both count
            setattr(self.run_result, what, getattr(self.run_result, what) + n)

    # -- one claimed batch -----------------------------------------------------------------------------

    def _write(self, batch: Batch) -> None:
        """The HTTP part: look up lost answers by identifier, then send the rest."""
        lost = {row.id for row in batch.rows if row.outcome_unknown}
        unknown = [a for a in batch.attempts if not a.is_update and a.rendered.row_id in lost]
        if unknown:
            self._verify_lost(unknown)
        self._send([a for a in batch.attempts if a.outcome is None and a.error is None])

    def _prepare(self, token: str, rows: list[OutboxRow]) -> list[Attempt]:
        """Render each row as the first type the EHR takes; rows nothing can be written for are settled here."""
        attempts: list[Attempt] = []
        now = self.settings.clock()
        with self.ctx.db.session() as session:
            held = outbox.hold_all(session, [r.id or 0 for r in rows], token)
            items = preload_items(session, list(held.values()))
            for claimed in rows:
                row = held.get(claimed.id or 0)
                if row is None:
                    continue
                chain = fallback_chain(row.resource_type, self.settings.writeback_fallbacks)
                start = chain.index(row.written_type) if row.written_type in chain else 0
                reasons = [row.degraded_reason] if start and row.degraded_reason else []
                target = None
                for candidate in chain[start:]:
                    refused = refused_by_profile(self.connection.capability_profile or {}, candidate)
                    if refused is None:
                        target = candidate
                        break
                    reasons.append(f"{candidate}: {refused}")
                if target is None:
                    outbox.settle_kept(row, now, "; ".join(reasons))
                    self._count("kept")
                    continue
                if target != row.resource_type:
                    row.degraded_reason = "; ".join(reasons)[:500] or row.degraded_reason
                try:
                    rendered = render(session, row, target, items)
                except ValidationError as exc:
                    outbox.settle_failed(row, now, f"cannot be written: {exc}", retry_in_s=0, max_attempts=0,
                                         outcome_unknown=False)
                    self._count("dead")
                    continue
                if target != (row.written_type or row.resource_type):  # None means the preferred type
                    row.written_type = target
                    session.add(row)
                attempts.append(Attempt(rendered, token,
                                        version_id=row.version_id if rendered.resource.get("id") else None))
        return attempts

    def _verify_lost(self, attempts: list[Attempt]) -> None:
        """A create whose answer was lost may have happened: look it up by identifier before writing again."""
        by_type: dict[str, list[Attempt]] = {}
        for attempt in attempts:
            by_type.setdefault(attempt.rendered.resource_type, []).append(attempt)
        for resource_type, group in by_type.items():
            try:
                found = self.writer.search_by_identifier(resource_type, outbox.IDENTIFIER_SYSTEM,
                                                         [a.rendered.identifier_value for a in group])
            except EhrError as exc:
                for attempt in group:
                    attempt.error = exc
                continue
            for attempt in group:
                copies = [r for r in found if _has_identifier(r, attempt.rendered.identifier_value)]
                if copies:
                    self._adopt(attempt, copies)

    def _adopt(self, attempt: Attempt, copies: list[dict[str, Any]]) -> None:
        """The EHR has it already (one copy, or several to reconcile): turn the create into an update."""
        keep = self._reconcile(attempt, copies) if len(copies) > 1 else copies[0]
        if keep.get("status") == WITHDRAWN:  # staff withdrew it while our answer was lost: not revived
            attempt.error = PermanentEhrError(f"cannot be written: {withdrawn(keep)}")
            return
        attempt.rendered.resource["id"] = keep["id"]
        attempt.version_id = version_of(keep)
        attempt.notes.append(f"found {keep['resourceType']}/{keep['id']} by identifier")

    def _reconcile(self, attempt: Attempt, copies: list[dict[str, Any]]) -> dict[str, Any]:
        """Keep the oldest live copy; mark the others entered-in-error where the EHR allows; record it for IT."""
        live = [c for c in copies if c.get("status") != "entered-in-error"] or copies
        live.sort(key=lambda c: (str((c.get("meta") or {}).get("lastUpdated") or ""), str(c.get("id"))))
        keep, extras = live[0], live[1:]
        marked: list[str] = []
        for extra in extras:
            retired = dict(extra, status="entered-in-error")
            try:
                self.writer.update(retired, version_of(extra))
                marked.append(f"{extra['resourceType']}/{extra['id']}")
            except EhrError as exc:
                attempt.notes.append(f"could not mark {extra['resourceType']}/{extra['id']} entered-in-error: {exc}")
        with self.ctx.db.session() as session:
            row = outbox.held(session, attempt.rendered.row_id, attempt.token)
            if row is not None:
                row.duplicates = [*row.duplicates, *marked, *(f"unmarked:{e['resourceType']}/{e['id']}"
                                                             for e in extras if f"{e['resourceType']}/{e['id']}"
                                                             not in marked)]
                session.add(row)
            audit.record(session, self.settings.clock, self.actor, "writeback.duplicates",
                         entity=f"{keep['resourceType']}/{keep['id']}", count=len(extras),
                         outcome="success" if len(marked) == len(extras) else "partial",
                         detail=f"kept {keep['id']}, marked {len(marked)} of {len(extras)} entered-in-error")
        self._count("duplicates", len(extras))
        log.warning("outbox row %s: %d duplicate(s) on the EHR; kept %s/%s", attempt.rendered.row_id, len(extras),
                    keep["resourceType"], keep["id"])
        return keep

    def _send(self, attempts: list[Attempt]) -> None:
        if self.bundle_type and len(attempts) > 1:
            try:
                self._send_bundle(attempts)
                return
            except PermanentEhrError as exc:  # a transaction refused as a whole: find the bad entry one by one
                log.info("bundle refused (%s); sending %d writes one by one", loggable(exc), len(attempts))
            except EhrError as exc:
                for attempt in attempts:
                    attempt.error = exc
                return
        for attempt in attempts:
            self._send_one(attempt)

    def _send_bundle(self, attempts: list[Attempt]) -> None:
        entries = [BundleWrite.update(a.rendered.resource, a.version_id) if a.is_update else
                   BundleWrite.create(a.rendered.resource, _if_none_exist(a.rendered)) for a in attempts]
        outcomes = self.writer.post_bundle("transaction" if self.bundle_type == "transaction" else "batch", entries)
        for attempt, result in zip(attempts, outcomes, strict=True):
            attempt.error = result.error()
            if attempt.error is None:
                attempt.outcome = result
            elif isinstance(attempt.error, PreconditionFailed):
                self._send_one(attempt, after=attempt.error)  # a 412: merge (update) or reconcile (create) alone

    def _send_one(self, attempt: Attempt, after: EhrError | None = None) -> None:
        rendered = attempt.rendered
        try:
            if isinstance(after, PreconditionFailed):
                raise after
            if attempt.is_update:
                attempt.outcome = self.writer.update(rendered.resource, attempt.version_id)
            else:
                attempt.outcome = self.writer.create(rendered.resource, _if_none_exist(rendered))
            attempt.error = None
        except PreconditionFailed:  # an update raced another writer; a conditional create matched several copies
            if attempt.is_update:
                self._merge_and_update(attempt)
            else:
                self._resolve_multiple(attempt)
        except EhrError as exc:
            attempt.error = exc

    def _resolve_multiple(self, attempt: Attempt) -> None:
        """A conditional create matched several copies (a racing EHR made them): reconcile, then update one."""
        self._verify_lost_one(attempt)
        if attempt.error is None and attempt.is_update:
            self._send_one(attempt)

    def _verify_lost_one(self, attempt: Attempt) -> None:
        try:
            found = self.writer.search_by_identifier(attempt.rendered.resource_type, outbox.IDENTIFIER_SYSTEM,
                                                     [attempt.rendered.identifier_value])
        except EhrError as exc:
            attempt.error = exc
            return
        copies = [r for r in found if _has_identifier(r, attempt.rendered.identifier_value)]
        if copies:
            self._adopt(attempt, copies)
        else:
            attempt.error = TransientEhrError("the EHR reported copies of this write but none could be found")

    def _merge_and_update(self, attempt: Attempt) -> None:
        """412 on update: someone changed the EHR copy. Re-read, follow its status, lay our fields over, retry."""
        rendered = attempt.rendered
        try:
            current = self.writer.read(rendered.resource_type, rendered.resource["id"])
            with self.ctx.db.session() as session:
                row = session.get(OutboxRow, rendered.row_id)
                if row is None:
                    return
                follow_remote_status(session, self.settings.clock, row, current)
                if current.get("status") == WITHDRAWN:  # the EHR withdrew it meanwhile: nothing to lay ours over
                    attempt.error = PermanentEhrError(f"cannot be written: {withdrawn(current)}")
                    return
                fresh = render(session, row, rendered.resource_type)
            merged = merge(current, fresh.resource)
            attempt.rendered = Rendered(rendered.row_id, rendered.resource_type, merged, fresh.revision,
                                        rendered.identifier_value)
            attempt.version_id = version_of(current)
            attempt.outcome = self.writer.update(merged, attempt.version_id)
            attempt.error = None
            attempt.notes.append("merged with the EHR's newer copy")
        except EhrError as exc:
            attempt.error = exc

    # -- record what happened ------------------------------------------------------------------------------

    def _settle(self, batch: Batch) -> None:
        """Store every outcome of the batch in one commit (rows whose claim lapsed meanwhile are left alone)."""
        now = self.settings.clock()
        max_attempts = self.settings.writeback_max_attempts
        attempts = batch.attempts
        with self.ctx.db.session() as session:
            held = outbox.hold_all(session, [a.rendered.row_id for a in attempts], batch.token)
            items = preload_items(session, [r for r in held.values() if r.source.startswith("care_ticket:")])
            written: list[outbox.Written] = []
            for attempt in attempts:
                row = held.get(attempt.rendered.row_id)
                if row is None:
                    log.warning("outbox row %s: claim lapsed before its outcome was stored; the next drain "
                                "will look the write up by identifier", attempt.rendered.row_id)
                    continue
                fhir_id = (attempt.outcome.id if attempt.outcome else None) or attempt.rendered.resource.get("id")
                if attempt.outcome is not None and attempt.error is None and fhir_id:
                    written.append(outbox.Written(row, str(fhir_id), attempt.outcome.version_id,
                                                  attempt.rendered.resource_type, attempt.rendered.revision))
                    self._follow_written(row, attempt, items)
                else:
                    error = attempt.error or TransientEhrError(
                        "the EHR accepted the write but named no id" if attempt.outcome else "no answer")
                    self._settle_error(row, attempt, error, now, max_attempts)
                    session.add(row)
            outbox.settle_written_many(session, now, written)
            self._count("written", len(written))
            if self.needs_it:
                connections.flag_for_it(session, self.settings.clock, self.connection_id, self.needs_it)
            if attempts:  # system access: one audit record per batch, never one per resource
                audit.record(session, self.settings.clock, self.actor, "writeback.batch", count=len(written),
                             entity=",".join(sorted({a.rendered.resource_type for a in attempts})),
                             outcome="success" if len(written) == len(attempts) else "partial",
                             detail=f"{len(attempts) - len(written)} not written" if len(written) < len(attempts)
                             else None)

    @staticmethod
    def _follow_written(row: OutboxRow, attempt: Attempt, items: dict[str, SQLModel]) -> None:
        """What we wrote is what the EHR has: later changes of the Task's status are the EHR's own."""
        if attempt.rendered.resource_type == "Task" and row.source.startswith("care_ticket:"):
            item = items.get(row.source)
            if isinstance(item, CareTicket):
                item.ehr_status = str(attempt.rendered.resource.get("status"))

    def _settle_error(self, row: OutboxRow, attempt: Attempt, error: EhrError, now: Any, max_attempts: int) -> None:
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, WriteRefused) and not attempt.is_update:
            chain = fallback_chain(row.resource_type, self.settings.writeback_fallbacks)
            position = chain.index(attempt.rendered.resource_type) if attempt.rendered.resource_type in chain else -1
            reason = f"{attempt.rendered.resource_type}: {error}"
            reasons = "; ".join(filter(None, [row.degraded_reason, reason]))
            if 0 <= position < len(chain) - 1:
                row.written_type, row.degraded_reason = chain[position + 1], reasons[:500]
                row.status, row.due_at, row.claimed_by, row.claim_until = "pending", now, None, None
                self._count("degraded")
                log.warning("outbox row %s: %s refused, falling back to %s", row.id, attempt.rendered.resource_type,
                            row.written_type)
            else:
                outbox.settle_kept(row, now, reasons)
                self._count("kept")
            return
        if isinstance(error, AuthExpiredError):  # refused again after re-authenticating: IT must act
            self.needs_it = f"the EHR refused the backend token after re-authentication (write-back): {error}"
        transient = isinstance(error, (TransientEhrError, AuthExpiredError))
        retry_after = getattr(error, "retry_after_s", None)
        retry_in = retry_after if retry_after else min(30.0 * 2 ** row.attempts, 3600.0)
        outbox.settle_failed(row, now, text, retry_in_s=retry_in, max_attempts=max_attempts if transient else 0,
                             outcome_unknown=transient and not attempt.is_update)
        self._count("dead" if row.status == "dead" else "failed")


def _wait(futures: list[Future[None]]) -> None:
    for future in futures:
        future.result()  # re-raises what went wrong on the database thread
    futures.clear()


def _if_none_exist(rendered: Rendered) -> str:
    return f"identifier={outbox.IDENTIFIER_SYSTEM}|{rendered.identifier_value}"


def _has_identifier(resource: dict[str, Any], value: str) -> bool:
    return any(i.get("system") == outbox.IDENTIFIER_SYSTEM and i.get("value") == value
               for i in resource.get("identifier") or [])
