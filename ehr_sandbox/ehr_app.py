"""The sandbox EHR as one Flask app (authorization server + FHIR proxy + shell) and a threaded server to run it."""
from __future__ import annotations

import logging
import threading
from types import TracebackType

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from .authz import SmartAuth
from .authz import build_blueprint as auth_blueprint
from .config import SandboxClient, SandboxConfig
from .proxy import build_blueprint as proxy_blueprint
from .shell import build_blueprint as shell_blueprint

log = logging.getLogger(__name__)


def create_ehr_app(config: SandboxConfig) -> Flask:
    """One app: /oauth/*, /fhir/* and the shell pages; `app.extensions["smart_auth"]` is the SmartAuth."""
    app = Flask(__name__)
    app.config["JSON_SORT_KEYS"] = False
    smart = SmartAuth(config)
    app.extensions["smart_auth"] = smart
    app.register_blueprint(auth_blueprint(smart))
    app.register_blueprint(proxy_blueprint(smart))
    app.register_blueprint(shell_blueprint(smart))
    return app


class EhrServer:
    """Serves create_ehr_app(config) on 127.0.0.1:<config.bind_port or config.port> from a background thread."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.app = create_ehr_app(config)
        self.smart: SmartAuth = self.app.extensions["smart_auth"]
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.config.ehr_url

    def start(self) -> EhrServer:
        port = self.config.bind_port or self.config.port  # URLs always name config.port
        self._server = make_server("127.0.0.1", port, self.app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ehr-sandbox", daemon=True)
        self._thread.start()
        log.info("sandbox EHR at %s (iss %s, profile %s)", self.url, self.config.iss, self.config.profile)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def register_client(self, client: SandboxClient) -> None:
        """Add or replace a client while running."""
        self.smart.register_client(client)

    def __enter__(self) -> EhrServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
