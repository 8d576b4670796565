"""Sync benchmark (issue 5): fhir-prm's first and incremental sync against the server's own read paths.

For each size, on one loaded sandbox EHR and through its token-checking proxy, in one run:
  (a) the server's fastest read path: one Bulk `$export` of the synced types, every file read to the end;
  (b) naive paging: `Type?_count=100` and its `next` links, every page read, type after type; (a) over (b)
      is `bulk_export_ratio_to_naive_paging`, the most a sync loading through the export can reach against (b);
  (ceiling) for scale, not a target: the most the server's searches hand over (`_lastUpdated` windows as the
      search strategy reads, `_count=1000`, four types at once, pages only parsed); no sync through searches
      can beat it;
  (c) fhir-prm's full first sync (`workers.sync_connection`, as `prm sync run`) into a fresh SQLite file and
      a fresh PostgreSQL database, each in a child process so its peak RSS is its own;
then 1% of the Encounters change on the server and each database syncs again (incremental), in the same
process, which has made one more (empty) pass in between, as a running worker has. Each figure is the best
of --repeats runs.

    python bench/sync.py [--sizes 10000,50000] [--backends sqlite,postgresql] [--strategies bulk,search]
                         [--repeats 2] [--profile DIR] [--timeline]

--timeline prints, for each sync, every HTTP request it made (ms since the sync began, thread) and the time
the worker spent waiting for its page helper and storing pages: where a sync's time goes, to stderr.

Sizes are Encounters (the generator makes ~7.3 a patient). Generated data sets and loaded FHIR server
databases are cached under ~/.cache/fhir-prm/bench (FHIR_PRM_BENCH_CACHE overrides). The last lines are
`name: value` figures (STYLE.md, Benchmarks); progress goes to stderr.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _support as support
import requests

SYNCED = ("Organization", "Location", "PractitionerRole", "Patient", "RelatedPerson", "Encounter", "Appointment")
NAIVE_COUNT = 100
CHANGED_FRACTION = 0.01
CHILD_FLAG = "--child"


# ---------------------------------------------------------------- (a) and (b): the server's own read paths

def bulk_export(iss: str, token: str, types: tuple[str, ...] = SYNCED) -> tuple[int, float, float]:
    """One system `$export` of `types`, polled as the server asks (Retry-After), every file streamed and every
    line parsed: (resources, seconds, seconds until the manifest). The server's fastest way to hand over
    everything."""
    auth = {"Authorization": f"Bearer {token}"}
    with requests.Session() as http:
        started = time.monotonic()
        kick = http.get(f"{iss}/$export", params={"_type": ",".join(types)}, timeout=300,
                        headers={**auth, "Accept": "application/fhir+json", "Prefer": "respond-async"})
        if kick.status_code != 202:
            raise RuntimeError(f"$export kick-off: HTTP {kick.status_code} {kick.text[:300]}")
        status_url = kick.headers["Content-Location"]
        while True:
            status = http.get(status_url, headers={**auth, "Accept": "application/json"}, timeout=300)
            if status.status_code == 200:
                manifest = status.json()
                manifest_s = time.monotonic() - started
                break
            if status.status_code != 202:
                raise RuntimeError(f"$export status: HTTP {status.status_code} {status.text[:300]}")
            time.sleep(float(status.headers.get("Retry-After") or 1))
        total = 0
        for item in manifest.get("output", []):
            with http.get(item["url"], headers={**auth, "Accept": "application/fhir+ndjson"}, stream=True,
                          timeout=300) as response:
                response.raise_for_status()
                for line in response.iter_lines(chunk_size=64 * 1024):
                    if line.strip():
                        json.loads(line)
                        total += 1
        elapsed = time.monotonic() - started
        http.delete(status_url, headers=auth, timeout=60)
    return total, elapsed, manifest_s


def naive_paging(iss: str, token: str, types: tuple[str, ...] = SYNCED, count: int = NAIVE_COUNT) -> tuple[int, float]:
    """`Type?_count=100` then its `next` links to the end, type after type: (resources, seconds)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    total = 0
    with requests.Session() as http:
        started = time.monotonic()
        for resource_type in types:
            url: str | None = f"{iss}/{resource_type}?_count={count}"
            while url:
                response = http.get(url, headers=headers, timeout=300)
                response.raise_for_status()
                bundle = response.json()
                total += sum(1 for e in bundle.get("entry", [])
                             if (e.get("search") or {}).get("mode", "match") == "match")
                url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
        elapsed = time.monotonic() - started
    return total, elapsed


