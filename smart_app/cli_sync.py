"""`prm sync status` and `prm sync run`: watch the streams, or run a connection's sync in the foreground."""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import SQLAlchemyError

from prm import connections, ehr_subscriptions, outbox, snapshots, streams
from prm.config import load_settings
from prm.db import error_line
from prm.errors import PrmError, ValidationError
from prm.snapshot_models import EhrSubscription, SyncStream
from smart_app import admin_present, sync_verdict

if TYPE_CHECKING:
    from workers.sync_run import StreamRun


@click.group(help="Background sync from the EHRs.")
def sync() -> None:
    pass


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "never"


def _status_row(name: str, stream: SyncStream, now: datetime, open_quarantined: int, held: int) -> dict[str, Any]:
    lag = (now - stream.caught_up_at).total_seconds() if stream.caught_up_at else None
    return {"connection": name, "type": stream.resource_type, "phase": stream.phase, "enabled": stream.enabled,
            "pause_note": stream.pause_note,
            "strategy": stream.strategy, "interval_s": stream.interval_s,
            "cursor": stream.cursor.isoformat() if stream.cursor else None,
            "last_success": stream.last_success_at.isoformat() if stream.last_success_at else None,
            "caught_up": stream.caught_up_at.isoformat() if stream.caught_up_at else None,
            "lag_s": round(lag) if lag is not None else None, "pages": stream.pages,
            "held": held, "resources": stream.resources_synced, "deleted": stream.deleted_synced,
            "quarantined": stream.quarantined, "quarantined_open": open_quarantined, "error": stream.last_error,
            "pass": _pass_row(stream), "reload": streams.reload_state(stream),
            "patient_lists": stream.patient_lists}


def _pass_row(stream: SyncStream) -> dict[str, Any] | None:
    """A pass longer than a run, under way: its kind and since when (the snapshot is as of its start)."""
    if not stream.pass_kind:
        return None
    return {"kind": stream.pass_kind, "since": stream.pass_started.isoformat() if stream.pass_started else None}


def _subscription_row(name: str, row: EhrSubscription) -> dict[str, Any]:
    return {"connection": name, "subscription": row.topic, "types": row.resource_types, "status": row.status,
            "ehr_id": row.ehr_id, "last_heard": row.last_heard_at.isoformat() if row.last_heard_at else None,
            "notifications": row.notifications, "events_seen": row.events_seen, "error": row.error}


@sync.command("status", help="Per connection and stream: phase, cursor, last success, lag, counts, errors; and "
                             "the EHR Subscriptions that wake streams early.")
@click.option("--connection", "name", default=None, help="Only this connection.")
@click.option("--json", "as_json", is_flag=True)
def sync_status(name: str | None, as_json: bool) -> None:
    from workers import runtime

    ctx = runtime.build(load_settings())
    ctx.db.ping()
    now = ctx.settings.clock()
    rows: list[dict[str, Any]] = []
    with ctx.db.session() as session:
        chosen = [connections.by_name(session, name)] if name else connections.list_all(session)
        open_counts = streams.open_quarantine_counts(session)
        for connection in chosen:
            rows += [_status_row(connection.name, s, now, open_counts.get((connection.id or 0, s.resource_type), 0),
                                 snapshots.held(session, connection.id or 0, s.resource_type))
                     for s in streams.of_connection(session, connection.id or 0)]
            rows += [{"connection": connection.name, "type": q.resource_type, "quarantined_id": q.fhir_id,
                      "error": q.error} for q in streams.quarantined(session, connection.id or 0)]
            rows += [_subscription_row(connection.name, s)
                     for s in ehr_subscriptions.of_connection(session, connection.id or 0)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'CONNECTION':14} {'TYPE':17} {'PHASE':11} {'HELD':>9} {'QUAR':>5} {'CURSOR (EHR CLOCK)':19} "
               f"{'LAST SUCCESS':19} {'LAG':>7} ERROR")
    for row in rows:
        if "quarantined_id" in row:
            click.echo(f"{row['connection']:14} {row['type']:17} quarantined {row['quarantined_id']}: {row['error']}")
            continue
        if "subscription" in row:
            heard = (row["last_heard"] or "never")[:19].replace("T", " ")
            click.echo(f"{row['connection']:14} {'subscription':17} {row['status']:11} {row['notifications']:>9} "
                       f"{'':>5} {'':19} {heard:19} {'':>7} {row['subscription']} -> {','.join(row['types'])} "
                       f"{row['error'] or ''}")
            continue
        success = (row["last_success"] or "never")[:19].replace("T", " ")
        cursor = (row["cursor"] or "-")[:19].replace("T", " ")
        under_way = "" if row["enabled"] else f"[paused: {row['pause_note']}] " if row["pause_note"] else "[paused] "
        under_way += f"[{row['pass']['kind']} pass under way] " if row["pass"] else ""
        under_way += f"[reading everything again: {row['reload']}] " if row["reload"] else ""
        click.echo(f"{row['connection']:14} {row['type']:17} {row['phase']:11} {row['held']:>9} "
                   f"{row['quarantined_open']:>5} {cursor:19} {success:19} {admin_present.lag_words(row['lag_s']):>7} "
                   f"{under_way}{row['error'] or ''}")


