"""Unattended access to one connection's EHR: backend-services token, polite HTTP client, FHIR reader, bulk.

Built per task from the connection row; the polite client is shared per connection within a process, so
its in-flight bound and request budget hold across the threads syncing that connection, and with Redis
across every worker process too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from connector.bulk import BulkExport
from connector.fhir_reader import FhirReader
from connector.fhir_writer import FhirWriter
from connector.http import make_session
from connector.polite import PoliteClient
from prm.errors import ValidationError
from prm.models import Connection
from workers.backend_auth import backend_credentials
from workers.runtime import WorkerContext
from workers.shared_gate import RedisGate

_clients_lock = threading.Lock()


@dataclass
class EhrAccess:
    connection_id: int
    reader: FhirReader
    bulk: BulkExport
    writer: FhirWriter
    client_name: str


def polite_client(ctx: WorkerContext, row: Connection) -> PoliteClient:
    """The connection's client in this process, with the limits IT set on it. With Redis they are the
    deployment's, shared with every worker (`workers.shared_gate`); without, one process runs the jobs and
    keeps them itself. Changed limits make a new client."""
    in_flight, per_minute = row.ehr_max_in_flight, row.ehr_requests_per_minute
    with _clients_lock:
        key = f"polite:{row.id}:{in_flight}:{per_minute}"
        client = ctx.shared.get(key)
        if not isinstance(client, PoliteClient):
            timeout = ctx.settings.http_timeout_s
            gate = RedisGate(_redis(ctx), row.id or 0, max_in_flight=in_flight, requests_per_minute=per_minute,
                             timeout_s=timeout) if ctx.settings.redis_url else None
            client = PoliteClient(make_session(read_retries=0), max_in_flight=in_flight,
                                  requests_per_minute=per_minute, timeout_s=timeout, gate=gate)
            ctx.shared[key] = client
        return client


def _redis(ctx: WorkerContext) -> redis.Redis:
    """One Redis client per process for the shared gates (its pool serves every thread)."""
    client = ctx.shared.get("redis")
    if not isinstance(client, redis.Redis):
        client = redis.Redis.from_url(ctx.settings.redis_url or "", socket_timeout=5, socket_connect_timeout=2)
        ctx.shared["redis"] = client
    return client


def access_for(ctx: WorkerContext, row: Connection) -> EhrAccess:
    """Everything a sync or a write-back drain needs to reach this EHR without a user."""
    config = ctx.discovery.get(ctx.http, row.iss, ctx.settings.http_timeout_s)
    with ctx.db.session() as session:
        creds = backend_credentials(session, ctx.box, row, config.token_endpoint)
    if creds is None:
        raise ValidationError(f"connection {row.name!r} has no backend-services client: sync and write-back cannot run")
    scope = row.backend_scopes
    timeout = ctx.settings.http_timeout_s

    def token() -> str:
        return ctx.backend_tokens.get(creds, scope, timeout).access_token

    def reauthenticate() -> None:
        ctx.backend_tokens.invalidate(creds, scope)

    client = polite_client(ctx, row)
    return EhrAccess(connection_id=row.id or 0, reader=FhirReader(row.iss, client, token, reauthenticate),
                     bulk=BulkExport(row.iss, client, token, reauthenticate),
                     writer=FhirWriter(row.iss, client, token, reauthenticate), client_name=creds.client_id)
