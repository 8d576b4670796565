"""`prm connection check`: probe one EHR as fhir-prm will use it and describe it as a capability profile.

Probes are real but harmless: discovery, the CapabilityStatement, one backend token, small searches,
and `$validate` (never stored) standing in for writes. Every failure becomes a named error or warning
in the profile, never an exception, so IT sees everything wrong in one run. The profile carries no
tokens and no patient data (only counts).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests

import prm.smart_scopes as smart_scopes
from connector import backend, discovery
from connector.capability_rules import (
    RESOURCE_TYPES,
    WITHOUT_WRITE,
    Findings,
    bundle_support,
    choose_sync,
    conditional_create,
    export_levels,
    judge_client,
    judge_discovery,
    judge_resources,
    judge_scopes_supported,
    judge_statement_version,
    page_size_limit,
    subscription_support,
)
from connector.ehr_client import FHIR_JSON, EhrClient
from connector.errors import outcome_text
from connector.fhir_reader import GroupRoster, group_roster, in_last_updated_order
from prm.errors import EhrError, PrmError

COUNT_PROBE = 1000
SORT_PROBE = "20"  # enough Encounters to see an order, few enough to be cheap
PROBE_RESOURCES: dict[str, dict[str, Any]] = {  # minimal, patient-free resources for $validate
    "Task": {"resourceType": "Task", "status": "requested", "intent": "order",
             "description": "fhir-prm connection check ($validate only, never stored)"},
    "Communication": {"resourceType": "Communication", "status": "completed",
                      "payload": [{"contentString": "fhir-prm connection check ($validate only, never stored)"}]},
}


@dataclass(frozen=True)
class CheckTarget:
    """What is checked: plain values, so the connector needs nothing of prm's models."""

    iss: str
    client_id: str
    client_auth: str
    user_scopes: str
    signing_alg: str = "RS384"
    backend: backend.BackendCredentials | None = None  # token_endpoint is filled in from discovery
    backend_scopes: str = ""
    export_group: str | None = None  # the Group a Group-level export reads


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer at all (unreachable, timeout)
    body: dict[str, Any] | None
    detail: str


