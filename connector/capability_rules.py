"""What an EHR's discovery document and CapabilityStatement mean for fhir-prm: pure judgements, no I/O.

Kept apart from the probes (connector.capability) so each rule is tested on hand-made documents.
Every finding is a sentence IT can act on: it names the missing thing and what fhir-prm will do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import prm.smart_scopes as smart_scopes
from connector.discovery import SmartConfiguration
from prm.fhir_names import BACKPORT, BACKPORT_SUBSCRIPTION

READ_TYPES = ("Patient", "RelatedPerson", "Encounter", "Appointment", "Organization", "Location", "PractitionerRole")
WRITE_TYPES = ("Communication", "Task")
RESOURCE_TYPES = READ_TYPES + WRITE_TYPES
INTERACTIONS = {"read": "read", "search": "search-type", "create": "create", "update": "update"}
ESSENTIAL_READS = ("Patient", "Encounter", "Appointment")
WITHOUT_READ = {
    "RelatedPerson": "guardians and contacts will not be synced",
    "Organization": "clinic names come from the connection's --clinic settings",
    "Location": "clinic time zones come from the connection's --clinic settings",
    "PractitionerRole": "staff roles will not be synced",
}
WITHOUT_WRITE = {
    "Task": "no Task write: care tickets will stay in fhir-prm and be listed for IT",
    "Communication": "no Communication write: outreach messages will stay in fhir-prm, not mirrored to the EHR",
}
NO_SCOPES_SUPPORTED = "scopes_supported is not published: scopes will be judged at first use"


@dataclass
class Findings:
    """Errors (the connection cannot work as configured) and warnings (it works, with a consequence)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        if text not in self.errors:
            self.errors.append(text)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


# ---------------- discovery and clients ----------------

def smart_version(config: SmartConfiguration) -> str:
    """v2, v1 (v1 scopes only) or unknown (no well-known document, or no permission-* capability)."""
    caps = set(config.capabilities)
    if "permission-v2" in caps:
        return "v2"
    if "permission-v1" in caps:
        return "v1"
    scopes = config.scopes_supported or ()
    if any(s.endswith((".read", ".write")) for s in scopes) and not any(
            (p := smart_scopes.parse(s)) is not None and not p.v1 for s in scopes):
        return "v1"
    return "unknown"


def judge_discovery(config: SmartConfiguration, findings: Findings) -> dict[str, Any]:
    raw = config.raw if config.source == "well-known" else {}
    section: dict[str, Any] = {
        "source": config.source,
        "authorization_endpoint": config.authorization_endpoint,
        "token_endpoint": config.token_endpoint,
        "jwks_uri": config.jwks_uri,
        "capabilities": list(config.capabilities),
        "smart_version": smart_version(config),
        "scopes_supported": list(config.scopes_supported) if config.scopes_supported is not None else None,
        "token_endpoint_auth_methods": raw.get("token_endpoint_auth_methods_supported"),
        "assertion_algs": raw.get("token_endpoint_auth_signing_alg_values_supported"),
        "grant_types": raw.get("grant_types_supported"),
        "code_challenge_methods": list(config.code_challenge_methods),
    }
    if config.source != "well-known":
        findings.warn("no .well-known/smart-configuration: SMART endpoints came from the CapabilityStatement "
                      "(oauth-uris); the EHR's SMART capabilities are unknown and will be judged at first use")
    elif "S256" not in config.code_challenge_methods:
        findings.error("code_challenge_methods_supported lacks S256: launches need PKCE S256")
    if section["smart_version"] == "v1":
        findings.warn("the EHR supports SMART v1 scopes only (no permission-v2): fhir-prm asks for v1 equivalents "
                      "(e.g. system/Task.write), which also grant delete")
    return section


def _client_needs(kind: str, auth: str, alg: str, launch: bool) -> list[tuple[str, str]]:
    """(where, value) pairs this client needs: 'capability' or a discovery metadata list name."""
    needs: list[tuple[str, str]] = []
    if launch:
        needs += [("capability", "launch-ehr"), ("capability", "sso-openid-connect")]
    if auth == "public":
        needs += [("capability", "client-public")]
    elif auth == "client_secret":
        needs += [("capability", "client-confidential-symmetric"),
                  ("token_endpoint_auth_methods_supported", "client_secret_basic")]
    elif auth == "private_key_jwt":
        needs += [("capability", "client-confidential-asymmetric"),
                  ("token_endpoint_auth_methods_supported", "private_key_jwt"),
                  ("token_endpoint_auth_signing_alg_values_supported", alg)]
    if kind == "backend":
        needs += [("grant_types_supported", "client_credentials")]
    return needs