class _PluginCommand(click.Command):
    """A monitoring plugin's command: a mistake in how it is called is UNKNOWN (exit 3) to Nagios, not a usage
    error's exit 2, which Nagios reads as CRITICAL."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            click.echo(f"UNKNOWN: {exc.format_message()}")
            raise SystemExit(sync_verdict.UNKNOWN) from exc


@sync.command("check", cls=_PluginCommand,
              help="One line for Nagios, Icinga or Zabbix: OK, WARNING or CRITICAL (exit 0, 1, 2; 3 when it "
                   "cannot tell) for lags past the limits, failing checks and streams, quarantined resources "
                   "and dead write-backs.")
@click.option("--connection", "name", default=None, help="Only this connection.")
@click.option("--warn-lag", "warn_lag", type=click.IntRange(min=1), default=30, show_default=True,
              help="Minutes a stream's lag may pass its interval before it is a warning.")
@click.option("--crit-lag", "crit_lag", type=click.IntRange(min=1), default=120, show_default=True,
              help="Minutes a stream's lag may pass its interval before it is critical.")
@click.option("--warn-wait", "warn_wait", type=click.IntRange(min=1), default=10, show_default=True,
              help="Minutes due work may wait for a worker before it is a warning.")
@click.option("--crit-wait", "crit_wait", type=click.IntRange(min=1), default=30, show_default=True,
              help="Minutes due work may wait for a worker before it is critical.")
def sync_check(name: str | None, warn_lag: int, crit_lag: int, warn_wait: int, crit_wait: int) -> None:
    for warn, crit, what in ((warn_lag, crit_lag, "lag"), (warn_wait, crit_wait, "wait")):
        if warn > crit:  # a check set up wrong is UNKNOWN to the monitoring, like one that cannot run
            click.echo(f"UNKNOWN: --warn-{what} ({warn}) must not exceed --crit-{what} ({crit})")
            raise SystemExit(sync_verdict.UNKNOWN)
    limits = sync_verdict.Limits(warn_lag_s=warn_lag * 60.0, crit_lag_s=crit_lag * 60.0,
                                 warn_wait_s=warn_wait * 60.0, crit_wait_s=crit_wait * 60.0)
    try:
        verdict = _check(name, limits)
    except PrmError as exc:  # the check's own failure is UNKNOWN to the monitoring, not a sync that is down
        click.echo(f"UNKNOWN: {type(exc).__name__}: {exc}")
        raise SystemExit(sync_verdict.UNKNOWN) from exc
    except SQLAlchemyError as exc:  # a schema behind the code (prm db upgrade), a database gone mid-check
        click.echo(f"UNKNOWN: database: {error_line(exc)} (is its schema current? prm db upgrade)")
        raise SystemExit(sync_verdict.UNKNOWN) from exc
    click.echo(verdict.line)
    raise SystemExit(verdict.level)


def _check(name: str | None, limits: sync_verdict.Limits) -> sync_verdict.Verdict:
    from prm import jobs
    from workers import runtime

    ctx = runtime.build(load_settings())
    ctx.db.ping()
    with ctx.db.session() as session:
        chosen = [connections.by_name(session, name)] if name else connections.list_all(session)
        grouped = streams.by_connection(session)
        quarantined = streams.open_quarantine_counts(session)
        dead = sync_verdict.dead_writes_by_connection(outbox.counts_by_connection(session))
        running = {(row.id, s.resource_type) for row in chosen for s in grouped.get(row.id or 0, []) if s.enabled}
        states = [sync_verdict.ConnectionState(
            connection=row, streams=grouped.get(row.id or 0, []), dead_writes=dead.get(row.id or 0, 0),
            quarantined=sum(n for (c, t), n in quarantined.items() if c == row.id and (c, t) in running))
            for row in chosen]  # a paused stream's quarantine is not judged, as its lag and errors are not
        now = ctx.settings.clock()
        return sync_verdict.verdict(states, now, limits, jobs.waiting(session, now))


@sync.command("strategy", help="How a connection's streams sync: auto (what `prm connection check` found), bulk "
                               "(first load by Bulk export), search, or patient (patient by patient).")
@click.option("--connection", "name", required=True)
@click.option("--type", "types", multiple=True, help="Only these resource types (repeatable); default all.")
@click.argument("strategy", type=click.Choice(streams.STRATEGIES))
def sync_strategy(name: str, types: tuple[str, ...], strategy: str) -> None:
    from prm import audit
    from workers import runtime

    ctx = runtime.build(load_settings())
    with ctx.db.session() as session:
        connection = connections.by_name(session, name)
        changed = streams.set_strategy(session, ctx.settings.clock, audit.command_line_actor(connection.id),
                                       connection.id or 0, strategy, types or None)
    click.echo(f"{name}: {', '.join(s.resource_type for s in changed) or 'no stream'} changed to {strategy}")


@sync.command("interval", help="How often a connection's streams run once caught up (default 5 min): e.g. 1m for "
                               "bookings, 6h for the directory. Seconds, or with s, m or h; 30s to 24h.")
@click.option("--connection", "name", required=True)
@click.option("--type", "types", multiple=True, help="Only these resource types (repeatable); default all.")
@click.argument("every")
def sync_interval(name: str, types: tuple[str, ...], every: str) -> None:
    from prm import audit
    from workers import runtime
    from workers.sync import apply_intervals

    interval_s = _seconds(every)
    ctx = runtime.build(load_settings())
    with ctx.db.session() as session:
        connection = connections.by_name(session, name)
        changed = streams.set_interval(session, ctx.settings.clock, audit.command_line_actor(connection.id),
                                       connection.id or 0, interval_s, types or None)
        sooner = apply_intervals(ctx, session, changed)
    click.echo(f"{name}: {', '.join(s.resource_type for s in changed) or 'no stream'} changed to every "
               f"{admin_present.interval_words(interval_s)}" + (f" ({sooner} run sooner)" if sooner else ""))


def _seconds(every: str) -> int:
    """`90`, `90s`, `5m`, `1h` -> seconds (the domain checks the range)."""
    match = re.fullmatch(r"\s*(\d+)\s*(s|m|min|h)?\s*", every)
    if match is None:
        raise click.BadParameter(f"{every!r} is not like 90s, 5m or 1h", param_hint="EVERY")
    return int(match.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600}[match.group(2) or "s"]


@sync.command("pause", help="Stop a connection's streams asking the EHR (a type it does not offer or grant, or "
                            "one you have no use for); they keep what they hold. Default: all its streams.")
@click.option("--connection", "name", required=True)
@click.option("--type", "types", multiple=True, help="Only these resource types (repeatable); default all.")
def sync_pause(name: str, types: tuple[str, ...]) -> None:
    _set_enabled(name, types, enabled=False)


@sync.command("resume", help="Let paused streams run again, from where they stopped. Default: all its streams.")
@click.option("--connection", "name", required=True)
@click.option("--type", "types", multiple=True, help="Only these resource types (repeatable); default all.")
def sync_resume(name: str, types: tuple[str, ...]) -> None:
    _set_enabled(name, types, enabled=True)


def _set_enabled(name: str, types: tuple[str, ...], *, enabled: bool) -> None:
    from prm import audit, jobs
    from workers import runtime
    from workers.sync import SYNC_STREAM

    ctx = runtime.build(load_settings())
    with ctx.db.session() as session:
        connection = connections.by_name(session, name)
        changed = streams.set_enabled(session, ctx.settings.clock, audit.command_line_actor(connection.id),
                                      connection.id or 0, enabled, types or None)
        for stream in changed if enabled else []:  # due now: the workers' next sweep runs them (none runs here)
            jobs.wake(session, SYNC_STREAM, stream.id or 0, ctx.settings.clock())
    click.echo(f"{name}: {', '.join(s.resource_type for s in changed) or 'no stream'} "
               f"{'resumed (the workers run it within seconds)' if enabled else 'paused'}")


@sync.command("reload", help="Read every resource of a connection's streams again (after a restore or a repair at "
                             "the EHR), from their next run on; what changes meanwhile is read as well.")
@click.option("--connection", "name", required=True)
@click.option("--type", "types", multiple=True, help="Only these resource types (repeatable); default all.")
def sync_reload(name: str, types: tuple[str, ...]) -> None:
    from prm import audit, jobs
    from workers import runtime
    from workers.sync import SYNC_STREAM

    ctx = runtime.build(load_settings())
    with ctx.db.session() as session:
        connection = connections.by_name(session, name)
        asked = streams.ask_reload(session, ctx.settings.clock, audit.command_line_actor(connection.id),
                                   connection.id or 0, types or None)
        for stream in asked:  # due now: the workers' next sweep runs them (this process runs no worker)
            jobs.wake(session, SYNC_STREAM, stream.id or 0, ctx.settings.clock())
    if asked:
        click.echo(f"{name}: {', '.join(s.resource_type for s in asked)} will read everything again, "
                   "from the workers' next sweep")
    else:
        click.echo(f"{name}: no stream asked (none has finished its first load, which reads everything anyway)")


@sync.command("erase", help="Erase the synced copy of a disabled connection's EHR data: its snapshot, quarantined "
                            "resources and sync state. Stream settings, the PRM's own records (tickets, outreach, "
                            "outbox) and the audit trail stay; enabled again, it starts with a first load. Without "
                            "--yes, only says what it holds.")
@click.option("--connection", "name", required=True)
@click.option("--yes", "confirmed", is_flag=True, help="Erase (audited); without it nothing changes.")
def sync_erase(name: str, confirmed: bool) -> None:
    from prm import audit
    from prm.snapshot_erase import erase_snapshot
    from workers import runtime

    ctx = runtime.build(load_settings())
    with ctx.db.session() as session:
        connection = connections.by_name(session, name)
        if not confirmed:
            held = {t: snapshots.held(session, connection.id or 0, t) for t in streams.SYNC_TYPES}
            words = ", ".join(f"{t} {n}" for t, n in held.items() if n) or "nothing"
            click.echo(f"{name} holds {words}. "
                       + ("Disable it first (prm connection disable), then " if connection.enabled else "")
                       + f"erase with: prm sync erase --connection {name} --yes")
            return
        erased = erase_snapshot(session, ctx.settings.clock, audit.command_line_actor(connection.id),
                                connection.id or 0)
    click.echo(f"{name}: erased {erased.words()}")


@sync.command("run", help="Sync one connection now, in the foreground, with a progress bar.")
@click.option("--connection", "name", required=True)
@click.option("--type", "types", multiple=True, help="Only these resource types (repeatable).")
def sync_run(name: str, types: tuple[str, ...]) -> None:
    from workers import runtime
    from workers.sync_connection import sync_connection

    ctx = runtime.build(load_settings())
    ctx.db.ping()
    with ctx.db.session() as session:
        connection = connections.by_name(session, name)
        if not connection.enabled:
            raise ValidationError(f"connection {name} is disabled: nothing to sync (prm connection enable {name})")
        chosen = streams.named(session, connection.id or 0, types or None)  # an unknown type is refused
        count = len(chosen)
        # Paused by the sync itself (the EHR does not offer the type; its check resumes it): no failure of this run
        not_offered = {s.resource_type: s.pause_note for s in chosen if not s.enabled and s.pause_note}
    lock = threading.Lock()  # streams run side by side; the bar is drawn by one at a time
    with click.progressbar(length=count, label=f"sync {name}", show_pos=True, item_show_func=lambda s: s) as bar:
        done: dict[str, int] = {}

        def progress(resource_type: str, count: int) -> None:
            with lock:
                done[resource_type] = done.get(resource_type, 0) + count
                bar.label = f"sync {name} " + ", ".join(f"{t} {n}" for t, n in done.items())
                bar.render_progress()

        def finished(run: StreamRun) -> None:
            with lock:
                bar.update(1, f"{run.resource_type}: not run ({not_offered[run.resource_type]})"
                              if _not_run(run) and run.resource_type in not_offered else
                              f"{run.resource_type}: paused, not run" if _not_run(run) else
                              f"{run.resource_type}: {run.stored} stored, {run.deleted} deleted"
                              f"{', busy (another worker still has it)' if run.busy else ''}")

        runs = sync_connection(ctx, connection.id or 0, types=types or None, progress=progress, finished=finished)
    left = sorted(t for t, run in runs.items() if run.busy or (_not_run(run) and t not in not_offered))
    click.echo(f"sync of {name} finished" if not left else
               f"sync of {name} finished without {', '.join(left)} (paused: prm sync resume; busy: run it again)")
    if left:
        raise SystemExit(1)


def _not_run(run: StreamRun) -> bool:
    from workers.sync_run import DISABLED

    return DISABLED in run.notes