def _ask(http: requests.Session, method: str, url: str, token: str, timeout: float,
         params: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> Answer:
    headers = {"Accept": FHIR_JSON, "Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = FHIR_JSON
    try:
        response = http.request(method, url, params=params, json=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        return Answer(None, None, f"{'timed out' if isinstance(exc, requests.Timeout) else 'unreachable'}: "
                                  f"{type(exc).__name__}")
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    detail = f"HTTP {response.status_code}"
    if response.status_code >= 400:
        text = outcome_text(response)
        detail = f"{detail}: {text}" if text else detail
    return Answer(response.status_code, parsed if isinstance(parsed, dict) else None, detail)


def _shown(path: str, params: dict[str, str]) -> str:
    return path + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


class _Probe:
    """One check run: the target, its findings and the HTTP session."""

    def __init__(self, http: requests.Session, target: CheckTarget, timeout: float, now: datetime) -> None:
        self.http, self.target, self.timeout, self.now = http, target, timeout, now
        self.base = target.iss.rstrip("/")
        self.findings = Findings()

    def backend_token(self, config: discovery.SmartConfiguration, version: str) -> tuple[dict[str, Any], str | None]:
        creds = self.target.backend
        if creds is None:
            self.findings.error("no backend services client is configured: sync and write-back need one "
                                "(prm connection add ... --backend-client-id ID --backend-auth private_key_jwt)")
            return {"configured": False}, None
        creds = dataclasses.replace(creds, token_endpoint=config.token_endpoint)
        requested = smart_scopes.to_v1(self.target.backend_scopes) if version == "v1" else self.target.backend_scopes
        section: dict[str, Any] = {
            "configured": True, "client_id": creds.client_id, "auth": creds.auth,
            "token_endpoint": creds.token_endpoint,
            "requested": requested.split(), "granted": [], "missing": [], "token": False,
        }
        if creds.auth == "private_key_jwt":
            section.update(alg=creds.alg, kid=creds.kid)
        try:
            token = backend.fetch_token(creds, requested, self.timeout)
        except PrmError as exc:
            section["error"] = str(exc)
            self.findings.error(f"no backend token: {exc}")
            return section, None
        section.update(token=True, granted=token.scope.split(), expires_in=token.expires_in)
        section["missing"] = smart_scopes.missing(requested, token.scope)
        for gap in section["missing"]:
            self.findings.error(f"the EHR did not grant {gap} to backend client {creds.client_id!r}")
        return section, token.access_token

    def search(self, token: str, rtype: str, params: dict[str, str]) -> tuple[Answer, str]:
        return _ask(self.http, "GET", f"{self.base}/{rtype}", token, self.timeout, params=params), \
            _shown(rtype, params)

    def test_read(self, token: str) -> dict[str, Any]:
        answer, shown = self.search(token, "Patient", {"_count": "1"})
        ok = answer.status == 200 and (answer.body or {}).get("resourceType") == "Bundle"
        result: dict[str, Any] = {"request": shown, "ok": ok, "status": answer.status}
        if ok:
            result["entries"] = len((answer.body or {}).get("entry") or [])
        else:
            result["detail"] = answer.detail
        return result

    def type_level_search(self, token: str) -> dict[str, Any]:
        """Can we search without naming a patient? (Some EHRs allow patient-scoped searches only.)"""
        since = (self.now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        params = {"_count": "1", "_lastUpdated": f"ge{since}"}
        answer, shown = self.search(token, "Encounter", params)
        result: dict[str, Any] = {"request": shown, "status": answer.status}
        if answer.status == 200:
            result["allowed"] = True
            sorted_answer, sorted_shown = self.search(token, "Encounter", {**params, "_sort": "_lastUpdated",
                                                                           "_count": SORT_PROBE})
            entries = [e.get("resource") or {} for e in (sorted_answer.body or {}).get("entry") or []
                       if isinstance(e, dict)]
            result["sort_last_updated"] = sorted_answer.status == 200 and in_last_updated_order(entries)
            if sorted_answer.status != 200:
                result["sort_detail"] = f"{sorted_shown} -> {sorted_answer.detail}"
            elif not result["sort_last_updated"]:
                result["sort_detail"] = f"{sorted_shown} -> {len(entries)} Encounters, not in _lastUpdated order"
        elif answer.status in (400, 403, 422):
            result.update(allowed=False, detail=answer.detail)
        else:
            result.update(allowed=None, detail=answer.detail)
        return result

    def count_limit(self, token: str) -> tuple[int | None, dict[str, Any]]:
        params = {"_count": str(COUNT_PROBE), "_elements": "id"}
        answer, shown = self.search(token, "Encounter", params)
        if answer.status == 400:  # a server strict about _elements: ask again without it
            params.pop("_elements")
            answer, shown = self.search(token, "Encounter", params)
        if answer.status != 200 or answer.body is None:
            return None, {"request": shown, "status": answer.status, "detail": answer.detail}
        entries = len(answer.body.get("entry") or [])
        has_next = any(link.get("relation") == "next" for link in answer.body.get("link") or [])
        return page_size_limit(answer.body, COUNT_PROBE), {"request": shown, "entries": entries, "next": has_next}

    def export_group(self, token: str, group_id: str, initial: str) -> dict[str, Any]:
        """The export Group must exist and be readable with the backend token; its size is reported, no ids.
        Kept to by a system-level export (`initial`), it must list its members by Patient reference: else that
        export would keep nobody, or miss them."""
        answer = _ask(self.http, "GET", f"{self.base}/Group/{group_id}", token, self.timeout)
        result: dict[str, Any] = {"request": f"GET Group/{group_id}", "status": answer.status}
        body = answer.body or {}
        if answer.status == 200 and body.get("resourceType") == "Group":
            roster = group_roster(body)
            result.update(ok=True, patients=len(roster.patients))
            if roster.unresolved:
                result["unresolved"] = roster.unresolved
            self._judge_roster(group_id, roster, system_export=initial == "bulk-export-system")
        else:
            result.update(ok=False, detail=answer.detail)
            self.findings.error(f"the export Group could not be read (GET Group/{group_id} -> {answer.detail})")
        return result

    def _judge_roster(self, group_id: str, roster: GroupRoster, *, system_export: bool) -> None:
        """An unreadable roster is an error where a system-level export must be kept to it, else a warning."""
        say = self.findings.error if system_export else self.findings.warn
        kept = ": a system-level export cannot be kept to it" if system_export else ""
        if not roster.patients:
            say(f"export Group/{group_id} lists no patients" + (kept or ": its export will be empty"))
        elif roster.unreadable:
            say(f"export Group/{group_id} {roster.unreadable}" + (kept or ": while it does, nobody who leaves the "
                                                                 "Group is removed, and without a Group-level export "
                                                                 "those members are not read"))

    def write_probe(self, token: str | None, rtype: str, statement_ok: bool | None, granted: str) -> dict[str, Any]:
        """$validate with a patient-free resource: the EHR's answer to a would-be write, nothing stored."""
        scope_ok = smart_scopes.allows(granted, rtype, "c") and smart_scopes.allows(granted, rtype, "u")
        result: dict[str, Any] = {"statement": statement_ok, "scope": scope_ok, "probe": "skipped", "ok": False}
        if token is None:
            return result  # no backend token: that error is already named
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": PROBE_RESOURCES[rtype]}, {"name": "mode", "valueCode": "create"}]}
        answer = _ask(self.http, "POST", f"{self.base}/{rtype}/$validate", token, self.timeout, body=body)
        result.update(request=f"POST {rtype}/$validate", status=answer.status)
        reason = None
        if answer.status in (401, 403):
            result["probe"], reason = "refused", f"POST {rtype}/$validate -> {answer.detail}"
        elif answer.status in (404, 405, 501):
            result["probe"] = "not-supported"
            result["note"] = "no harmless write probe on this EHR: judged from the CapabilityStatement and scopes"
        elif answer.status is None or answer.status >= 500:
            result["probe"] = "failed"
            result["note"] = f"POST {rtype}/$validate -> {answer.detail}: judged from the statement and scopes"
        else:
            result["probe"] = "accepted"  # 200, or 400/422 with issues: the EHR processed it
        if statement_ok is False:
            reason = reason or f"the CapabilityStatement lists no create/update for {rtype}"
        if not scope_ok:
            reason = reason or f"the backend token does not allow create and update of {rtype}"
        result["ok"] = reason is None
        if reason:
            result["reason"] = reason
            self.findings.warn(f"{WITHOUT_WRITE[rtype]} ({reason})")
        return result


def _empty(checked_at: datetime) -> dict[str, Any]:
    return {"checked_at": checked_at.isoformat(), "ok": False, "errors": [], "warnings": [], "discovery": {},
            "client": {}, "backend": {}, "resources": {}, "writes": {},
            "bundles": bundle_support(None), "sync": {}, "count_limit": None,
            "subscriptions": subscription_support(None, None)}


def check(http: requests.Session, target: CheckTarget, timeout: float, now: datetime) -> dict[str, Any]:
    """Probe the EHR behind `target` and return its capability profile (see module docstring)."""
    started = time.monotonic()
    probe = _Probe(http, target, timeout, now)
    findings = probe.findings
    profile = _empty(now)
    try:
        config = discovery.fetch(http, target.iss, timeout)
    except EhrError as exc:
        findings.error(f"SMART discovery failed: {exc}")
        profile["discovery"] = {"ok": False, "error": str(exc)}
        return _finish(profile, findings, started)
    profile["discovery"] = discovery_section = judge_discovery(config, findings)
    statement: dict[str, Any] | None = config.raw if config.source == "capability-statement" else None
    if statement is None:
        try:
            statement = EhrClient(target.iss, None, http, timeout).capability_statement()
        except EhrError as exc:
            findings.error(f"the CapabilityStatement could not be read: {exc}")
    if statement is not None:
        discovery_section["fhir_version"] = judge_statement_version(statement, findings)
    backend_auth = target.backend.auth if target.backend else None
    profile["client"] = {
        "user": judge_client(config, "user", target.client_id, target.client_auth, target.signing_alg, findings),
        "backend": judge_client(config, "backend", target.backend.client_id if target.backend else None,
                                backend_auth, target.backend.alg if target.backend else target.signing_alg,
                                findings),
    }
    judge_scopes_supported(config, target.user_scopes, target.backend_scopes if target.backend else None, findings)
    profile["backend"], token = probe.backend_token(config, discovery_section["smart_version"])
    granted = " ".join(profile["backend"].get("granted", []))

    resources: dict[str, dict[str, Any]] = judge_resources(statement, findings) if statement is not None else {
        rtype: {"listed": None} for rtype in RESOURCE_TYPES}
    for rtype, entry in resources.items():
        entry["granted"] = "".join(p for p in "cruds" if smart_scopes.allows(granted, rtype, p)) if token else None
    profile["resources"] = resources

    sync: dict[str, Any] = {"export": export_levels(statement) if statement is not None else
                            {"system": False, "group": False, "patient": False}}
    if token is not None:
        profile["backend"]["test_read"] = read = probe.test_read(token)
        sync["type_level_search"] = probe.type_level_search(token)
        profile["count_limit"], sync["count_probe"] = probe.count_limit(token)
        refused_everywhere = sync["type_level_search"].get("allowed") is False
        if not read["ok"]:
            if read.get("status") in (400, 403) and refused_everywhere:
                pass  # the patient-scoped-search warning from choose_sync covers it
            else:
                findings.error(f"the backend token could not read {read['request']}: {read.get('detail')}")
        search = sync["type_level_search"]
        sync["sort_last_updated"] = search.get("sort_last_updated")
        if search.get("allowed") and sync["sort_last_updated"] is False:
            findings.warn(f"the EHR does not sort by _lastUpdated ({search.get('sort_detail')}): changes are read "
                          "in _lastUpdated windows halved until each fits a page (more requests)")
        sync["strategy"] = choose_sync(sync["export"], search.get("allowed"),
                                       bool(resources.get("Encounter", {}).get("last_updated", True)), findings,
                                       refused=f"{search['request']} -> {search.get('detail')}",
                                       export_group=target.export_group is not None)
        if target.export_group is not None:
            sync["export_group"] = probe.export_group(token, target.export_group, sync["strategy"]["initial"])
    profile["sync"] = sync
    profile["writes"] = {
        rtype: probe.write_probe(token, rtype,
                                 (resources[rtype]["create"] and resources[rtype]["update"])
                                 if resources[rtype].get("listed") is not None else None, granted)
        for rtype in ("Task", "Communication")
    }
    for rtype, write in profile["writes"].items():
        write["conditional_create"] = conditional_create(statement, rtype)
    # At the top level, not in "writes": readers iterate "writes" as resource type -> result.
    profile["bundles"] = bundle_support(statement)
    profile["subscriptions"] = subscription_support(statement, granted if token else None)
    return _finish(profile, findings, started)


def _finish(profile: dict[str, Any], findings: Findings, started: float) -> dict[str, Any]:
    profile["errors"] = list(findings.errors)
    profile["warnings"] = list(findings.warnings)
    profile["ok"] = not findings.errors
    profile["elapsed_ms"] = round((time.monotonic() - started) * 1000)
    return profile
