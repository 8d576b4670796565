"""What the benchmarks share: cached generated data sets, the sandbox EHR with a backend client, a fresh
database per backend wired as `prm worker` wires it, and peak-RSS readings."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repository
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from ehr_sandbox.config import SandboxClient, SandboxConfig  # noqa: E402
from ehr_sandbox.stack import SandboxStack  # noqa: E402
from prm import connections, keys  # noqa: E402
from prm.clock import running_from  # noqa: E402
from prm.connections import DEFAULT_BACKEND_SCOPES  # noqa: E402
from prm.migrate import upgrade  # noqa: E402
from tests.support.postgres import ADMIN_URL, fresh_database  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402
from workers import runtime  # noqa: E402
from workers.backend_auth import backend_credentials  # noqa: E402
from workers.runtime import WorkerContext  # noqa: E402

GENERATOR = ROOT / "ehr_sandbox" / "data" / "generate.py"
BACKEND_CLIENT = "fhir-prm-backend"
DATASET_NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
ENCOUNTERS_PER_PATIENT = 7.32  # measured: 1,310 patients -> 9,517 Encounters, 6,540 -> 47,905
BULK_PROFILE = {"sync": {"strategy": {"initial": "bulk-export-system", "incremental": "search-last-updated"}}}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("FHIR_PRM_BENCH_CACHE") or base / "fhir-prm" / "bench")


def patients_for(encounters: int) -> int:
    return max(63, round(encounters / ENCOUNTERS_PER_PATIENT))


def dataset(encounters: int) -> Path:
    """The generated NDJSON set for about `encounters` Encounters; deterministic, so cached by patient count."""
    patients = patients_for(encounters)
    out = cache_root() / "data" / f"patients-{patients}"
    if (out / "manifest.json").exists():
        return out
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run([sys.executable, str(GENERATOR), "--patients", str(patients), "--out", str(tmp),
                    "--bundles", "none", "--quiet"], check=True)
    os.replace(tmp, out)
    say(f"generated {patients} patients in {time.monotonic() - started:.1f} s -> {out}")
    return out


def counts(data_dir: Path) -> dict[str, int]:
    return dict(json.loads((data_dir / "manifest.json").read_text())["counts"])


@contextmanager
def sandbox(data_dir: Path) -> Iterator[SandboxStack]:
    """The sandbox EHR (FHIR server + token-checking proxy) loaded with `data_dir`; the loaded server database
    is kept as a template under the bench cache, so only the first run of a size pays for loading."""
    stack = SandboxStack(SandboxConfig(port=0, fhir_internal_port=0), dataset=data_dir,
                         cache_dir=cache_root() / "sekmet")
    started = time.monotonic()
    with stack:
        say(f"sandbox EHR up with {data_dir.name} in {time.monotonic() - started:.1f} s (iss {stack.iss})")
        yield stack


def ensure_postgresql() -> None:
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError:
        say("PostgreSQL is not answering; running scripts/provision")
        subprocess.run([str(ROOT / "scripts" / "provision")], check=True)


@dataclass
class Target:
    """One fresh database with one connection to the sandbox, for one child process to sync into."""

    backend: str
    database_url: str
    instance_dir: Path
    connection_id: int

    def child_args(self) -> dict[str, Any]:
        return {"database_url": self.database_url, "instance_dir": str(self.instance_dir),
                "connection_id": self.connection_id}


def build_context(database_url: str, instance_dir: Path) -> WorkerContext:
    settings = make_settings(database_url, instance_dir, now=running_from(DATASET_NOW))
    return runtime.build(settings)


@contextmanager
def target(backend: str, stack: SandboxStack, workdir: Path, name: str,
           capability_profile: dict[str, Any] | None) -> Iterator[Target]:
    """A fresh SQLite file or PostgreSQL database, migrated, with the connection and its registered backend
    client (private_key_jwt, inline JWKS), as tests/integration/sync_env.py wires it."""
    instance = workdir / f"instance-{name}"
    client_id = f"{BACKEND_CLIENT}-{name}"  # one backend client per database: each has its own signing key
    instance.mkdir(parents=True, exist_ok=True)
    with _database(backend, instance) as url:
        ctx = build_context(url, instance)
        try:
            upgrade(ctx.db)
            with ctx.db.session() as session:
                row = connections.upsert(session, ctx.settings.clock, ctx.box, connections.ConnectionSpec(
                    name="ehr", iss=stack.iss, client_id="fhir-prm", backend_client_id=client_id,
                    backend_auth="private_key_jwt"))
                keys.ensure_active(session, ctx.settings.clock, ctx.box, row.id or 0, row.signing_alg)
                if capability_profile is not None:
                    row.capability_profile = capability_profile
                    session.add(row)
                jwks = keys.published_jwks(session)
                connection_id = row.id or 0
        finally:
            ctx.db.dispose()
        stack.register_client(SandboxClient(client_id=client_id, scopes=DEFAULT_BACKEND_SCOPES,
                                            auth_method="private_key_jwt", jwks=jwks,
                                            grant_types=["client_credentials"]))
        yield Target(backend, url, instance, connection_id)


@contextmanager
def _database(backend: str, instance: Path) -> Iterator[str]:
    if backend == "sqlite":
        path = instance / "prm.sqlite"
        path.unlink(missing_ok=True)
        yield f"sqlite:///{path}"
    elif backend == "postgresql":
        with fresh_database("prm_bench") as url:
            yield url
    else:
        raise SystemExit(f"unknown backend {backend!r} (sqlite, postgresql)")


def backend_token(tgt: Target) -> str:
    """A SMART Backend Services access token for the target's connection, got the way the sync gets it."""
    ctx = build_context(tgt.database_url, tgt.instance_dir)
    try:
        with ctx.db.session() as session:
            row = connections.get(session, tgt.connection_id)
            assert row is not None
            config = ctx.discovery.get(ctx.http, row.iss, ctx.settings.http_timeout_s)
            creds = backend_credentials(session, ctx.box, row, config.token_endpoint)
            scope = row.backend_scopes
        assert creds is not None
        return ctx.backend_tokens.get(creds, scope, ctx.settings.http_timeout_s).access_token
    finally:
        ctx.db.dispose()


def peak_rss_mb() -> float:
    """This process's peak resident set since exec (VmHWM). Not ru_maxrss: Linux carries the parent's peak
    across fork+exec into it, so a child started by a big parent would report the parent's figure."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


# ---------------------------------------------------------------- added for bench/writeback.py

def build_context_with(database_url: str, instance_dir: Path, **overrides: Any) -> WorkerContext:
    """build_context with Settings overrides (e.g. writeback_bundle="transaction", as PRM_WRITEBACK_BUNDLE sets it;
    `now`, a PRM_NOW value, to share one running clock between processes: build_context starts a new one)."""
    overrides.setdefault("now", running_from(DATASET_NOW))
    settings = make_settings(database_url, instance_dir, **overrides)
    return runtime.build(settings)


def patient_ids(data_dir: Path) -> list[str]:
    """The ids of the data set's Patients, in file order (what the server holds, for references)."""
    ids = []
    with (data_dir / "Patient.ndjson").open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                ids.append(str(json.loads(line)["id"]))
    return ids
