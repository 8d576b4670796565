"""The `prm` command: serve, worker, beat, db, connection, keys, admin. It wires; the domain decides."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from dotenv import load_dotenv

from prm import accounts, connections
from prm.config import Settings, load_settings
from prm.crypto import SecretBox, new_key
from prm.db import Database
from prm.errors import PrmError, ValidationError
from prm.migrate import upgrade


def _settings() -> Settings:
    ctx = click.get_current_context()
    settings: Settings | None = ctx.meta.get("prm.settings")
    if settings is None:
        settings = ctx.meta["prm.settings"] = load_settings()
    return settings


def _db() -> Database:
    database = Database(_settings().database_url)
    database.ping()
    return database


@click.group(help="fhir-prm: patient relationship management inside your EHR.")
def cli() -> None:
    pass


@cli.command(help="Serve the web app (gunicorn); without PRM_REDIS_URL it also runs the embedded worker.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", "worker_count", default=1, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
def serve(host: str, port: int, worker_count: int, threads: int) -> None:
    from smart_app.server import run

    settings = _settings()
    _db()
    run(settings, host=host, port=port, workers=worker_count, threads=threads)


@cli.command(help="Run a Celery worker (needs PRM_REDIS_URL).")
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int, loglevel: str) -> None:
    settings = _settings()
    if not settings.uses_redis:
        raise ValidationError("`prm worker` needs PRM_REDIS_URL; without Redis, `prm serve` runs tasks itself")
    _db()
    from workers.celery_app import configure

    configure(settings).worker_main(["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}",
                                     "--without-gossip", "--without-mingle"])


@cli.command(help="Run the Celery beat scheduler that wakes the sweeper (needs PRM_REDIS_URL).")
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    settings = _settings()
    if not settings.uses_redis:
        raise ValidationError("`prm beat` needs PRM_REDIS_URL; without Redis, `prm serve` schedules itself")
    _db()
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    from workers.celery_app import configure

    configure(settings).start(["beat", f"--loglevel={loglevel}"])


@cli.group(help="Database schema.")
def db() -> None:
    pass


@db.command("upgrade", help="Apply Alembic migrations up to the newest schema.")
def db_upgrade() -> None:
    database = _db()
    upgrade(database)
    click.echo("database schema is current")


@cli.group(help="EHR connections.")
def connection() -> None:
    pass


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, role = value.partition("=")
        if not sep or not key or not role:
            raise ValidationError(f"--role-map takes KEY=ROLE (e.g. Practitioner=clinician), got {value!r}")
        out[key] = role
    return out


@connection.command("add", help="Add a connection, or update the one with this name (idempotent).")
@click.option("--name", required=True)
@click.option("--iss", required=True, help="The EHR's FHIR base URL, exactly as it sends it as `iss`.")
@click.option("--client-id", required=True)
@click.option("--client-auth", type=click.Choice(connections.CLIENT_AUTH_KINDS), default="public", show_default=True)
@click.option("--client-secret", envvar="PRM_NEW_CLIENT_SECRET", default=None,
              help="For client_secret auth; or set PRM_NEW_CLIENT_SECRET to keep it out of shell history.")
@click.option("--scopes", default=connections.DEFAULT_USER_SCOPES, show_default=True)
@click.option("--frame-origin", "frame_origins", multiple=True, help="EHR origin allowed to frame the app.")
@click.option("--role-map", "role_map", multiple=True, help="KEY=ROLE, KEY a fhirUser type or reference.")
@click.option("--default-role", default="clinician", show_default=True)
@click.option("--disabled", is_flag=True, default=False)
def connection_add(name: str, iss: str, client_id: str, client_auth: str, client_secret: str | None, scopes: str,
                   frame_origins: tuple[str, ...], role_map: tuple[str, ...], default_role: str,
                   disabled: bool) -> None:
    settings = _settings()
    spec = connections.ConnectionSpec(
        name=name, iss=iss, client_id=client_id, client_auth=client_auth, client_secret=client_secret,
        scopes=scopes, frame_origins=frame_origins, role_mapping=_pairs(role_map), default_role=default_role,
        enabled=not disabled,
    )
    with _db().session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys), spec)
        click.echo(f"connection {row.name} saved (id {row.id})")


def _public(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "iss": row.iss, "client_id": row.client_id,
        "client_auth": row.client_auth, "client_secret": "(set)" if row.client_secret_enc else None,
        "scopes": row.scopes, "frame_origins": row.frame_origins, "role_mapping": row.role_mapping,
        "default_role": row.default_role, "enabled": row.enabled, "health": row.health_status,
        "health_checked_at": row.health_checked_at.isoformat() if row.health_checked_at else None,
        "health_detail": row.health_detail,
    }


@connection.command("list", help="List connections with their last health check.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def connection_list(as_json: bool) -> None:
    with _db().session() as session:
        rows = [_public(r) for r in connections.list_all(session)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NAME':20} {'ENABLED':8} {'HEALTH':9} {'CHECKED (UTC)':20} ISS")
    for r in rows:
        checked = (r["health_checked_at"] or "never")[:19]
        click.echo(f"{r['name']:20} {'yes' if r['enabled'] else 'no':8} {r['health']:9} {checked:20} {r['iss']}")


@connection.command("show", help="Show one connection (secrets are never printed).")
@click.argument("name")
def connection_show(name: str) -> None:
    with _db().session() as session:
        click.echo(json.dumps(_public(connections.by_name(session, name)), indent=2))


@cli.group(help="Encryption keys for secrets at rest.")
def keys() -> None:
    pass


@keys.command("new", help="Print a new key for PRM_ENCRYPTION_KEYS.")
def keys_new() -> None:
    click.echo(new_key())


@cli.group(help="Local admin accounts (admin pages and the CLI).")
def admin() -> None:
    pass


@admin.command("add", help="Create a local admin; the password is read from standard input.")
@click.argument("username")
@click.option("--role", default="it_admin", type=click.Choice(["it_admin", "practice_manager"]), show_default=True)
def admin_add(username: str, role: str) -> None:
    password = click.prompt("Password", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    settings = _settings()
    with _db().session() as session:
        accounts.add(session, settings.clock, username, password, role)
    click.echo(f"admin {username} created ({role})")


def main(argv: list[str] | None = None) -> None:
    """Entry point: `.env` first, then the command; a PrmError ends with one line, not a traceback."""
    load_dotenv(".env", override=False)
    try:
        cli.main(args=argv, prog_name="prm", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PrmError as exc:
        click.echo(f"prm: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
