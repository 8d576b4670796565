"""Integration fixtures: the sandbox EHR (real FHIR server + SMART authorization server) and the real app.

One sandbox and one app per test run; tests that change EHR data start their own.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ehr_sandbox.cli import BACKEND_CLIENT_ID, backend_client
from ehr_sandbox.config import SandboxClient, SandboxConfig
from ehr_sandbox.ehr_app import EhrServer
from ehr_sandbox.stack import SandboxStack
from prm.connections import DEFAULT_USER_SCOPES
from tests.support.ports import free_port
from tests.support.processes import BIN, Process, prm_process, run_in_terminal, wait_http_ok
from tests.support.settings import METRICS_TOKEN, env_for

IT_ADMIN_USER = "Practitioner/prac-rdc-05"  # mapped to it_admin in the app's sandbox connection
CLIENT_ID = "fhir-prm"


@dataclass
class LiveApp:
    url: str
    database_url: str
    env: dict[str, str]
    workdir: Path
    process: Process

    def prm(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the `prm` CLI against this app's database."""
        return subprocess.run([str(BIN / "prm"), *args], env={**self.process.env}, cwd=self.workdir,
                              capture_output=True, text=True, input=stdin, timeout=60, check=False)

    def prm_in_terminal(self, *args: str) -> tuple[int, str]:
        """Run the `prm` CLI against this app's database as a person at a terminal does."""
        return run_in_terminal([str(BIN / "prm"), *args], env={**self.process.env}, cwd=self.workdir)


@pytest.fixture(scope="session")
def app_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def sandbox(app_port: int) -> Iterator[SandboxStack]:
    app = f"http://127.0.0.1:{app_port}"
    config = SandboxConfig(
        port=free_port(), fhir_internal_port=free_port(), app_launch_url=f"{app}/launch",
        clients=[SandboxClient(client_id=CLIENT_ID, redirect_uris=[f"{app}/launch/callback"],
                               scopes=DEFAULT_USER_SCOPES + " launch/patient offline_access")],
    )
    with SandboxStack(config) as stack:
        yield stack


def start_app(port: int, workdir: Path, database_url: str, sandbox: SandboxStack, **extra_env: str) -> LiveApp:
    env = env_for(database_url, workdir / "instance", PRM_PUBLIC_URL=f"http://127.0.0.1:{port}", **extra_env)
    process = prm_process(f"app-{port}", ["serve", "--port", str(port)], workdir / "logs", env, workdir)
    app = LiveApp(url=f"http://127.0.0.1:{port}", database_url=database_url, env=env, workdir=workdir,
                  process=process)
    for args in (["db", "upgrade"],
                 ["connection", "add", "--name", "sandbox", "--iss", sandbox.iss, "--client-id", CLIENT_ID,
                  "--frame-origin", sandbox.ehr_url, "--role-map", f"{IT_ADMIN_USER}=it_admin"]):
        done = app.prm(*args)
        assert done.returncode == 0, done.stderr
    process.start()
    wait_http_ok(f"{app.url}/healthz", process=process)
    return app


def give_backend_access(live_app: LiveApp, sandbox: SandboxStack) -> None:
    """Let the live app's `sandbox` connection sync, as IT would: fhir-prm registered at the EHR as a Backend
    Services client, and the connection told its client id (idempotent: the connection is updated in place)."""
    sandbox.register_client(backend_client(live_app.url))
    added = live_app.prm("connection", "add", "--name", "sandbox", "--iss", sandbox.iss, "--client-id", CLIENT_ID,
                         "--frame-origin", sandbox.ehr_url, "--role-map", f"{IT_ADMIN_USER}=it_admin",
                         "--backend-client-id", BACKEND_CLIENT_ID, "--backend-auth", "private_key_jwt")
    assert added.returncode == 0, added.stderr


def sync_sandbox(live_app: LiveApp, sandbox: SandboxStack, *types: str) -> None:
    """`prm sync run` of these types of the live app's `sandbox` connection, given backend access first."""
    give_backend_access(live_app, sandbox)
    ran = live_app.prm("sync", "run", "--connection", "sandbox", *[arg for t in types for arg in ("--type", t)])
    assert ran.returncode == 0, ran.stderr + ran.stdout


@pytest.fixture(scope="session")
def live_app(app_port: int, sandbox: SandboxStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """`prm serve` on the embedded default (SQLite file, in-process tasks), connected to the sandbox."""
    workdir = tmp_path_factory.mktemp("live-app")
    app = start_app(app_port, workdir, f"sqlite:///{workdir / 'prm.db'}", sandbox, PRM_METRICS_TOKEN=METRICS_TOKEN)
    yield app
    app.process.stop()


@dataclass
class EhrFront:
    """An extra EHR (authorization server + proxy) with a behaviour profile, in front of the shared FHIR server."""

    server: EhrServer
    connection: str

    @property
    def iss(self) -> str:
        return self.server.config.iss

    @property
    def store(self) -> Any:
        return self.server.smart.store

    def chart_url(self, patient_id: str, user: str | None = None) -> str:
        return f"{self.server.url}/chart/{patient_id}" + (f"?user={user}" if user else "")


@pytest.fixture(scope="session")
def ehr_front(sandbox: SandboxStack, live_app: LiveApp) -> Iterator[Callable[..., EhrFront]]:
    """`ehr_front(profile, scopes=...)`: an EHR with that profile, registered as a connection of the live app."""
    started: dict[tuple[str, str], EhrFront] = {}

    def make(profile: str, scopes: str = DEFAULT_USER_SCOPES) -> EhrFront:
        key = (profile, scopes)
        if key not in started:
            config = SandboxConfig(
                profile=profile, port=free_port(), fhir_internal_port=sandbox.config.fhir_internal_port,
                app_launch_url=f"{live_app.url}/launch",
                clients=[SandboxClient(client_id=CLIENT_ID, redirect_uris=[f"{live_app.url}/launch/callback"],
                                       scopes=DEFAULT_USER_SCOPES + " launch/patient offline_access")],
            )
            server = EhrServer(config).start()
            name = f"{profile}-{len(started)}"
            done = live_app.prm("connection", "add", "--name", name, "--iss", config.iss, "--client-id", CLIENT_ID,
                                "--frame-origin", config.ehr_url, "--scopes", scopes)
            assert done.returncode == 0, done.stderr
            started[key] = EhrFront(server, name)
        return started[key]

    yield make
    for front in started.values():
        front.server.stop()
