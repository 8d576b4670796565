"""Conditional create as a racing EHR does it (profile racy-conditional-create): search, pause, create blindly.

sekmet evaluates If-None-Exist inside one process, so parallel conditional creates rarely race there. Real
EHRs often search first and create later without a lock: two parallel creates of one identifier both find
nothing and both create, and from then on every conditional create of that identifier answers 412.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import requests

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Reply:
    """An answer the proxy gives itself instead of forwarding."""

    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Found:
    """What the racing EHR's search saw: how many match, and the first (for a 200 when exactly one does)."""

    count: int
    first: dict[str, Any] | None  # the Bundle entry (fullUrl, resource)


def criteria(value: str | None) -> list[tuple[str, str]]:
    """If-None-Exist search parameters; none means the FHIR server should answer (400) as it would."""
    return parse_qsl((value or "").strip().lstrip("?"), keep_blank_values=True)


def find(http: requests.Session, upstream: str, rtype: str, condition: str) -> Found | requests.Response:
    """The search a racing EHR runs first; the server's own answer when it refuses the criteria."""
    params = [*criteria(condition), ("_count", "2")]
    resp = http.get(f"{upstream}/{rtype}", params=params, timeout=60,
                    headers={"Accept": FHIR_JSON, "Prefer": "handling=strict"})
    if resp.status_code != 200:
        return resp
    bundle = resp.json()
    matches = [e for e in bundle.get("entry") or [] if (e.get("search") or {}).get("mode", "match") == "match"]
    total = bundle.get("total")
    return Found(max(total, len(matches)) if isinstance(total, int) else len(matches),
                 matches[0] if matches else None)


def pause(seconds: float) -> None:
    """The window between a racing EHR's search and its create."""
    time.sleep(seconds)


def existing(entry: dict[str, Any], prefer: str | None) -> Reply:
    """200 with the one match, headers as the FHIR server gives them for a conditional create that found one."""
    resource = entry.get("resource") or {}
    meta = resource.get("meta") or {}
    version = str(meta.get("versionId", "1"))
    headers = {"ETag": f'W/"{version}"', "Content-Type": FHIR_JSON}
    base = entry.get("fullUrl") or f"{resource.get('resourceType')}/{resource.get('id')}"
    headers["Location"] = f"{base}/_history/{version}"
    if meta.get("lastUpdated"):
        stamp = datetime.fromisoformat(str(meta["lastUpdated"]).replace("Z", "+00:00"))
        headers["Last-Modified"] = format_datetime(stamp, usegmt=True)
    prefer = (prefer or "").lower()
    if "return=minimal" in prefer:
        return Reply(200, b"", headers)
    if "return=operationoutcome" in prefer:
        body: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": "Operation successful"}]}
        return Reply(200, json.dumps(body).encode(), headers)
    return Reply(200, json.dumps(resource).encode(), headers)


def multiple(count: int) -> str:
    return f"Conditional create: criteria matched {count} resources (multiple matches)"


def loosen_bundle(http: requests.Session, upstream: str, body: bytes, seconds: float) -> bytes | None:
    """A batch/transaction whose conditional creates found nothing, with their ifNoneExist dropped after the
    pause: the server then creates them blindly. Entries that found one or more keep it, so the server answers
    them (200 with the match, or 412). None: nothing to change, forward the body as it came."""
    try:
        bundle = json.loads(body or b"{}")
    except ValueError:
        return None
    if not isinstance(bundle, dict) or bundle.get("type") not in ("batch", "transaction"):
        return None
    blind = []
    for entry in bundle.get("entry") or []:
        req = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(req, dict) or str(req.get("method", "")).upper() != "POST" or \
                not criteria(str(req.get("ifNoneExist") or "")):
            continue
        rtype = str(req.get("url", "")).split("?")[0].strip("/").split("/")[0]
        found = find(http, upstream, rtype, str(req["ifNoneExist"]))
        if isinstance(found, Found) and found.count == 0:
            blind.append(req)
    if not blind:
        return None
    pause(seconds)
    for req in blind:
        del req["ifNoneExist"]
    return json.dumps(bundle).encode()
