"""`ehr-sandbox up`: the sandbox EHR and fhir-prm together on the embedded default, for a first run.

It starts the FHIR server (loaded with the synthetic data set) and the EHR, registers fhir-prm with
the EHR as a SMART client and as a Backend Services client (private_key_jwt, keys fetched from the app's
/.well-known/jwks.json), registers the EHR with fhir-prm through `prm connection add` (upserted, so
restarts are harmless; it makes the signing key), starts `prm serve`, runs `prm connection check`, and
prints the URL to open. Ports are fixed by default so
the connection's `iss` stays stable across restarts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import click
import requests
from dotenv import load_dotenv

from ehr_sandbox.config import SandboxClient, SandboxConfig
from ehr_sandbox.demo_clock import demo_start
from ehr_sandbox.profiles import PROFILES
from ehr_sandbox.stack import SandboxStack
from prm.clock import running_from
from prm.config import DEMO_CLOCK_FILE, load_settings
from prm.connections import DEFAULT_BACKEND_SCOPES, DEFAULT_USER_SCOPES, SUBSCRIPTION_SCOPES

DATASET_NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)  # the data set's "now" (ehr_sandbox/data/README.md)
CLIENT_ID = "fhir-prm"
BACKEND_CLIENT_ID = "fhir-prm-backend"
BIN = Path(sys.executable).parent


SANDBOX_BACKEND_SCOPES = f"{DEFAULT_BACKEND_SCOPES} {SUBSCRIPTION_SCOPES}"


def _prm(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / "prm"), *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"prm {' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")


def backend_client(app_url: str) -> SandboxClient:
    """fhir-prm's Backend Services client: private_key_jwt with the keys the app publishes; allowed to subscribe,
    so the sandbox shows changes arriving within seconds."""
    return SandboxClient(client_id=BACKEND_CLIENT_ID, scopes=SANDBOX_BACKEND_SCOPES, auth_method="private_key_jwt",
                         jwks_url=f"{app_url}/.well-known/jwks.json", grant_types=["client_credentials"])


def _keep_demo_clock(env: dict[str, str]) -> None:
    """Keep the demo's clock beside its database (prm.config.demo_clock), so a `prm` command in another shell
    shares it; a demo on today's clock, or on a database elsewhere, leaves none behind."""
    path = load_settings(env).instance_dir / DEMO_CLOCK_FILE
    if env.get("PRM_NOW") and not env.get("PRM_DATABASE_URL"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(env["PRM_NOW"] + "\n", encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


def _report_check(env: dict[str, str]) -> None:
    """Run `prm connection check sandbox` and say in one line whether it is green (never stops `up`)."""
    done = subprocess.run([str(BIN / "prm"), "connection", "check", "sandbox"], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode == 0:
        click.secho("  connection check: OK (SMART discovery, backend token, reads, writes)", fg="green")
    else:
        click.secho("  connection check found problems (run `prm connection check sandbox`):", fg="red")
        for line in (done.stdout + done.stderr).splitlines():
            if line.startswith(("ERROR", "prm:")):
                click.echo(f"    {line}")


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException("fhir-prm stopped during start-up (its log is above)")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise click.ClickException(f"fhir-prm did not answer at {url} within {timeout_s:.0f} s")


@click.group(help="The sandbox EHR for development, demos and tests.")
def cli() -> None:
    pass


@cli.command(help="Start the sandbox EHR and fhir-prm (embedded default) and print the URL to open.")
@click.option("--port", default=8790, show_default=True, help="The EHR (shell, OAuth, FHIR proxy).")
@click.option("--fhir-port", default=8791, show_default=True, help="The FHIR server behind the EHR.")
@click.option("--app-port", default=8000, show_default=True, help="fhir-prm.")
@click.option("--profile", default="default", type=click.Choice(sorted(PROFILES)), show_default=True)
@click.option("--real-time", is_flag=True, help="Use today's clock, not the data set's 2026-11-20T12:00Z.")
@click.option("--fresh-ehr", is_flag=True, help="Start the EHR from its data set again, dropping what demos wrote to "
              "it (kept in the instance directory's ehr-sandbox/ otherwise).")
def up(port: int, fhir_port: int, app_port: int, profile: str, real_time: bool, fresh_ehr: bool) -> None:
    app_url = f"http://127.0.0.1:{app_port}"
    config = SandboxConfig(
        profile=profile, port=port, fhir_internal_port=fhir_port, app_launch_url=f"{app_url}/launch",
        clients=[SandboxClient(client_id=CLIENT_ID, redirect_uris=[f"{app_url}/launch/callback"],
                               scopes=DEFAULT_USER_SCOPES + " launch/patient offline_access"),
                 backend_client(app_url)],
    )
    env = {**os.environ, "PRM_PUBLIC_URL": app_url}
    # Kept beside fhir-prm's own database: the Tasks and Communications a demo wrote back are still in the EHR
    # next time, as fhir-prm's outbox says they are (removing the instance directory starts both afresh).
    state_dir = load_settings(env).instance_dir / "ehr-sandbox"
    if fresh_ehr:
        shutil.rmtree(state_dir, ignore_errors=True)
    click.echo(f"starting the sandbox EHR (FHIR server and synthetic data set, kept in {state_dir})...")
    stack = SandboxStack(config, state_dir=state_dir).start()
    app: subprocess.Popen[bytes] | None = None
    try:
        _prm(["db", "upgrade"], env)
        if not real_time and not env.get("PRM_NOW"):
            start = demo_start(load_settings(env).database_url, DATASET_NOW)
            env["PRM_NOW"] = running_from(start)
            if start > DATASET_NOW:
                click.echo(f"  the demo's clock goes on from {start:%Y-%m-%d %H:%M:%S} UTC, where it had got to in "
                           f"this database (remove {state_dir.parent} to start fhir-prm and the EHR afresh at "
                           f"{DATASET_NOW:%Y-%m-%d %H:%M} UTC)")
        _keep_demo_clock(env)
        _prm(["connection", "add", "--name", "sandbox", "--iss", stack.iss, "--client-id", CLIENT_ID,
              "--frame-origin", stack.ehr_url, "--role-map", "Practitioner/prac-rdc-05=it_admin",
              "--backend-client-id", BACKEND_CLIENT_ID, "--backend-auth", "private_key_jwt",
              "--backend-scopes", SANDBOX_BACKEND_SCOPES], env)
        app = subprocess.Popen([str(BIN / "prm"), "serve", "--port", str(app_port)], env=env)
        _wait_healthy(f"{app_url}/healthz", app)
        _report_check(env)

        def _stop(_signum: int, _frame: FrameType | None) -> None:
            stack.stop()

        signal.signal(signal.SIGTERM, _stop)
        click.echo("")
        click.secho(f"  Open the sandbox EHR:  {stack.ehr_url}/", bold=True)
        click.echo(f"  fhir-prm:              {app_url}   (iss {stack.iss})")
        click.echo("  Pick a patient: fhir-prm opens in the chart's sidebar via SMART EHR launch. Ctrl-C stops.")
        if env.get("PRM_NOW") and not env.get("PRM_DATABASE_URL"):
            click.echo(f"  prm commands in another shell, from this directory, share the demo's clock (kept in "
                       f"{state_dir.parent / DEMO_CLOCK_FILE}; or: export PRM_NOW={env['PRM_NOW']})")
        elif env.get("PRM_NOW"):  # a `prm` command in another shell would otherwise judge lags and due dates by today
            click.echo(f"  prm commands in another shell share the demo's clock with: export PRM_NOW={env['PRM_NOW']}")
        click.echo("")
        sys.stdout.flush()
        stack.wait()
    finally:
        if app is not None and app.poll() is None:
            app.terminate()
            try:
                app.wait(timeout=15)
            except subprocess.TimeoutExpired:
                app.kill()
        stack.stop()


def main() -> None:
    load_dotenv(".env", override=False)
    cli(prog_name="ehr-sandbox")
