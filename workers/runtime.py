"""What a task needs at run time (settings, database, secrets, HTTP, dispatcher), built once per process."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

import requests
from sqlalchemy.orm import configure_mappers

from connector.backend import BackendTokens
from connector.discovery import DiscoveryCache
from connector.http import make_session
from prm import followup_models, models, snapshot_models
from prm.config import Settings, load_settings
from prm.crypto import SecretBox
from prm.db import Database
from workers.dispatch import Dispatcher, dispatcher_for


@dataclass
class WorkerContext:
    settings: Settings
    db: Database
    box: SecretBox
    dispatcher: Dispatcher
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}")
    backend_tokens: BackendTokens = field(default_factory=BackendTokens, repr=False)
    discovery: DiscoveryCache = field(default_factory=DiscoveryCache, repr=False)
    shared: dict[str, object] = field(default_factory=dict, repr=False)  # per-process caches (e.g. polite clients)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def http(self) -> requests.Session:
        """One requests session per thread (sessions are not thread-safe)."""
        session = getattr(self._local, "http", None)
        if session is None:
            session = self._local.http = make_session()
        return session


_context: WorkerContext | None = None
_lock = threading.Lock()


MODEL_MODULES = (models, snapshot_models, followup_models)  # every table a task may query


def build(settings: Settings, dispatcher: Dispatcher | None = None) -> WorkerContext:
    """The context for this process. SQLAlchemy otherwise sets up every model's mapping lazily, on the first
    query, and that costs ~0.2 s of CPU: a worker pays it here, at boot, not inside its first sync (where it
    delayed a bulk first load's `$export` by as much)."""
    configure_mappers()
    return WorkerContext(settings=settings, db=Database(settings.database_url),
                         box=SecretBox(settings.encryption_keys),
                         dispatcher=dispatcher or dispatcher_for(settings))


def install(context: WorkerContext | None) -> None:
    """Use `context` for tasks in this process (the app does this for the embedded runner); None resets."""
    global _context
    with _lock:
        _context = context


def context() -> WorkerContext:
    """The process's context, built from the environment the first time a task needs it."""
    global _context
    with _lock:
        if _context is None:
            _context = build(load_settings())
        return _context
