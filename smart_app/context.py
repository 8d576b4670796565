"""The app's wiring for one process: settings, database, secrets, HTTP, discovery cache, dispatcher."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from connector.discovery import DiscoveryCache
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from workers.runtime import WorkerContext


@dataclass
class AppContext:
    worker: WorkerContext
    discovery: DiscoveryCache

    @property
    def settings(self) -> Settings:
        return self.worker.settings

    @property
    def db(self) -> Database:
        return self.worker.db

    @property
    def box(self) -> SecretBox:
        return self.worker.box


def prm(app: Flask | None = None) -> AppContext:
    ctx: AppContext = (app or current_app).extensions["prm"]
    return ctx
