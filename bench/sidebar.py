"""Sidebar benchmark: the overview a sidebar open reads from fhir-prm's snapshot, against the live Patient read it
replaced.

For each size (about N Encounters with their patients, made by the data generator and loaded into the sandbox
EHR) and each database backend, in one run: fhir-prm's full first sync of the connection (as `prm sync run`
does it; not timed) into a fresh database, then, for a fixed sample of the data set's patients (every k-th),
alternately:
  limit   the same picture asked of the EHR live, through the sandbox EHR's token-checking proxy with a
          Backend Services token (got before the clock starts): the Patient read as the sidebar read it before
          the sync existed (`connector.ehr_client.EhrClient.read`, `patient_header_from_fhir`); the last visit
          and the next booking (a sorted search each, `_count=1`); the past year's visits and no-shows
          (`_summary=count` each); the Location of each for its name;
  product `prm.patient_overview.overview` for that patient in a session of its own, as a sidebar open now
          reads it: the header, last visit, next booking, past year's counts, freshness and the notices.
The Patient read alone (what the sidebar did before, and still does for a patient not synced yet) is timed
too. Each is timed per patient; the figures are p50 and p95 in ms, and the live picture's p95 over the
overview's (`sidebar_overview_ratio_to_live_picture`, above 1 where the snapshot is faster). Everything here
is on one machine: an EHR across a network adds its round trip to every live request, never to the overview.
The EHR's proxy runs in this process, as in the other benchmarks; the FHIR server behind it does not.

    python bench/sidebar.py [--sizes 10000,50000] [--backends sqlite,postgresql] [--patients 60]

The last lines are `name: value` figures (STYLE.md, Benchmarks); progress goes to stderr. Data sets and loaded
FHIR databases are shared with bench/sync.py's cache (~/.cache/fhir-prm/bench).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import _support as support
import requests
from sqlmodel import select

from connector.ehr_client import EhrClient
from ehr_sandbox.stack import SandboxStack
from fhir_mappings.patient import patient_header_from_fhir
from prm import connections
from prm.patient_overview import AHEAD, CAME, MISSED, MISSED_WINDOW, overview
from prm.snapshot_models import PatientRecord
from workers.sync_connection import sync_connection


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def live_occasions(http: requests.Session, iss: str, token: str, patient_id: str,
                   now: datetime) -> tuple[list[dict[str, Any]], list[int]]:
    """The last visit and next booking as searches at the EHR, and the past year's counts: (the visit and the
    booking found, for their Locations; [visits, no-shows])."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    year_ago, at = (now - MISSED_WINDOW).strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y-%m-%dT%H:%M:%SZ")
    patient = f"Patient/{patient_id}"
    searches = [
        ("Encounter", [("patient", patient), ("status", ",".join(CAME)), ("date", f"le{at}"), ("_sort", "-date"),
                       ("_count", "1")]),
        ("Appointment", [("patient", patient), ("status", ",".join(AHEAD)), ("date", f"gt{at}"), ("_sort", "date"),
                         ("_count", "1")]),
        ("Encounter", [("patient", patient), ("status", ",".join(CAME)), ("date", f"gt{year_ago}"),
                       ("date", f"le{at}"), ("_summary", "count")]),
        ("Appointment", [("patient", patient), ("status", MISSED), ("date", f"gt{year_ago}"), ("date", f"le{at}"),
                         ("_summary", "count")]),
    ]
    found, totals = [], []
    for resource_type, params in searches:
        answer = http.get(f"{iss}/{resource_type}", params=params, headers=headers, timeout=30)
        answer.raise_for_status()
        bundle = answer.json()
        found += [entry["resource"] for entry in bundle.get("entry", [])]
        if ("_summary", "count") in params:
            totals.append(int(bundle["total"]))
    return found, totals