def judge_client(config: SmartConfiguration, kind: str, client_id: str | None, auth: str | None, alg: str,
                 findings: Findings) -> dict[str, Any]:
    """Does the EHR publish what this client (user launch or backend) needs? Only its own needs count:
    a public client does not need client-confidential-asymmetric."""
    section: dict[str, Any] = {"client_id": client_id, "auth": auth, "judged": False, "missing": []}
    if auth is None:
        return section
    if auth == "private_key_jwt":
        section["alg"] = alg
    if config.source != "well-known":
        return section  # nothing published to judge by; the discovery warning says so
    section["judged"] = True
    raw = config.raw
    for where, value in _client_needs(kind, auth, alg, launch=kind == "user"):
        published = list(config.capabilities) if where == "capability" else raw.get(where)
        if published is None or value in published:
            continue  # metadata not published at all: RECOMMENDED only, so judged at first use
        section["missing"].append(value)
        what = f"capability {value}" if where == "capability" else f"{value} in {where}"
        who = "the user launch client" if kind == "user" else "the backend client"
        message = f"the EHR does not publish {what}, which {who} ({auth}) needs"
        if value == "sso-openid-connect":
            findings.warn(f"{message}: users' fhirUser, and so their roles, may be unknown")
        else:
            findings.error(message)
    return section


def judge_scopes_supported(config: SmartConfiguration, user_scopes: str, backend_scopes: str | None,
                           findings: Findings) -> list[str]:
    """Our scopes that scopes_supported does not cover (each named in a warning)."""
    if config.scopes_supported is None:
        findings.warn(NO_SCOPES_SUPPORTED)
        return []
    gaps = smart_scopes.supported_gaps(" ".join(filter(None, [user_scopes, backend_scopes or ""])),
                                       list(config.scopes_supported))
    for gap in gaps:
        findings.warn(f"scopes_supported lacks {gap}: the EHR may not grant it")
    return gaps


# ---------------- the CapabilityStatement ----------------

def _rest(statement: dict[str, Any]) -> dict[str, Any]:
    for rest in statement.get("rest", []):
        if rest.get("mode", "server") == "server":
            return dict(rest)
    return {}


def _resource_entries(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r.get("type", ""): r for r in _rest(statement).get("resource", [])}


def _op_names(entries: list[dict[str, Any]]) -> set[str]:
    return {str(op.get("name", "")).lstrip("$") for op in entries}


def judge_statement_version(statement: dict[str, Any], findings: Findings) -> str | None:
    version = statement.get("fhirVersion")
    if not str(version or "").startswith("4.0"):
        findings.error(f"the CapabilityStatement says FHIR {version}; fhir-prm speaks FHIR R4 (4.0.x)")
    return str(version) if version else None


def judge_resources(statement: dict[str, Any], findings: Findings) -> dict[str, dict[str, Any]]:
    """Per resource type: which interactions the statement lists, and whether _lastUpdated is searchable."""
    entries = _resource_entries(statement)
    out: dict[str, dict[str, Any]] = {}
    for rtype in RESOURCE_TYPES:
        entry = entries.get(rtype)
        codes = {i.get("code") for i in (entry or {}).get("interaction", [])}
        params = {p.get("name") for p in (entry or {}).get("searchParam", [])}
        out[rtype] = {"listed": entry is not None,
                      **{name: code in codes for name, code in INTERACTIONS.items()},
                      "last_updated": "_lastUpdated" in params}
        if rtype in READ_TYPES and not (out[rtype]["read"] and out[rtype]["search"]):
            lacking = " and ".join(n for n in ("read", "search") if not out[rtype][n])
            if rtype in ESSENTIAL_READS:
                findings.error(f"the CapabilityStatement lists no {lacking} for {rtype}, which sync needs")
            else:
                findings.warn(f"the CapabilityStatement lists no {lacking} for {rtype}: {WITHOUT_READ[rtype]} "
                              "if the EHR refuses it (its stream then pauses itself, and a check that finds it "
                              "offered resumes it)")
    return out


def export_levels(statement: dict[str, Any]) -> dict[str, bool]:
    """Bulk Data $export at system, Group and Patient level, as the statement's operations list it."""
    entries = _resource_entries(statement)
    return {
        "system": "export" in _op_names(_rest(statement).get("operation", [])),
        "group": "export" in _op_names((entries.get("Group") or {}).get("operation", [])),
        "patient": "export" in _op_names((entries.get("Patient") or {}).get("operation", [])),
    }


TOPIC_CANONICAL = f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"


