"""The `prm` command: serve, worker, beat, db, connection, keys, admin. It wires; the domain decides."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any, NoReturn

import click
from dotenv import load_dotenv
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import select

from prm import accounts, audit, connections, streams
from prm import keys as signing_keys
from prm.config import Settings, load_settings
from prm.crypto import SecretBox, new_key
from prm.db import Database, error_line
from prm.errors import PrmError, ValidationError
from prm.migrate import upgrade
from prm.models import Connection
from prm.reseal import reseal_all
from smart_app import admin_forms
from smart_app.cli_sync import sync as sync_commands
from smart_app.cli_writeback import outbox_group, outreach_group, ticket


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


_SUPERVISE = click.option(
    "--supervise/--no-supervise", default=True, show_default=True,
    help="Run Celery as a child and start it again if it ends by itself (it can, after a Redis restart). "
         "Turn off under a process manager that restarts it.")


def _run_supervised(command: str, args: list[str]) -> NoReturn:
    """Leave with the status of `prm <command> --no-supervise <args>`, run under workers.supervisor."""
    import logging

    from workers.supervisor import supervise

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/supervisor] %(message)s")
    sys.exit(supervise([sys.executable, "-m", "smart_app.cli", command, "--no-supervise", *args], f"prm {command}"))


@cli.command(help="Run a Celery worker (needs PRM_REDIS_URL).")
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--loglevel", default="INFO", show_default=True)
@_SUPERVISE
def worker(concurrency: int, loglevel: str, supervise: bool) -> None:
    settings = _settings()
    if not settings.uses_redis:
        raise ValidationError("`prm worker` needs PRM_REDIS_URL; without Redis, `prm serve` runs tasks itself")
    _db()
    if supervise:
        _run_supervised("worker", [f"--concurrency={concurrency}", f"--loglevel={loglevel}"])
    from workers.celery_app import configure

    configure(settings).worker_main(["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}",
                                     "--without-gossip", "--without-mingle"])


@cli.command(help="Run the Celery beat scheduler that wakes the sweeper (needs PRM_REDIS_URL).")
@click.option("--loglevel", default="INFO", show_default=True)
@_SUPERVISE
def beat(loglevel: str, supervise: bool) -> None:
    settings = _settings()
    if not settings.uses_redis:
        raise ValidationError("`prm beat` needs PRM_REDIS_URL; without Redis, `prm serve` schedules itself")
    _db()
    if supervise:
        _run_supervised("beat", [f"--loglevel={loglevel}"])
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


def _pairs(values: tuple[str, ...], option: str = "--role-map", example: str = "Practitioner=clinician"
           ) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, role = value.partition("=")
        if not sep or not key or not role:
            raise ValidationError(f"{option} takes KEY=VALUE (e.g. {example}), got {value!r}")
        out[key] = role
    return out


def _clinics(values: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    out = []
    for value in values:
        organization, sep, zone = value.partition("=")
        if not sep:
            raise ValidationError(f"--clinic takes Organization/ID=TIME_ZONE (e.g. Organization/x=Europe/London), "
                                  f"got {value!r}")
        out.append({"organization": organization, "timezone": zone})
    return tuple(out)


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
@click.option("--clinic", "clinics", multiple=True, help="Organization/ID=TIME_ZONE, a clinic this connection serves.")
@click.option("--signing-alg", type=click.Choice(connections.SIGNING_ALGS), default="RS384", show_default=True,
              help="For private_key_jwt (user or backend): the algorithm of fhir-prm's signing key.")
@click.option("--backend-client-id", default=None, help="SMART Backend Services client id (sync, write-back).")
@click.option("--backend-auth", type=click.Choice(connections.BACKEND_AUTH_KINDS), default=None,
              help="How the backend client authenticates (private_key_jwt when --backend-client-id is given).")
@click.option("--backend-client-secret", envvar="PRM_NEW_BACKEND_CLIENT_SECRET", default=None,
              help="For backend client_secret auth; better set PRM_NEW_BACKEND_CLIENT_SECRET.")
@click.option("--backend-scopes", default=connections.DEFAULT_BACKEND_SCOPES, show_default=True)
@click.option("--export-group", default=None,
              help="The EHR's Group of this clinic's patients (its id): a Group-level $export for the first sync, "
                   "and the population of a patient-by-patient sync.")
@click.option("--max-in-flight", type=int, default=4, show_default=True,
              help="Requests at the EHR at once, across every worker (the EHR's limit for our client).")
@click.option("--requests-per-minute", type=int, default=1200, show_default=True,
              help="Requests a minute to the EHR, across every worker.")
@click.option("--ticket-route", "ticket_routes", multiple=True,
              help="REASON=OWNER: who gets care tickets for a reason (or `default`), e.g. default=Organization/x.")
@click.option("--disabled", is_flag=True, default=False)
def connection_add(name: str, iss: str, client_id: str, client_auth: str, client_secret: str | None, scopes: str,
                   frame_origins: tuple[str, ...], role_map: tuple[str, ...], default_role: str,
                   clinics: tuple[str, ...], signing_alg: str, backend_client_id: str | None,
                   backend_auth: str | None, backend_client_secret: str | None, backend_scopes: str,
                   export_group: str | None, max_in_flight: int, requests_per_minute: int,
                   ticket_routes: tuple[str, ...], disabled: bool) -> None:
    settings = _settings()
    if backend_client_id and backend_auth is None:
        backend_auth = "private_key_jwt"
    spec = connections.ConnectionSpec(
        name=name, iss=iss, client_id=client_id, client_auth=client_auth, client_secret=client_secret,
        scopes=scopes, frame_origins=frame_origins, role_mapping=_pairs(role_map), default_role=default_role,
        enabled=not disabled, clinics=_clinics(clinics), signing_alg=signing_alg,
        backend_client_id=backend_client_id, backend_auth=backend_auth,
        backend_client_secret=backend_client_secret, backend_scopes=backend_scopes, export_group=export_group,
        ehr_max_in_flight=max_in_flight, ehr_requests_per_minute=requests_per_minute,
        ticket_routing=_pairs(ticket_routes, "--ticket-route", "default=Organization/org-1"),
    )
    box = SecretBox(settings.encryption_keys)
    with _db().session() as session:
        existing = session.exec(select(Connection).where(Connection.name == name)).first()
        before = admin_forms.snapshot(existing) if existing is not None else None
        if existing is not None and not existing.enabled and not disabled:  # re-running a script re-enables nothing
            spec = replace(spec, enabled=False)
        row = connections.upsert(session, settings.clock, box, spec)
        key = signing_keys.ensure_for(session, settings.clock, box, row)
        actor = audit.command_line_actor(row.id)
        if before is None:
            audit.record(session, settings.clock, actor, "connection.add", connection_id=row.id,
                         entity=f"Connection/{row.name}")
        else:
            fields = admin_forms.changed(before, admin_forms.snapshot(row))
            audit.record(session, settings.clock, actor, "connection.update", connection_id=row.id,
                         entity=f"Connection/{row.name}", detail=f"changed: {', '.join(fields) or 'nothing'}")
        click.echo(f"connection {row.name} saved (id {row.id})"
                   + ("; it stays disabled (prm connection enable switches it on)" if not row.enabled else ""))
        if key is not None:
            click.echo(f"signing key {key.kid} ({key.alg}) published at {settings.public_url}/.well-known/jwks.json")


def _public(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "iss": row.iss, "client_id": row.client_id,
        "client_auth": row.client_auth, "client_secret": "(set)" if row.client_secret_enc else None,
        "scopes": row.scopes, "frame_origins": row.frame_origins, "role_mapping": row.role_mapping,
        "default_role": row.default_role, "enabled": row.enabled, "health": row.health_status,
        "health_checked_at": row.health_checked_at.isoformat() if row.health_checked_at else None,
        "health_detail": row.health_detail, "clinics": row.clinics, "signing_alg": row.signing_alg,
        "backend_client_id": row.backend_client_id, "backend_auth": row.backend_auth,
        "backend_client_secret": "(set)" if row.backend_client_secret_enc else None,
        "backend_scopes": row.backend_scopes, "export_group": row.export_group,
        "max_in_flight": row.ehr_max_in_flight, "requests_per_minute": row.ehr_requests_per_minute,
        "capability_checked_at": row.capability_checked_at.isoformat() if row.capability_checked_at else None,
        "capability_ok": row.capability_profile.get("ok") if row.capability_profile else None,
        "ticket_routing": row.ticket_routing, "needs_it": row.needs_it,
        "needs_it_at": row.needs_it_at.isoformat() if row.needs_it_at else None,
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
        if r["needs_it"]:
            click.echo(f"  NEEDS IT since {r['needs_it_at'][:19]}: {r['needs_it']}")


@connection.command("show", help="Show one connection (secrets are never printed).")
@click.argument("name")
def connection_show(name: str) -> None:
    with _db().session() as session:
        row = connections.by_name(session, name)
        shown = _public(row)
        shown["signing_keys"] = [{"kid": k.kid, "alg": k.alg, "status": k.status}
                                 for k in signing_keys.keys_of(session, row.id or 0)]
    click.echo(json.dumps(shown, indent=2))


@connection.command("check", help="Probe the EHR as fhir-prm will use it; store and print its capability profile.")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the whole profile as JSON.")
def connection_check(name: str, as_json: bool) -> None:
    from smart_app.profile_text import render
    from workers import runtime
    from workers.connection_check import check_connection

    settings = _settings()
    ctx = runtime.build(settings)
    ctx.db.ping()
    with ctx.db.session() as session:
        connection_id = connections.by_name(session, name).id or 0
    profile = check_connection(ctx, connection_id)
    if as_json:
        click.echo(json.dumps(profile, indent=2))
    else:
        for text, colour in render(name, profile):
            click.secho(text, fg=colour)
    sys.exit(0 if profile["ok"] else 1)


def _set_enabled(name: str, enabled: bool) -> None:
    """Audited as IT at the shell; enabled again, its streams are due now (the workers' next sweep runs them)."""
    from prm import jobs
    from workers.sync import SYNC_STREAM

    settings = _settings()
    with _db().session() as session:
        row = connections.set_enabled(session, settings.clock, audit.command_line_actor(None), name, enabled)
        for stream in streams.of_connection(session, row.id or 0) if enabled else []:
            if stream.enabled:
                jobs.wake(session, SYNC_STREAM, stream.id or 0, settings.clock())
    click.echo(f"connection {name} {'enabled' if enabled else 'disabled'}")


@connection.command("disable", help="Refuse launches from this connection and stop its background work.")
@click.argument("name")
def connection_disable(name: str) -> None:
    _set_enabled(name, False)


@connection.command("enable", help="Accept launches from this connection again.")
@click.argument("name")
def connection_enable(name: str) -> None:
    _set_enabled(name, True)


@connection.command("rotate-key", help="New signing key; the old one stays published until --retire-previous.")
@click.argument("name")
@click.option("--retire-previous", is_flag=True,
              help="Second step, once EHRs have fetched the new JWKS: stop publishing the previous key(s).")
def connection_rotate_key(name: str, retire_previous: bool) -> None:
    settings = _settings()
    with _db().session() as session:
        row = connections.by_name(session, name)
        if row.id is None:
            raise ValidationError(f"connection {name!r} has no id")
        if retire_previous:
            kids = signing_keys.retire_previous(session, settings.clock, row.id)
            click.echo(f"retired {len(kids)} previous key(s): {', '.join(kids) or 'none'}")
            return
        key = signing_keys.rotate(session, settings.clock, SecretBox(settings.encryption_keys), row.id,
                                  row.signing_alg)
        click.echo(f"new signing key {key.kid} ({key.alg}) is active; the previous one stays published "
                   f"until `prm connection rotate-key {name} --retire-previous`")


@cli.group(help="Encryption keys for secrets at rest.")
def keys() -> None:
    pass


@keys.command("new", help="Print a new key for PRM_ENCRYPTION_KEYS.")
def keys_new() -> None:
    click.echo(new_key())


@keys.command("reencrypt", help="Re-seal every stored secret with the first key of PRM_ENCRYPTION_KEYS.")
def keys_reencrypt() -> None:
    settings = _settings()
    with _db().session() as session:
        counts = reseal_all(session, SecretBox(settings.encryption_keys))
    click.echo(f"re-sealed {sum(counts.values())} secret(s) with the newest key: "
               + ", ".join(f"{column} {n}" for column, n in counts.items()))


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


cli.add_command(sync_commands)
cli.add_command(ticket)
cli.add_command(outreach_group, name="outreach")
cli.add_command(outbox_group)


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
    except SQLAlchemyError as exc:  # unreachable, or a schema behind the code: one line, not a traceback
        click.echo(f"prm: database: {error_line(exc)} (is it reachable, and its schema current? prm db upgrade)",
                   err=True)
        sys.exit(2)


if __name__ == "__main__":  # the supervised child: `python -m smart_app.cli worker --no-supervise`
    main()
