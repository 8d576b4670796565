"""Write-back benchmark: fhir-prm's outbox drain against a bare loop posting the same transaction Bundles.

On one sandbox EHR, through its token-checking proxy with a Backend Services token, in one run, for each
database backend (a fresh SQLite file, a fresh PostgreSQL database):
  queue   N outbox rows through the domain, one commit each as an API call makes them: 80%
          `outreach.record_message` (-> Communication), 20% `care_tickets.open_ticket` (-> Task); timed
          apart, it is not part of the drain figure;
  limit   the same items rendered by the same mappers, with the business key suffixed `-limit` (so both
          sides create N fresh resources), posted by a bare `requests.Session` loop as transaction Bundles
          of the drain's batch size, every entry a POST with `ifNoneExist` on its identifier;
  product `workers.writeback.drain_connection` from a fresh WorkerContext until every row is done, with
          PRM_WRITEBACK_BUNDLE=transaction (Settings.writeback_bundle) so it posts the same kind of Bundle.
Both sides run in a child process of their own (the sandbox EHR's proxy lives in this one, so neither shares
its interpreter with the proxy), with the token and the rendered Bundles made before the limit's clock
starts; the drain's clock includes its own discovery and token request (a few ms). The capability check
(`prm connection check`) runs once per database before anything is timed, as it does before any real
drain; with the bundle type forced it only tells the drain that Task and Communication writes are taken.
Each repeat queues N new rows and alternates the order (limit first, then product first, ...); the best of
each side is kept, and a backend's ratio is its best drain over the best limit run interleaved with it
(`writeback_limit_resources_per_s` is the best limit run of all). After every product run every row must be
`done` and the server must hold exactly one resource per key (searched by identifier on the FHIR server
itself); after every limit run every entry must have been created (201): otherwise the benchmark fails.

    python bench/writeback.py [--rows 10000] [--backends sqlite,postgresql] [--repeats 2]
                              [--batch-size 50] [--phases] [--profile DIR]

`--db sqlite|postgresql|both` is a synonym of --backends. `--phases` times the drain's steps (claim, prepare,
send, settle, and the outbox/render calls inside them; a few microseconds a row) and prints where the time
went; `--profile DIR` writes a cProfile of each drain (which slows it: its figures are not comparable).
The last lines are `name: value` figures (STYLE.md, Benchmarks); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import _support as support
import requests

from prm.clock import running_from

CHILD_FLAG = "--child"
DATA_ENCOUNTERS = 2000  # a small generated set (~270 patients): the written resources only refer to them
TICKET_EVERY = 5  # one row in five is a care ticket (Task), the others outreach messages (Communication)
VERIFY_CHUNK = 50  # identifier values per verification search
FHIR_JSON = "application/fhir+json"


# ---------------------------------------------------------------- queueing through the domain

def queue_rows(tgt: support.Target, patients: list[str], keys: list[str], clock: str) -> float:
    """One outbox row per key, each in its own commit as one API call makes it; returns the seconds taken."""
    from prm import care_tickets, connections, outreach
    from prm.audit import Actor
    from prm.followup_models import CareTicketCreate, OutreachMessageCreate

    actor = Actor(kind="user", name="Practitioner/prac-bench-01", role="clinician")
    ctx = support.build_context_with(tgt.database_url, tgt.instance_dir, now=clock)
    try:
        started = time.monotonic()
        for n, key in enumerate(keys):
            patient = patients[n % len(patients)]
            with ctx.db.session() as session:
                row = connections.get(session, tgt.connection_id)
                assert row is not None
                if n % TICKET_EVERY == TICKET_EVERY - 1:
                    spec = CareTicketCreate(patient_id=patient, reason="callback-request",
                                            description=f"Call the patient back about the appointment change ({n})",
                                            priority="routine", business_key=key)
                    _, created = care_tickets.open_ticket(session, ctx.settings.clock, row, spec, actor)
                else:
                    message = OutreachMessageCreate(
                        patient_id=patient, channel="sms", purpose="reminder", business_key=key,
                        text=f"Reminder: your dental check-up is tomorrow at 09:30 (message {n}).")
                    _, created = outreach.record_message(session, ctx.settings.clock, row, message, actor)
                if not created:
                    raise RuntimeError(f"business key {key} was already used: keys must be new to the run")
        return time.monotonic() - started
    finally:
        ctx.db.dispose()


def limit_bundles(tgt: support.Target, keys: list[str], batch_size: int) -> list[dict[str, Any]]:
    """The queued items rendered by the product's own mappers, keys suffixed `-limit`, as transaction Bundles
    of `batch_size` entries shaped as FhirWriter.post_bundle shapes them (in the order the drain claims them)."""
    from sqlmodel import col, select

    from fhir_mappings.communication import outreach_message_to_communication
    from fhir_mappings.task import care_ticket_to_task
    from prm import outbox
    from prm.followup_models import CareTicket, OutreachMessage

    ctx = support.build_context(tgt.database_url, tgt.instance_dir)
    try:
        with ctx.db.session() as session:
            items: dict[str, OutreachMessage | CareTicket] = {}
            for at in range(0, len(keys), 500):
                chunk = keys[at:at + 500]
                for message in session.exec(select(OutreachMessage).where(
                        col(OutreachMessage.business_key).in_(chunk),
                        OutreachMessage.connection_id == tgt.connection_id)):
                    items[message.business_key] = message
                for ticket in session.exec(select(CareTicket).where(
                        col(CareTicket.business_key).in_(chunk), CareTicket.connection_id == tgt.connection_id)):
                    items[ticket.business_key] = ticket
    finally:
        ctx.db.dispose()
    missing = [k for k in keys if k not in items]
    if missing:
        raise RuntimeError(f"{len(missing)} queued items not found, e.g. {missing[:3]}")
    entries = []
    for key in keys:
        item = items[key]
        twin = {**item.model_dump(), "business_key": f"{key}-limit"}
        if isinstance(item, CareTicket):
            resource = care_ticket_to_task(CareTicket.model_validate(twin))
        else:
            resource = outreach_message_to_communication(OutreachMessage.model_validate(twin))
        entries.append({
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": f"identifier={outbox.IDENTIFIER_SYSTEM}|{key}-limit"},
        })
    return [{"resourceType": "Bundle", "type": "transaction", "entry": entries[at:at + batch_size]}
            for at in range(0, len(entries), batch_size)]


# ---------------------------------------------------------------- the two sides, each in a child process

def run_limit_child(args: dict[str, Any]) -> dict[str, Any]:
    """POST every Bundle in turn over one keep-alive session; every entry must come back 201."""
    bundles = json.loads(Path(args["bundles"]).read_text())
    headers = {"Authorization": f"Bearer {args['token']}", "Content-Type": FHIR_JSON, "Accept": FHIR_JSON,
               "Prefer": "return=minimal"}
    statuses: Counter[str] = Counter()
    with requests.Session() as http:
        started = time.monotonic()
        for bundle in bundles:
            response = http.post(args["iss"], json=bundle, headers=headers, timeout=300)
            if response.status_code != 200:
                raise RuntimeError(f"limit: transaction answered HTTP {response.status_code}: {response.text[:300]}")
            for entry in response.json().get("entry", []):
                statuses[str((entry.get("response") or {}).get("status", "")).split(" ")[0]] += 1
        elapsed = time.monotonic() - started
    return {"seconds": elapsed, "resources": sum(len(b["entry"]) for b in bundles), "statuses": dict(statuses),
            "peak_rss_mb": support.peak_rss_mb()}


def time_phases() -> dict[str, float]:
    """Wall seconds spent in each step of the drain, summed over the run: the Drain's steps, the outbox calls
    and the mapping it makes, wrapped (nothing else changes) in this child only. A few perf_counter calls a row.
    The drain is a pipeline (a database thread, HTTP threads), so the steps overlap: shares add up past 100%."""
    from connector.fhir_writer import FhirWriter
    from workers import writeback_engine as engine

    spent: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    for owner, attribute, name in (
            (engine.outbox, "claim", "claim (db thread)"),
            (engine.Drain, "_prepare", "prepare (db thread, one session)"),
            (engine.outbox, "hold_all", "  outbox.hold_all (prepare + settle)"),
            (engine, "preload_items", "  preload_items (prepare + settle)"),
            (engine, "render", "  render: mapper + R4B validation"),
            (engine.Drain, "_verify_lost", "verify lost"),
            (engine.Drain, "_write", "write (HTTP threads)"),
            (FhirWriter, "post_bundle", "  FhirWriter.post_bundle (HTTP + JSON)"),
            (engine.Drain, "_settle", "settle (db thread, one session)"),
            (engine.outbox, "settle_written_many", "  outbox.settle_written_many")):
        setattr(owner, attribute, timed(name, getattr(owner, attribute)))
    return spent


def run_drain_child(args: dict[str, Any]) -> dict[str, Any]:
    """drain_connection from a fresh WorkerContext, again while it reports more, until nothing is left."""
    from workers.writeback import drain_connection

    phases = time_phases() if args.get("phases") else {}
    ctx = support.build_context_with(args["database_url"], Path(args["instance_dir"]), now=args["clock"],
                                     writeback_bundle="transaction", writeback_batch_size=args["batch_size"])
    rss_before = support.current_rss_mb()
    profiler = cProfile.Profile() if args.get("profile") else None
    totals: Counter[str] = Counter()
    calls = 0
    try:
        started = time.monotonic()
        if profiler:
            profiler.enable()
        while True:
            drained = drain_connection(ctx, args["connection_id"], time_budget_s=3600)
            if drained is None:
                raise RuntimeError(f"connection {args['connection_id']} is disabled or gone: nothing was drained")
            calls += 1
            totals.update({k: v for k, v in vars(drained).items() if k != "more"})
            if not drained.more or calls >= 100:
                break
        if profiler:
            profiler.disable()
        elapsed = time.monotonic() - started
        if profiler:
            profiler.dump_stats(args["profile"])
    finally:
        ctx.db.dispose()
    return {"seconds": elapsed, "calls": calls, **totals, "rss_before_mb": rss_before,
            "peak_rss_mb": support.peak_rss_mb(), "phases": dict(phases)}


def child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, CHILD_FLAG, kind, json.dumps(args)], check=False,
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child exited with {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- checks

def on_server(fhir_internal_url: str, resource_type: str, values: list[str]) -> Counter[str]:
    """How many resources of the type carry each of `values` as our business identifier (on the FHIR server
    itself, behind the proxy's checks)."""
    from prm import outbox

    found: Counter[str] = Counter()
    with requests.Session() as http:
        for at in range(0, len(values), VERIFY_CHUNK):
            chunk = values[at:at + VERIFY_CHUNK]
            url: str | None = f"{fhir_internal_url}/{resource_type}"
            params: list[tuple[str, str]] | None = [
                ("identifier", ",".join(f"{outbox.IDENTIFIER_SYSTEM}|{v}" for v in chunk)),
                ("_count", str(4 * VERIFY_CHUNK)), ("_elements", "identifier")]
            while url:
                response = http.get(url, params=params, timeout=120)
                response.raise_for_status()
                bundle = response.json()
                for entry in bundle.get("entry", []):
                    for identifier in entry["resource"].get("identifier", []):
                        if identifier.get("system") == outbox.IDENTIFIER_SYSTEM and identifier.get("value") in chunk:
                            found[identifier["value"]] += 1
                url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
                params = None
    return found


def verify_product(tgt: support.Target, fhir_internal_url: str, keys: list[str], tickets: set[str]) -> None:
    """Every row of the repeat is done with an id, and the server holds exactly one resource per key."""
    from sqlmodel import col, select

    from prm.models import OutboxRow

    ctx = support.build_context(tgt.database_url, tgt.instance_dir)
    try:
        with ctx.db.session() as session:
            rows: list[OutboxRow] = []
            for at in range(0, len(keys), 500):
                rows += session.exec(select(OutboxRow).where(col(OutboxRow.identifier_value).in_(keys[at:at + 500])))
    finally:
        ctx.db.dispose()
    statuses = Counter(r.status for r in rows)
    if len(rows) != len(keys) or statuses != Counter({"done": len(keys)}):
        raise RuntimeError(f"product ({tgt.backend}): {len(rows)} rows for {len(keys)} keys, statuses {dict(statuses)}")
    if any(not r.fhir_id or not r.version_id for r in rows) or \
            len({(r.written_type, r.fhir_id) for r in rows}) != len(rows):
        raise RuntimeError(f"product ({tgt.backend}): rows without an id/version, or two rows with one resource")
    wrong_type = [r.identifier_value for r in rows if r.written_type != ("Task" if r.identifier_value in tickets
                                                                            else "Communication")]
    if wrong_type:
        raise RuntimeError(f"product ({tgt.backend}): {len(wrong_type)} rows written as another type: {wrong_type[:3]}")
    for resource_type, group in (("Task", [k for k in keys if k in tickets]),
                                 ("Communication", [k for k in keys if k not in tickets])):
        counts = on_server(fhir_internal_url, resource_type, group)
        bad = {k: counts.get(k, 0) for k in group if counts.get(k, 0) != 1}
        if bad:
            raise RuntimeError(f"product ({tgt.backend}): {len(bad)} {resource_type} keys not exactly once on the "
                               f"server, e.g. {dict(list(bad.items())[:5])}")


def verify_limit(result: dict[str, Any], rows: int) -> None:
    if result["resources"] != rows or result["statuses"] != {"201": rows}:
        raise RuntimeError(f"limit: {result['resources']} entries posted, answers {result['statuses']} "
                           f"(every one of {rows} must be 201 Created)")


# ---------------------------------------------------------------- the run

def bench(rows: int, backends: list[str], repeats: int, batch_size: int, profile_dir: Path | None,
          workdir: Path, phases: bool = False) -> dict[str, float]:
    from workers.connection_check import check_connection

    figures: dict[str, float] = {}
    data_dir = support.dataset(DATA_ENCOUNTERS)
    patients = support.patient_ids(data_dir)
    run_id = uuid.uuid4().hex[:8]
    clock = running_from(support.DATASET_NOW)  # one running clock for every process: rows queued are due in the drain
    support.say(f"run {run_id}: {rows} rows a repeat, {repeats} repeat(s), batches of {batch_size}, "
                f"{len(patients)} patients on the server")
    limit_rps: dict[str, list[float]] = {}
    product_rps: dict[str, list[float]] = {}
    queue_rps: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    with support.sandbox(data_dir) as stack, contextlib.ExitStack() as dbs:
        for backend in backends:
            tgt = dbs.enter_context(support.target(backend, stack, workdir, backend, None))
            ctx = support.build_context(tgt.database_url, tgt.instance_dir)
            try:
                profile = check_connection(ctx, tgt.connection_id)
            finally:
                ctx.db.dispose()
            writes = {t: (profile.get("writes") or {}).get(t, {}).get("ok") for t in ("Task", "Communication")}
            support.say(f"{backend}: capability check {'ok' if profile.get('ok') else 'FAILING'}, writes {writes}")
            limit_rps[backend], product_rps[backend], queue_rps[backend] = [], [], []
            for rep in range(repeats):
                keys = [f"bench/{run_id}-{backend}-{rep}-{n}" for n in range(rows)]
                tickets = {k for n, k in enumerate(keys) if n % TICKET_EVERY == TICKET_EVERY - 1}
                seconds = queue_rows(tgt, patients, keys, clock)
                queue_rps[backend].append(rows / seconds)
                support.say(f"{backend} #{rep}: queued {rows} rows ({len(tickets)} tickets) in {seconds:.1f} s "
                            f"= {rows / seconds:.0f}/s")
                bundles_file = workdir / f"bundles-{backend}-{rep}.json"
                bundles_file.write_text(json.dumps(limit_bundles(tgt, keys, batch_size)))
                token = support.backend_token(tgt)
                sides = ["limit", "product"] if rep % 2 == 0 else ["product", "limit"]
                for side in sides:
                    if side == "limit":
                        result = child("limit", {"iss": stack.iss, "token": token, "bundles": str(bundles_file)})
                        verify_limit(result, rows)
                        limit_rps[backend].append(rows / result["seconds"])
                        support.say(f"{backend} #{rep}: limit, {result['resources']} resources in "
                                    f"{result['seconds']:.1f} s = {limit_rps[backend][-1]:.0f}/s")
                    else:
                        prof = profile_dir / f"drain-{backend}-{rep}.prof" if profile_dir else None
                        result = child("drain", {**tgt.child_args(), "batch_size": batch_size, "clock": clock,
                                                 "profile": str(prof) if prof else None, "phases": phases})
                        if result["written"] != rows or result["claimed"] != rows:
                            raise RuntimeError(f"product ({backend}): {result}")
                        verify_product(tgt, stack.fhir_internal_url, keys, tickets)
                        product_rps[backend].append(rows / result["seconds"])
                        peaks[backend] = max(peaks.get(backend, 0.0), result["peak_rss_mb"])
                        support.say(f"{backend} #{rep}: product, {result['written']} written in "
                                    f"{result['seconds']:.1f} s = {product_rps[backend][-1]:.0f}/s "
                                    f"({result['calls']} drain call(s)), verified; peak RSS "
                                    f"{result['peak_rss_mb']:.0f} MB (after imports {result['rss_before_mb']:.0f})")
                        for phase, spent in result["phases"].items():
                            support.say(f"    {phase:<48} {spent:7.2f} s  {1000 * spent / rows:6.3f} ms/row  "
                                        f"{100 * spent / result['seconds']:5.1f}%")
                bundles_file.unlink()
    best_limit = max(r for rates in limit_rps.values() for r in rates)
    figures["writeback_rows"] = rows
    figures["writeback_batch_size"] = batch_size
    figures["writeback_queue_rows_per_s"] = max(r for rates in queue_rps.values() for r in rates)
    figures["writeback_limit_resources_per_s"] = best_limit
    for backend in backends:
        best = max(product_rps[backend])
        own_limit = max(limit_rps[backend])  # the limit runs interleaved with this backend's product runs
        support.say(f"{backend}: product {', '.join(f'{r:.0f}' for r in product_rps[backend])}/s, limit "
                    f"{', '.join(f'{r:.0f}' for r in limit_rps[backend])}/s, queue "
                    f"{', '.join(f'{r:.0f}' for r in queue_rps[backend])} rows/s")
        figures[f"writeback_queue_rows_per_s_{backend}"] = max(queue_rps[backend])
        figures[f"writeback_limit_resources_per_s_{backend}"] = own_limit
        figures[f"writeback_resources_per_s_{backend}"] = best
        figures[f"writeback_ratio_to_bundle_posting_{backend}"] = best / own_limit
    figures["peak_rss_mb"] = max(peaks.values())
    return figures


def print_profile(path: Path, top: int = 35) -> None:
    print(f"\n== {path.name}: top {top} by own time", file=sys.stderr)
    pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(top)
    print(f"== {path.name}: top {top} by cumulative time", file=sys.stderr)
    pstats.Stats(str(path), stream=sys.stderr).sort_stats("cumulative").print_stats(top)


def fmt(name: str, value: float) -> str:
    return f"{value:.3f}" if "ratio" in name else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10000, help="outbox rows queued and drained per repeat")
    parser.add_argument("--backends", "--db", default="sqlite,postgresql",
                        help="sqlite, postgresql, both, or a comma-separated list")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side per backend (best kept)")
    parser.add_argument("--batch-size", type=int, default=50,
                        help="rows per claim and entries per Bundle (PRM_WRITEBACK_BATCH_SIZE; 50 by default)")
    parser.add_argument("--profile", type=Path, help="cProfile each drain into this folder and print the top costs")
    parser.add_argument("--phases", action="store_true",
                        help="time the drain's steps (claim, prepare, send, settle...) and print where the time went")
    opts = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the sandbox EHR's per-request lines
    backends = ["sqlite", "postgresql"] if opts.backends == "both" else [b for b in opts.backends.split(",") if b]
    if "postgresql" in backends:
        support.ensure_postgresql()
    if opts.profile:
        opts.profile.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fhir-prm-bench-") as tmp:
        figures = bench(opts.rows, backends, max(1, opts.repeats), opts.batch_size, opts.profile, Path(tmp),
                        opts.phases)
    if opts.profile:
        for path in sorted(opts.profile.glob("drain-*.prof")):
            print_profile(path)
    support.say(f"whole run {time.monotonic() - started:.0f} s")
    figures["bench_wall_s"] = time.monotonic() - started
    for name, value in figures.items():
        print(f"{name}: {fmt(name, value)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == CHILD_FLAG:
        runner = run_limit_child if sys.argv[2] == "limit" else run_drain_child
        print(json.dumps(runner(json.loads(sys.argv[3]))))
        sys.exit(0)
    sys.exit(main())