def subscription_support(statement: dict[str, Any] | None, granted: str | None) -> dict[str, Any]:
    """Rest-hook Subscriptions, and of which kind (`mode`): topic-based (R4 Backport IG) where the statement
    lists the backport profile on Subscription, its topics the canonicals it lists there; else criteria-based
    (plain R4: a search as criteria) where Subscription can be created. `usable` also needs the backend token
    to be allowed to create and read Subscriptions (IT opts in by granting system/Subscription.cru)."""
    entry = _resource_entries(statement or {}).get("Subscription") or {}
    offered = BACKPORT_SUBSCRIPTION in [*(entry.get("supportedProfile") or []), entry.get("profile")]
    criteria = not offered and "create" in {i.get("code") for i in entry.get("interaction") or []}
    topics = sorted({str(e.get("valueCanonical") or e.get("valueUri")) for e in entry.get("extension") or []
                     if e.get("url") == TOPIC_CANONICAL and (e.get("valueCanonical") or e.get("valueUri"))})
    allowed = granted is not None and all(smart_scopes.allows(granted, "Subscription", p) for p in "cru")
    mode = "backport" if offered else "criteria" if criteria else None
    return {"backport": offered, "criteria": criteria, "mode": mode, "topics": topics if offered else [],
            "scope_granted": allowed, "usable": mode is not None and allowed}


def bundle_support(statement: dict[str, Any] | None) -> dict[str, bool | None]:
    """Batch and transaction Bundles at the base URL, as the statement's system interactions list them
    (None: no statement was read, so unknown)."""
    if statement is None:
        return {"batch": None, "transaction": None}
    codes = {i.get("code") for i in _rest(statement).get("interaction", [])}
    return {"batch": "batch" in codes, "transaction": "transaction" in codes}


def conditional_create(statement: dict[str, Any] | None, rtype: str) -> bool | None:
    """Whether the statement says `rtype` takes If-None-Exist (absent means no, per R4). Advertised is not
    atomic: some EHRs search then create, so parallel creates can still make duplicates."""
    if statement is None:
        return None
    return _resource_entries(statement).get(rtype, {}).get("conditionalCreate") is True


def bundle_type_for_writes(profile: dict[str, Any]) -> str | None:
    """The Bundle type to group writes in, from a stored capability profile: batch (each entry stands alone,
    so one refused write does not undo the others), else transaction, else None (write one by one)."""
    bundles = profile.get("bundles") or {}
    if bundles.get("batch") is True:
        return "batch"
    if bundles.get("transaction") is True:
        return "transaction"
    return None


# ---------------- probe results ----------------

def page_size_limit(bundle: dict[str, Any], requested: int) -> int:
    """How many resources one search page may hold, judged from a page asked for with _count=`requested`.

    A page with a next link holds the server's limit; a `_count` the server wrote into its own links
    says so too. A page without a next link held everything: no limit below `requested` was seen.
    """
    entries = len(bundle.get("entry") or [])
    links = {link.get("relation"): str(link.get("url", "")) for link in bundle.get("link") or []}
    limit = requested
    for relation in ("self", "next"):
        counts = parse_qs(urlsplit(links.get(relation, "")).query).get("_count")
        if counts and counts[0].isdigit():
            limit = min(limit, int(counts[0]))
    if "next" in links and entries:
        limit = min(limit, entries)
    return limit


def choose_sync(export: dict[str, bool], type_level: bool | None, last_updated: bool,
                findings: Findings, refused: str | None = None, export_group: bool = False) -> dict[str, str]:
    """The initial-load and incremental strategies this EHR allows, with a warning for each compromise.
    `export_group`: IT named the Group of the clinic's patients, so a Group-level export is preferred (a system
    export would read the whole EHR, other clinics' patients too)."""
    if export["group"] and (export_group or not export["system"]):
        initial = "bulk-export-group"
        if not export_group:
            findings.warn("only Group-level $export: name the Group of the clinic's patients (prm connection add "
                          "... --export-group ID) or the first sync pages through searches instead")
    elif export["system"]:
        initial = "bulk-export-system"
        if export_group:
            findings.warn("an export Group is set but the EHR lists no Group-level $export: the first sync "
                          "exports at system level (every patient's records cross, only the Group's are kept)")
    elif type_level is not False:
        initial = "search"
        findings.warn("no Bulk Data $export: the first sync will page through searches instead (slower)")
    else:
        initial = "patient-by-patient"
    if type_level is False:
        incremental = "patient-by-patient"
        findings.warn("type-level searches must name a patient" + (f" ({refused})" if refused else "") +
                      ": sync will go patient by patient, covering only patients fhir-prm already knows "
                      "(e.g. opened in the EHR)")
    elif last_updated:
        incremental = "search-last-updated"
    else:
        incremental = "full-reread"
        findings.warn("no _lastUpdated search on Encounter: changes can only be found by re-reading everything")
    return {"initial": initial, "incremental": incremental}
