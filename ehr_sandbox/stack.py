"""The whole sandbox EHR in one object (loaded FHIR server + EHR app), for tests, benchmarks and `ehr-sandbox up`."""
from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode

from .config import SandboxClient, SandboxConfig
from .ehr_app import EhrServer
from .fhir_server import DEFAULT_DATASET, FhirServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SandboxStack:
    """FhirServer (data set loaded, template-cached) + EhrServer; ports of 0 mean "pick a free one"."""

    def __init__(self, config: SandboxConfig | None = None, dataset: str | Path | None = DEFAULT_DATASET,
                 cache_dir: str | Path | None = None, state_dir: str | Path | None = None):
        self.config = config or SandboxConfig()
        if self.config.port == 0:
            self.config.port = free_port()
        if self.config.bind_port == 0:
            self.config.bind_port = free_port()
        if self.config.fhir_internal_port == 0:
            self.config.fhir_internal_port = free_port()
        self.fhir = FhirServer(self.config.fhir_internal_port, self.config.iss, dataset=dataset,
                               cache_dir=cache_dir, state_dir=state_dir)
        self.ehr = EhrServer(self.config)
        self._stopped = threading.Event()

    @property
    def iss(self) -> str:
        return self.config.iss

    @property
    def ehr_url(self) -> str:
        return self.config.ehr_url

    @property
    def fhir_internal_url(self) -> str:
        return self.config.fhir_internal_url

    def register_client(self, client: SandboxClient) -> None:
        self.ehr.register_client(client)

    def chart_url(self, patient_id: str, user: str | None = None) -> str:
        return f"{self.ehr_url}/chart/{patient_id}" + (f"?{urlencode({'user': user})}" if user else "")

    def start(self) -> SandboxStack:
        self.fhir.start()
        try:
            self.ehr.start()
        except BaseException:
            self.fhir.stop()
            raise
        return self

    def stop(self) -> None:
        self.ehr.stop()
        self.fhir.stop()
        self._stopped.set()

    def wait(self) -> None:
        """Block until stop() (another thread or a signal handler) or KeyboardInterrupt; for a foreground CLI."""
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass

    def __enter__(self) -> SandboxStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