CEILING_COUNT = 1000
CEILING_AT_ONCE = 4


def search_ceiling(iss: str, token: str, types: tuple[str, ...] = SYNCED) -> tuple[int, float]:
    """The most the server's searches hand over, for scale (not a target): every type read in `_lastUpdated`
    order by windows from the newest instant seen (`ge`, repeats dropped, as fhir-prm's search strategy reads,
    so no offset grows), at `_count=1000` (sekmet's largest page), four types at once, each page only parsed.
    Nothing a sync does (checks, mapping, storing) is in it, so no sync through searches can be faster; against
    (b) it shows how far above naive paging any sync could reach on this server. (resources, seconds)"""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}

    def read(resource_type: str) -> int:
        seen: set[str] = set()
        since: str | None = None
        with requests.Session() as http:
            while True:
                params = [("_sort", "_lastUpdated"), ("_count", str(CEILING_COUNT))]
                if since:
                    params.append(("_lastUpdated", f"ge{since}"))
                response = http.get(f"{iss}/{resource_type}", params=params, headers=headers, timeout=300)
                response.raise_for_status()
                found = [e["resource"] for e in response.json().get("entry", [])
                         if (e.get("search") or {}).get("mode", "match") == "match"]
                fresh = [r["id"] for r in found if r["id"] not in seen]
                seen.update(fresh)
                if len(found) < CEILING_COUNT:
                    return len(seen)
                if not fresh:
                    raise RuntimeError(f"over {CEILING_COUNT} {resource_type} resources share one lastUpdated: "
                                       "windows cannot read past them")
                since = found[-1]["meta"]["lastUpdated"]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CEILING_AT_ONCE) as pool:
        total = sum(pool.map(read, types))
    return total, time.monotonic() - started


# ---------------------------------------------------------------- (c): fhir-prm's sync, in a child process

def run_sync_child(args: dict[str, Any]) -> None:
    """A worker's life on one connection, as `prm sync run` syncs it (streams side by side, a bulk first load
    exporting every type at once): the full first sync (its figures printed as a JSON line), one more pass
    that finds nothing new, `ready`; then, on `go` (after the parent changed 1% of the Encounters), the
    incremental sync (a second JSON line)."""
    from fhir_mappings import r4_schema
    from workers.sync_connection import sync_connection
    from workers.sync_run import StreamRun

    timeline = Timeline() if args.get("timeline") else None
    ctx = support.build_context(args["database_url"], Path(args["instance_dir"]))
    rss_before = support.current_rss_mb()

    def measured(profile: str | None) -> dict[str, Any]:
        profiler = cProfile.Profile() if profile else None
        started = time.monotonic()
        done_at: dict[str, float] = {}

        def finished(run: StreamRun) -> None:
            done_at[run.resource_type] = time.monotonic()

        if profiler:
            profiler.enable()
            _profile_store_thread(str(profile).removesuffix(".prof") + "-store.prof")
        if timeline:
            timeline.start()
        runs = sync_connection(ctx, args["connection_id"], time_budget_s=3600, finished=finished)
        elapsed = time.monotonic() - started
        if timeline:
            timeline.end()
        if profiler and profile:
            profiler.disable()
            profiler.dump_stats(profile)
        per_type = {t: {"stored": r.stored, "deleted": r.deleted, "quarantined": r.quarantined,
                        "caught_up": r.caught_up, "notes": r.notes, "s": round(done_at[t] - started, 3)}
                    for t, r in runs.items()}
        return {"seconds": elapsed, "stored": sum(t["stored"] for t in per_type.values()),
                "quarantined": sum(t["quarantined"] for t in per_type.values()),
                "caught_up": all(t["caught_up"] for t in per_type.values()), "per_type": per_type,
                "rss_before_mb": rss_before, "peak_rss_mb": support.peak_rss_mb()}

    try:
        print(json.dumps(measured(args.get("profile"))), flush=True)
        sync_connection(ctx, args["connection_id"], time_budget_s=3600)
        # A running worker has checked each type before, so its edge checks are compiled (~50 ms a type, once
        # a process); the first load compiled them in its page helper, not here.
        r4_schema.prepare(SYNCED)
        print("ready", flush=True)
        if sys.stdin.readline().strip() == "go":
            print(json.dumps(measured(args.get("profile_incremental"))), flush=True)
    finally:
        ctx.db.dispose()