def bench_backend(stack: SandboxStack, backend: str, sample: list[str], workdir: Path,
                  label: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    with support.target(backend, stack, workdir, f"{backend}-{label}", support.BULK_PROFILE) as tgt:
        ctx = support.build_context(tgt.database_url, tgt.instance_dir)
        try:
            started = time.monotonic()
            runs = sync_connection(ctx, tgt.connection_id, time_budget_s=3600)
            stored = sum(run.stored for run in runs.values())
            support.say(f"{backend}: first sync of {stored} resources in {time.monotonic() - started:.1f} s")
            token = support.backend_token(tgt)
            client = EhrClient(stack.iss, token, ctx.http, ctx.settings.http_timeout_s)
            with ctx.db.session() as session:
                connection = connections.get(session, tgt.connection_id)
                assert connection is not None
                session.expunge(connection)
            now = ctx.settings.clock()

            def read_overview(patient_id: str) -> None:
                with ctx.db.session() as session:
                    found = overview(session, connection, patient_id, now)
                assert found is not None, f"{patient_id} is not in the snapshot"

            def read_live(patient_id: str) -> None:
                patient_header_from_fhir(client.read("Patient", patient_id))

            def read_live_picture(patient_id: str) -> tuple[set[str], list[int]]:
                read_live(patient_id)
                occasions, totals = live_occasions(ctx.http, stack.iss, token, patient_id, now)
                for found in occasions:
                    for place in found.get("location") or found.get("participant") or []:
                        reference = (place.get("location") or place.get("actor") or {}).get("reference", "")
                        if reference.startswith("Location/"):
                            client.read("Location", reference.removeprefix("Location/"))
                            break
                return {found["id"] for found in occasions}, totals

            def disagrees(patient_id: str) -> bool:
                """The limit must ask for the same picture: the same visit, booking and counts. A merged record
                differs by design (the overview reads the records merged together; the EHR's search, one)."""
                with ctx.db.session() as session:
                    seen = overview(session, connection, patient_id, now)
                    assert seen is not None, f"{patient_id} is not in the snapshot"
                    merged = seen.merged_into is not None or session.exec(
                        select(PatientRecord.id).where(PatientRecord.replaced_by == patient_id)).first() is not None
                ids = {o.fhir_id for o in (seen.last_visit, seen.next_booking) if o is not None}
                if read_live_picture(patient_id) == (ids, [seen.visits_past_year, seen.missed_past_year]):
                    return False
                if not merged:
                    raise SystemExit(f"the live picture of {patient_id} differs from its overview: fix the benchmark")
                return True

            merged_sampled = sum(disagrees(patient_id) for patient_id in sample)  # and warms caches, statements
            live, picture, local = [], [], []
            for patient_id in sample:
                live.append(timed_ms(lambda: read_live(patient_id)))  # noqa: B023 (called at once)
                picture.append(timed_ms(lambda: read_live_picture(patient_id)))  # noqa: B023
                local.append(timed_ms(lambda: read_overview(patient_id)))  # noqa: B023
        finally:
            ctx.db.dispose()
    suffix = f"{backend}_{label}"
    figures[f"merged_patients_sampled_{suffix}"] = merged_sampled  # their pictures differ by design (disagrees)
    figures[f"sidebar_overview_p50_ms_{suffix}"] = statistics.median(local)
    figures[f"sidebar_overview_p95_ms_{suffix}"] = percentile(local, 0.95)
    figures[f"live_patient_read_p50_ms_{suffix}"] = statistics.median(live)
    figures[f"live_patient_read_p95_ms_{suffix}"] = percentile(live, 0.95)
    figures[f"live_picture_p50_ms_{suffix}"] = statistics.median(picture)
    figures[f"live_picture_p95_ms_{suffix}"] = percentile(picture, 0.95)
    figures[f"sidebar_overview_ratio_to_live_picture_{suffix}"] = percentile(picture, 0.95) / percentile(local, 0.95)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10000,50000", help="Encounters per data set, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--patients", type=int, default=60, help="patients sampled per size and backend")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    if "postgresql" in backends:
        support.ensure_postgresql()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sidebar-") as tmp:
        for size in [int(s) for s in args.sizes.split(",") if s]:
            data_dir = support.dataset(size)
            ids = support.patient_ids(data_dir)
            step = max(1, len(ids) // args.patients)
            sample = ids[::step][:args.patients]
            label = str(size)
            with support.sandbox(data_dir) as stack:
                for backend in backends:
                    figures.update(bench_backend(stack, backend, sample, Path(tmp), label))
            figures[f"patients_{label}"] = len(ids)
    for name, value in figures.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
