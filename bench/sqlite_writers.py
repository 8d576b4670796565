"""SQLite writers benchmark: threads of one process writing one file, queued (`prm.sqlite_writer`) or left to
SQLite's busy handler.

The workload is a sync's: each thread takes its stream's lease and gives it up again (`prm.leases.acquire` then
`release`, one transaction each, through `prm.db.Database` sessions) as nine streams of a connection do at once
in an incremental sync. On one migrated SQLite file, in one run, for 1, 4 and 9 threads:
  queued  the product's engine: writers queue on the file's lock in this process (`WriterConnection`);
  busy    the same file through an engine with plain sqlite3 connections, the same pragmas and busy timeout:
          a writer that finds the file locked sleeps in SQLite's busy handler (1, 2, 5, 10 ... ms) and tries again.
Each repeat runs both, alternating which goes first; a figure is the median over the repeats. The figures are
each transaction's time from asking for a session to its commit: its median and 99th percentile, the slowest,
and transactions a second; the ratios are busy over queued (above 1: queued is better).

    python bench/sqlite_writers.py [--transactions 1800] [--repeats 3]

The last lines are `name: value` figures (STYLE.md, Benchmarks); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, create_engine

from prm import leases
from prm.clock import system_clock
from prm.db import Database, configure_sqlite
from prm.migrate import upgrade
from prm.sqlite_writer import WAIT_S

THREADS = (1, 4, 9)
LEASE_S = 60.0
Sessions = Callable[[], AbstractContextManager[Session]]


def busy_handler_sessions(url: str) -> tuple[Sessions, Callable[[], None]]:
    """Sessions on plain sqlite3 connections with the product's pragmas (`prm.db.configure_sqlite`): SQLite's busy
    handler does the waiting."""
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": WAIT_S})
    configure_sqlite(engine)

    @contextmanager
    def session() -> Iterator[Session]:
        with Session(engine, expire_on_commit=False) as each:
            yield each
            each.commit()

    return session, engine.dispose


def run(sessions: Sessions, threads: int, transactions: int, label: str) -> dict[str, float]:
    """`threads` threads, `transactions` lease transactions in all (half taking, half giving up); the times."""
    times: list[float] = []
    failures: list[BaseException] = []
    each = transactions // threads // 2

    def stream(index: int) -> None:
        name, holder = f"bench:{label}:{threads}:{index}", f"worker-{index}"
        try:
            for _ in range(each):
                for step in ("take", "give up"):
                    started = time.perf_counter()
                    with sessions() as session:
                        if step == "take":
                            leases.acquire(session, name, holder, system_clock(), LEASE_S)
                        else:
                            leases.release(session, name, holder)
                    times.append(time.perf_counter() - started)
        except BaseException as exc:  # a benchmark that lost transactions must not print figures
            failures.append(exc)

    workers = [threading.Thread(target=stream, args=(index,)) for index in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{label}, {threads} threads: {failures[0]!r}")
    times.sort()
    return {"p50_ms": times[len(times) // 2] * 1000, "p99_ms": times[int(len(times) * 0.99)] * 1000,
            "max_ms": times[-1] * 1000, "per_s": len(times) / wall}


def bench(transactions: int, repeats: int, folder: Path) -> dict[str, float]:
    url = f"sqlite:///{folder / 'writers.db'}"
    database = Database(url)
    upgrade(database)
    busy, dispose_busy = busy_handler_sessions(url)
    sides: dict[str, Sessions] = {"queued": database.session, "busy": busy}
    seen: dict[tuple[str, int], list[dict[str, float]]] = {}
    for repeat in range(repeats):
        order = ["queued", "busy"] if repeat % 2 == 0 else ["busy", "queued"]
        for threads in THREADS:
            for side in order:
                figures = run(sides[side], threads, transactions, side)
                seen.setdefault((side, threads), []).append(figures)
                print(f"#{repeat + 1} {side:6s} {threads} threads: p50 {figures['p50_ms']:.2f} ms, "
                      f"p99 {figures['p99_ms']:.2f} ms, max {figures['max_ms']:.1f} ms, {figures['per_s']:.0f}/s",
                      file=sys.stderr)
    dispose_busy()
    database.dispose()
    out: dict[str, float] = {}
    for (side, threads), runs in seen.items():
        for key in runs[0]:
            out[f"sqlite_write_{side}_{key}_{threads}_threads"] = statistics.median(r[key] for r in runs)
    for threads in THREADS:
        for key in ("p99_ms", "max_ms"):
            out[f"sqlite_write_{key}_ratio_busy_to_queued_{threads}_threads"] = (
                out[f"sqlite_write_busy_{key}_{threads}_threads"] / out[f"sqlite_write_queued_{key}_{threads}_threads"])
        out[f"sqlite_write_per_s_ratio_queued_to_busy_{threads}_threads"] = (
            out[f"sqlite_write_queued_per_s_{threads}_threads"] / out[f"sqlite_write_busy_per_s_{threads}_threads"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1800, help="lease transactions per run, all threads")
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fhir-prm-bench-") as tmp:
        figures = bench(opts.transactions, max(1, opts.repeats), Path(tmp))
    figures["bench_wall_s"] = time.monotonic() - started
    for name, value in figures.items():
        print(f"{name}: {value:.3f}" if "ratio" in name else f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
