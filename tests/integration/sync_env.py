"""A sandbox EHR of its own (tests change its data), a PostgreSQL snapshot database, and the worker context
that syncs one from the other: the sync's real parts, wired as `prm worker` wires them."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from ehr_sandbox.config import SandboxClient, SandboxConfig
from ehr_sandbox.fhir_server import DEFAULT_DATASET
from ehr_sandbox.stack import SandboxStack
from prm import connections, keys, snapshots, streams
from prm.clock import running_from
from prm.connections import DEFAULT_BACKEND_SCOPES
from prm.migrate import upgrade
from tests.support.postgres import fresh_database
from tests.support.settings import make_settings
from workers import runtime
from workers.runtime import WorkerContext
from workers.sync_engine import run_stream
from workers.sync_run import StreamRun

BACKEND_CLIENT = "fhir-prm-backend"
GENERATOR = Path(__file__).resolve().parents[2] / "ehr_sandbox" / "data" / "generate.py"


@dataclass
class SyncEnv:
    stack: SandboxStack
    ctx: WorkerContext
    connection_id: int

    def run_all(self, types: tuple[str, ...] = streams.SYNC_TYPES) -> dict[str, StreamRun]:
        with self.ctx.db.session() as session:
            chosen = [s for s in streams.ensure(session, self.connection_id) if s.resource_type in types]
        runs: dict[str, StreamRun] = {}
        for stream in chosen:  # a bulk first load exports the chosen types together: one run covers them all
            if stream.resource_type not in runs:
                run = runs[stream.resource_type] = run_stream(self.ctx, stream.id or 0, time_budget_s=600,
                                                              together=types)
                runs.update({companion.resource_type: companion for companion in run.companions})
        return runs

    def patient_lists(self, resource_type: str) -> dict[str, Any] | None:
        """What the EHR answered the type's stream: may a search name several patients (workers.patient_lists)?"""
        with self.ctx.db.session() as session:
            [stream] = [s for s in streams.of_connection(session, self.connection_id)
                        if s.resource_type == resource_type]
            return stream.patient_lists

    def snapshot(self, resource_type: str) -> set[tuple[str, str | None]]:
        with self.ctx.db.session() as session:
            return snapshots.versions(session, self.connection_id, resource_type)

    def server(self, resource_type: str, patients: list[str] | None = None) -> set[tuple[str, str | None]]:
        """(id, versionId) of every resource of the type on the FHIR server itself (behind the EHR); of these
        `patients` only, when given."""
        if patients is not None:
            key = "_id" if resource_type == "Patient" else "patient"
            return set().union(*(self._listed(f"{resource_type}?{key}={p}&") for p in patients))
        return self._listed(f"{resource_type}?")

    def _listed(self, search: str) -> set[tuple[str, str | None]]:
        found: set[tuple[str, str | None]] = set()
        url: str | None = f"{self.stack.fhir_internal_url}/{search}_count=1000&_elements=id,meta"
        while url:
            bundle = requests.get(url, timeout=60).json()
            found |= {(e["resource"]["id"], e["resource"].get("meta", {}).get("versionId"))
                      for e in bundle.get("entry", [])}
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            if url:
                url = url.replace(self.stack.iss, self.stack.fhir_internal_url)
        return found

    def set_export_group(self, group_id: str) -> None:
        """Name the export Group, with the scope to read it, as IT would (the EHR's client is allowed it too)."""
        self.grant_backend_scopes(f"{DEFAULT_BACKEND_SCOPES} system/Group.rs", export_group=group_id)

    def grant_backend_scopes(self, scopes: str, export_group: str | None = None) -> None:
        """Set the connection's backend scopes as IT would, and allow the EHR's client the same."""
        with self.ctx.db.session() as session:
            row = connections.by_name(session, "ehr")
            connections.upsert(session, self.ctx.settings.clock, self.ctx.box, connections.ConnectionSpec(
                name=row.name, iss=row.iss, client_id=row.client_id, backend_client_id=row.backend_client_id,
                backend_auth=row.backend_auth, backend_scopes=scopes, export_group=export_group or row.export_group))
            jwks = keys.published_jwks(session)
        self.stack.register_client(backend_client(jwks, scopes))

    def put(self, resource: dict[str, Any]) -> None:
        url = f"{self.stack.fhir_internal_url}/{resource['resourceType']}/{resource['id']}"
        requests.put(url, json=resource, timeout=30).raise_for_status()

    def delete(self, resource_type: str, resource_id: str) -> None:
        requests.delete(f"{self.stack.fhir_internal_url}/{resource_type}/{resource_id}", timeout=30).raise_for_status()

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        return dict(requests.get(f"{self.stack.fhir_internal_url}/{resource_type}/{resource_id}", timeout=30).json())


@contextmanager
def sync_env(tmp_path: Path, profile: str = "default", patients: int | None = None) -> Iterator[SyncEnv]:
    """`patients`: a smaller data set from the generator (its first 63 patients are the scripted edge cases)."""
    config = SandboxConfig(profile=profile, port=0, fhir_internal_port=0)
    dataset = small_dataset(patients) if patients else DEFAULT_DATASET
    with SandboxStack(config, dataset=dataset) as stack, sync_database(stack, tmp_path) as env:
        yield env


def small_dataset(patients: int) -> Path:
    """The generator's data set for `patients` patients, made once per machine (it is deterministic)."""
    out = Path(tempfile.gettempdir()) / f"fhir-prm-dataset-{patients}"
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, str(GENERATOR), "--patients", str(patients), "--out", str(out),
                        "--bundles", "none", "--quiet"], check=True, timeout=300)
    return out


def group_of(group_id: str, patients: list[str]) -> dict[str, object]:
    """A Group of these Patients, as an EHR lists a clinic's patients."""
    return {"resourceType": "Group", "id": group_id, "type": "person", "actual": True, "name": "Dental patients",
            "member": [{"entity": {"reference": f"Patient/{p}"}} for p in patients]}


def backend_client(jwks: dict[str, Any], scopes: str) -> SandboxClient:
    return SandboxClient(client_id=BACKEND_CLIENT, scopes=scopes, auth_method="private_key_jwt", jwks=jwks,
                         grant_types=["client_credentials"])


@contextmanager
def sync_database(stack: SandboxStack, tmp_path: Path, **settings_overrides: Any) -> Iterator[SyncEnv]:
    """A fresh PostgreSQL snapshot database with a connection (and backend client) to `stack`."""
    with fresh_database("prm_sync") as url:
        settings = make_settings(url, tmp_path / "instance", now=running_from(datetime(2026, 11, 20, 12, tzinfo=UTC)),
                                 **settings_overrides)
        ctx = runtime.build(settings)
        upgrade(ctx.db)
        with ctx.db.session() as session:
            row = connections.upsert(session, settings.clock, ctx.box, connections.ConnectionSpec(
                name="ehr", iss=stack.iss, client_id="fhir-prm", backend_client_id=BACKEND_CLIENT,
                backend_auth="private_key_jwt"))
            keys.ensure_active(session, settings.clock, ctx.box, row.id or 0, row.signing_alg)
            jwks = keys.published_jwks(session)
            connection_id = row.id or 0
        stack.register_client(backend_client(jwks, DEFAULT_BACKEND_SCOPES))
        try:
            yield SyncEnv(stack, ctx, connection_id)
        finally:
            ctx.db.dispose()