def _profile_store_thread(path: str) -> None:
    """A bulk load stores its pages on a stream's thread, which the main thread's profiler does not see:
    profile that thread's `_store_export` into its own file."""
    from workers import sync_engine

    original = getattr(sync_engine._store_export, "__wrapped__", sync_engine._store_export)

    def profiled(*args: Any, **kwargs: Any) -> Any:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            return original(*args, **kwargs)
        finally:
            profiler.disable()
            profiler.dump_stats(path)

    profiled.__wrapped__ = original  # type: ignore[attr-defined]
    sync_engine._store_export = profiled  # type: ignore[assignment]


class Timeline:
    """--timeline: each HTTP request of a sync (urllib3's debug line) with ms since the sync began, and the
    worker's time waiting for its page helper and storing prepared pages."""

    def __init__(self) -> None:
        import workers.prep_helper as prep_helper
        import workers.sync_engine as sync_engine

        self.started = time.monotonic()
        self.spent: dict[str, float] = {}
        self._time(prep_helper.Helper, "result", "waiting for the helper")
        self._time(sync_engine, "commit_prepared", "storing prepared pages")
        self._time(sync_engine, "prepare_lines", "preparing pages itself")
        timeline = self

        class Lines(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                timeline.say(record.getMessage())

        logging.getLogger("urllib3").addHandler(Lines())
        logging.getLogger("urllib3").setLevel(logging.DEBUG)

    def _time(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - began

        setattr(owner, name, timed)

    def say(self, message: str) -> None:
        import threading

        print(f"{(time.monotonic() - self.started) * 1000:8.0f} ms [{threading.current_thread().name:>16}] "
              f"{message}", file=sys.stderr, flush=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self.spent.clear()
        self.say("sync starts")

    def end(self) -> None:
        self.say("sync ends; " + ", ".join(f"{k} {v:.2f} s" for k, v in self.spent.items()))


class SyncChild:
    """One child process per database (see run_sync_child): `full` when started, `incremental()` on cue."""

    def __init__(self, tgt: support.Target, profiles: tuple[Path, Path] | None, timeline: bool = False) -> None:
        self.tgt = tgt
        args = {**tgt.child_args(), "profile": str(profiles[0]) if profiles else None,
                "profile_incremental": str(profiles[1]) if profiles else None, "timeline": timeline}
        self.child = subprocess.Popen([sys.executable, __file__, CHILD_FLAG, json.dumps(args)], text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.full = self._read()
        if self._line() != "ready":  # the pass after the first load: done before the next database starts
            raise RuntimeError(f"sync child for {tgt.backend} did not get ready")

    def _line(self) -> str:
        assert self.child.stdout is not None
        line = self.child.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"sync child for {self.tgt.backend} exited with {self.child.wait()}")
        return line

    def _read(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._line())
        if not result["caught_up"]:
            raise RuntimeError(f"sync into {self.tgt.backend} did not catch up: {result['per_type']}")
        return result

    def incremental(self) -> dict[str, Any]:
        assert self.child.stdin is not None
        self.child.stdin.write("go\n")
        self.child.stdin.flush()
        result = self._read()
        self.child.stdin.close()
        self.child.wait(timeout=60)
        return result

    def stop(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()


# ---------------------------------------------------------------- the 1% change

def change_encounters(fhir_internal_url: str, data_dir: Path, fraction: float = CHANGED_FRACTION) -> int:
    """PUT every 1/fraction-th Encounter back with its status flipped, in one transaction on the FHIR server
    itself (behind the EHR, as another system of the clinic would)."""
    step = round(1 / fraction)
    entries = []
    with (data_dir / "Encounter.ndjson").open(encoding="utf-8") as lines:
        for n, line in enumerate(lines):
            if n % step or not line.strip():
                continue
            resource = json.loads(line)
            resource["status"] = "cancelled" if resource.get("status") == "finished" else "finished"
            entries.append({"resource": resource,
                            "request": {"method": "PUT", "url": f"Encounter/{resource['id']}"}})
    response = requests.post(fhir_internal_url, json={"resourceType": "Bundle", "type": "transaction",
                                                      "entry": entries},
                             headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"},
                             timeout=600)
    response.raise_for_status()
    return len(entries)


# ---------------------------------------------------------------- one size

def bench_size(encounters: int, backends: list[str], strategies: list[str], profile_dir: Path | None,
               workdir: Path, repeats: int, timeline: bool = False) -> dict[str, float]:
    """Each figure is the best of `repeats` (a fresh database each time for a full sync): on this noisy 2-core
    machine, and with exports polled at the server's 1 s Retry-After, single runs vary by a poll interval."""
    figures: dict[str, float] = {}
    data_dir = support.dataset(encounters)
    n = support.counts(data_dir)
    label = str(encounters)
    support.say(f"size {label}: {n['Encounter']} Encounters, {n['Patient']} Patients, "
                f"{sum(n[t] for t in SYNCED)} resources of the synced types")
    with support.sandbox(data_dir) as stack, contextlib.ExitStack() as dbs:
        targets: dict[tuple[str, str, int], support.Target] = {}
        for backend in backends:
            for strategy in strategies:
                profile = support.BULK_PROFILE if strategy == "bulk" else None
                for r in range(repeats):
                    targets[(backend, strategy, r)] = dbs.enter_context(
                        support.target(backend, stack, workdir / label, f"{backend}-{strategy}-{r}", profile))
        token = support.backend_token(next(iter(targets.values())))

        bulk_s = naive_s = float("inf")
        for _ in range(repeats):
            count, seconds, manifest_s = bulk_export(stack.iss, token)
            support.say(f"(a) bulk export: {count} resources in {seconds:.1f} s = {count / seconds:.0f}/s "
                        f"(the manifest after {manifest_s:.1f} s)")
            bulk_s = min(bulk_s, seconds)
        bulk_rps = count / bulk_s
        count, naive_s = naive_paging(stack.iss, token)
        naive_rps = count / naive_s
        support.say(f"(b) naive paging _count={NAIVE_COUNT}: {count} resources in {naive_s:.1f} s = {naive_rps:.0f}/s")
        ceiling_s = float("inf")
        for _ in range(repeats):
            ceiling_count, seconds = search_ceiling(stack.iss, token)
            ceiling_s = min(ceiling_s, seconds)
        support.say(f"(ceiling) searches by windows at _count={CEILING_COUNT}, {CEILING_AT_ONCE} types at once, "
                    f"parsed only: {ceiling_count} resources in {ceiling_s:.1f} s = {ceiling_count / ceiling_s:.0f}/s")
        if ceiling_count != count:
            raise RuntimeError(f"the ceiling's windows read {ceiling_count} resources, the server holds {count}")
        figures[f"bulk_export_resources_per_s_{label}"] = bulk_rps
        figures[f"naive_paging_resources_per_s_{label}"] = naive_rps
        # The most a sync that loads through the export can reach against naive paging: its ratio to the export
        # times this. Where this is under 5, so is any such sync's `sync_ratio_to_naive_paging`.
        figures[f"bulk_export_ratio_to_naive_paging_{label}"] = bulk_rps / naive_rps
        figures[f"search_ceiling_resources_per_s_{label}"] = ceiling_count / ceiling_s
        figures[f"search_ceiling_ratio_to_naive_paging_{label}"] = ceiling_count / ceiling_s / naive_rps
        figures[f"resources_{label}"] = count

        full: dict[tuple[str, str], float] = {}
        children: dict[tuple[str, str, int], SyncChild] = {}
        try:
            for (backend, strategy, r), tgt in targets.items():
                name = f"{backend}-{strategy}-{r}-{label}"
                profiles = (profile_dir / f"sync-{name}.prof", profile_dir / f"incremental-{name}.prof") \
                    if profile_dir else None
                child = children[(backend, strategy, r)] = SyncChild(tgt, profiles, timeline)
                result = child.full
                rps = result["stored"] / result["seconds"]
                support.say(f"(c) full sync {backend}/{strategy} #{r + 1}: {result['stored']} stored "
                            f"({result['quarantined']} quarantined) in {result['seconds']:.1f} s = {rps:.0f}/s, "
                            f"peak RSS {result['peak_rss_mb']:.0f} MB "
                            f"(after imports {result['rss_before_mb']:.0f} MB); "
                            + ", ".join(f"{t} {v['s']:.1f}s" for t, v in result["per_type"].items()))
                if result["stored"] != count:
                    raise RuntimeError(f"stored {result['stored']} but the server holds {count}")
                suffix = f"{backend}_{label}" if strategy == "bulk" else f"{strategy}_{backend}_{label}"
                if result["seconds"] < full.get((backend, strategy), float("inf")):
                    full[(backend, strategy)] = result["seconds"]
                    figures[f"sync_resources_per_s_{suffix}"] = rps
                    figures[f"sync_ratio_to_bulk_export_{suffix}"] = rps / bulk_rps
                    figures[f"sync_ratio_to_naive_paging_{suffix}"] = rps / naive_rps
                figures[f"peak_rss_mb_{suffix}"] = max(figures.get(f"peak_rss_mb_{suffix}", 0.0),
                                                       result["peak_rss_mb"])

            changed = change_encounters(stack.fhir_internal_url, data_dir)
            support.say(f"changed {changed} Encounters on the server")
            incremental: dict[tuple[str, str], float] = {}
            for (backend, strategy, r), child in children.items():
                result = child.incremental()
                encounter = result["per_type"]["Encounter"]["stored"]
                support.say(f"    incremental {backend}/{strategy} #{r + 1}: {result['stored']} stored "
                            f"({encounter} Encounters) in {result['seconds']:.2f} s; "
                            + ", ".join(f"{t} {v['s']:.2f}s" for t, v in result["per_type"].items()))
                if encounter != changed:
                    raise RuntimeError(f"{changed} Encounters changed, the incremental sync stored {encounter}")
                incremental[(backend, strategy)] = min(incremental.get((backend, strategy), float("inf")),
                                                       result["seconds"])
        finally:
            for child in children.values():
                child.stop()
        for (backend, strategy), seconds in incremental.items():
            suffix = f"{backend}_{label}" if strategy == "bulk" else f"{strategy}_{backend}_{label}"
            figures[f"sync_incremental_s_{suffix}"] = seconds
            figures[f"sync_incremental_ratio_to_full_{suffix}"] = seconds / full[(backend, strategy)]
    return figures


def print_profile(path: Path, top: int = 30) -> None:
    print(f"\n== {path.name}: top {top} by own time", file=sys.stderr)
    pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(top)
    print(f"== {path.name}: top {top} by cumulative time", file=sys.stderr)
    pstats.Stats(str(path), stream=sys.stderr).sort_stats("cumulative").print_stats(top)


def fmt(name: str, value: float) -> str:
    if name.startswith("resources_"):
        return f"{value:.0f}"
    if "ratio" in name:
        return f"{value:.3f}"
    if "per_s" not in name and (name.endswith("_s") or "_s_" in name):
        return f"{value:.2f}"
    return f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000", help="Encounters per data set, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--strategies", default="bulk", help="first-load strategies: bulk, search, or both")
    parser.add_argument("--profile", type=Path, help="cProfile each sync into this folder and print the top costs")
    parser.add_argument("--timeline", action="store_true", help="each sync's HTTP requests and waits, to stderr")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best is kept")
    opts = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the sandbox EHR's per-request lines
    sizes = [int(s) for s in opts.sizes.split(",") if s]
    backends = [b for b in opts.backends.split(",") if b]
    strategies = [s for s in opts.strategies.split(",") if s]
    if "postgresql" in backends:
        support.ensure_postgresql()
    if opts.profile:
        opts.profile.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fhir-prm-bench-") as tmp:
        for size in sizes:
            figures.update(bench_size(size, backends, strategies, opts.profile, Path(tmp), max(1, opts.repeats),
                                     opts.timeline))
    if len(sizes) >= 2:  # "peak memory flat in N": the biggest size's peak over the smallest's
        small, big = str(min(sizes)), str(max(sizes))
        for name in [k for k in figures if k.startswith("peak_rss_mb_") and k.endswith(f"_{small}")]:
            other = name[: -len(small)] + big
            if other in figures:
                figures[f"peak_rss_growth_ratio_{name[len('peak_rss_mb_'):-len(small) - 1]}_{small}_to_{big}"] = \
                    figures[other] / figures[name]
    if opts.profile:
        for path in sorted(opts.profile.glob("*.prof")):
            print_profile(path)
    support.say(f"whole run {time.monotonic() - started:.0f} s")
    figures["bench_wall_s"] = time.monotonic() - started
    for name, value in figures.items():
        print(f"{name}: {fmt(name, value)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        run_sync_child(json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
