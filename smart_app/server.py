"""`prm serve`: gunicorn in this process, the app built in each worker (so each has its own runner)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from prm.config import Settings


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from smart_app.app import create_app

        return create_app(self._settings, start_background=True)


def run(settings: Settings, *, host: str, port: int, workers: int, threads: int) -> None:
    options = {
        "bind": f"{host}:{port}", "workers": workers, "threads": threads, "worker_class": "gthread",
        "accesslog": None, "errorlog": "-", "loglevel": "info", "timeout": 60, "graceful_timeout": 10,
    }
    _Gunicorn(settings, options).run()
