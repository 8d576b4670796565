"""A connection's health: is SMART discovery and the FHIR `metadata` reachable right now?"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import requests

from connector import discovery
from connector.ehr_client import EhrClient
from prm.errors import EhrError


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)


def check(session: requests.Session, iss: str, timeout: float) -> HealthReport:
    """Probe discovery and metadata; every failure becomes a line of the report, never an exception."""
    detail: dict[str, Any] = {}
    ok = True
    started = time.monotonic()
    try:
        config = discovery.fetch(session, iss, timeout)
        detail["discovery"] = {"ok": True, "source": config.source}
    except EhrError as exc:
        ok = False
        detail["discovery"] = {"ok": False, "error": str(exc)}
    try:
        statement = EhrClient(iss, None, session, timeout).capability_statement()
        detail["metadata"] = {"ok": True, "fhirVersion": statement.get("fhirVersion")}
        if not str(statement.get("fhirVersion", "")).startswith("4.0"):
            ok = False
            detail["metadata"]["error"] = f"FHIR {statement.get('fhirVersion')} is not R4"
    except EhrError as exc:
        ok = False
        detail["metadata"] = {"ok": False, "error": str(exc)}
    detail["elapsed_ms"] = round((time.monotonic() - started) * 1000)
    return HealthReport(ok, detail)
