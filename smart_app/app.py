"""The Flask app factory: wiring only; views live in one blueprint per surface."""

from __future__ import annotations

import atexit
import logging

from flask import Flask, render_template

from connector.discovery import DiscoveryCache
from prm.config import Settings, load_settings
from prm.errors import StorageError
from prm.migrate import pending_revisions
from smart_app import (
    admin_views,
    api_views,
    hook_views,
    jwks_views,
    launch_views,
    metrics_views,
    security,
    sidebar_views,
)
from smart_app.context import AppContext
from workers import runtime
from workers.embedded import EmbeddedRunner

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, start_background: bool = False) -> Flask:
    """Build the app; raise ConfigError/StorageError (one clear line) when it cannot serve.

    With `start_background` and no Redis, the embedded worker and scheduler start in this process.
    """
    settings = settings or load_settings()
    worker = runtime.build(settings)
    runtime.install(worker)
    worker.db.ping()
    missing = pending_revisions(worker.db)
    if missing:
        raise StorageError(f"the database schema is not current ({len(missing)} migration(s) pending): "
                           "run `prm db upgrade`")
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="None",
        SESSION_COOKIE_PARTITIONED=True,
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.extensions["prm"] = AppContext(worker=worker, discovery=DiscoveryCache())
    app.register_blueprint(launch_views.bp)
    app.register_blueprint(sidebar_views.bp)
    app.register_blueprint(jwks_views.bp)
    app.register_blueprint(admin_views.bp)
    app.register_blueprint(api_views.bp)
    app.register_blueprint(hook_views.bp)
    app.register_blueprint(metrics_views.bp)
    security.install(app)

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        worker.db.ping()
        return {"status": "ok"}

    if start_background and not settings.uses_redis:
        runner = EmbeddedRunner(worker)
        runner.start()
        app.extensions["prm_runner"] = runner
        atexit.register(runner.stop)
        log.info("embedded worker and scheduler started (no PRM_REDIS_URL)")
    return app
