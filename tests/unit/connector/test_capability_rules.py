"""Capability judgements on hand-made discovery documents and CapabilityStatements (pure, no I/O)."""

from __future__ import annotations

from typing import Any

from connector.capability_rules import (
    NO_SCOPES_SUPPORTED,
    TOPIC_CANONICAL,
    Findings,
    bundle_support,
    bundle_type_for_writes,
    choose_sync,
    conditional_create,
    export_levels,
    judge_client,
    judge_discovery,
    judge_resources,
    judge_scopes_supported,
    judge_statement_version,
    page_size_limit,
    smart_version,
    subscription_support,
)
from connector.discovery import SmartConfiguration, _from_capability_statement, _from_well_known
from prm.connections import DEFAULT_BACKEND_SCOPES, DEFAULT_USER_SCOPES
from prm.fhir_names import BACKPORT_SUBSCRIPTION

FULL = {
    "authorization_endpoint": "https://ehr.example/authorize", "token_endpoint": "https://ehr.example/token",
    "capabilities": ["launch-ehr", "client-public", "client-confidential-asymmetric", "sso-openid-connect",
                     "permission-v2", "permission-v1"],
    "code_challenge_methods_supported": ["S256"],
    "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
    "grant_types_supported": ["authorization_code", "client_credentials"],
    "scopes_supported": ["launch", "openid", "fhirUser", "online_access", "patient/*.cruds", "system/*.cruds"],
}


def well_known(**changes: Any) -> SmartConfiguration:
    body = {**FULL, **changes}
    return _from_well_known({k: v for k, v in body.items() if v is not None})


def statement(**resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [{
        "mode": "server", "operation": [{"name": "export"}],
        "resource": [{"type": t, **r} for t, r in resources.items()],
        "security": {"extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                                    "extension": [{"url": "authorize", "valueUri": "https://ehr.example/a"},
                                                  {"url": "token", "valueUri": "https://ehr.example/t"}]}]}}]}


def full_resource(*codes: str) -> dict[str, Any]:
    return {"interaction": [{"code": c} for c in codes], "searchParam": [{"name": "_lastUpdated"}]}


def test_a_public_client_does_not_need_asymmetric_auth() -> None:
    findings = Findings()
    config = well_known(capabilities=["launch-ehr", "client-public", "sso-openid-connect", "permission-v2"],
                        token_endpoint_auth_methods_supported=["none"])
    user = judge_client(config, "user", "prm", "public", "RS384", findings)
    assert user["judged"] and user["missing"] == [] and findings.errors == []


def test_asymmetric_auth_needs_private_key_jwt_and_our_algorithm() -> None:
    findings = Findings()
    config = well_known(token_endpoint_auth_methods_supported=["client_secret_basic"],
                        token_endpoint_auth_signing_alg_values_supported=["RS384"])
    backend = judge_client(config, "backend", "prm-backend", "private_key_jwt", "ES384", findings)
    assert backend["missing"] == ["private_key_jwt", "ES384"]
    assert findings.errors == [
        "the EHR does not publish private_key_jwt in token_endpoint_auth_methods_supported, which the backend "
        "client (private_key_jwt) needs",
        "the EHR does not publish ES384 in token_endpoint_auth_signing_alg_values_supported, which the backend "
        "client (private_key_jwt) needs"]


def test_a_missing_capability_is_named_for_the_client_that_needs_it() -> None:
    findings = Findings()
    config = well_known(capabilities=["launch-ehr", "client-public", "permission-v2"])
    judge_client(config, "user", "prm", "public", "RS384", findings)
    judge_client(config, "backend", "prm-backend", "private_key_jwt", "RS384", findings)
    assert findings.errors == ["the EHR does not publish capability client-confidential-asymmetric, which the "
                               "backend client (private_key_jwt) needs"]
    assert findings.warnings[0].startswith("the EHR does not publish capability sso-openid-connect")


def test_without_a_well_known_document_clients_are_judged_at_first_use() -> None:
    findings = Findings()
    config = _from_capability_statement(statement())
    section = judge_discovery(config, findings)
    assert section["source"] == "capability-statement" and section["smart_version"] == "unknown"
    assert not judge_client(config, "backend", "b", "private_key_jwt", "RS384", findings)["judged"]
    judge_scopes_supported(config, DEFAULT_USER_SCOPES, DEFAULT_BACKEND_SCOPES, findings)
    assert findings.errors == []
    assert findings.warnings[0].startswith("no .well-known/smart-configuration")
    assert findings.warnings[1] == NO_SCOPES_SUPPORTED == (
        "scopes_supported is not published: scopes will be judged at first use")


def test_scopes_supported_gaps_are_named() -> None:
    findings = Findings()
    config = well_known(scopes_supported=["launch", "openid", "fhirUser", "patient/*.rs", "system/*.rs"])
    gaps = judge_scopes_supported(config, "launch openid online_access patient/Task.crus", "system/Patient.rs",
                                  findings)
    assert gaps == ["online_access", "patient/Task.crus (lacks cu)"]
    assert findings.warnings == ["scopes_supported lacks online_access: the EHR may not grant it",
                                 "scopes_supported lacks patient/Task.crus (lacks cu): the EHR may not grant it"]


def test_smart_versions() -> None:
    assert smart_version(well_known()) == "v2"
    assert smart_version(well_known(capabilities=["permission-v1"])) == "v1"
    assert smart_version(well_known(capabilities=[], scopes_supported=["system/*.read"])) == "v1"
    assert smart_version(well_known(capabilities=[], scopes_supported=None)) == "unknown"
    findings = Findings()
    judge_discovery(well_known(capabilities=["permission-v1"]), findings)
    assert findings.warnings[0].startswith("the EHR supports SMART v1 scopes only")


def test_pkce_s256_is_required_when_discovery_is_published() -> None:
    findings = Findings()
    judge_discovery(well_known(code_challenge_methods_supported=["plain"]), findings)
    assert findings.errors == ["code_challenge_methods_supported lacks S256: launches need PKCE S256"]


def test_resources_list_interactions_and_name_what_is_missing() -> None:
    findings = Findings()
    doc = statement(Patient=full_resource("read", "search-type"), Encounter=full_resource("read"),
                    Task=full_resource("read", "search-type", "create", "update"))
    resources = judge_resources(doc, findings)
    assert resources["Task"] == {"listed": True, "read": True, "search": True, "create": True, "update": True,
                                 "last_updated": True}
    assert resources["Appointment"]["listed"] is False
    assert "the CapabilityStatement lists no search for Encounter, which sync needs" in findings.errors
    assert "the CapabilityStatement lists no read and search for Appointment, which sync needs" in findings.errors
    assert ("the CapabilityStatement lists no read and search for RelatedPerson: guardians and contacts will not "
            "be synced if the EHR refuses it (its stream then pauses itself, and a check that finds it offered "
            "resumes it)") in findings.warnings
    assert judge_statement_version({"fhirVersion": "5.0.0"}, findings) == "5.0.0"
    assert findings.errors[-1] == "the CapabilityStatement says FHIR 5.0.0; fhir-prm speaks FHIR R4 (4.0.x)"


def test_export_levels_come_from_the_operations() -> None:
    doc = statement(Group={"operation": [{"name": "export"}]}, Patient={"operation": [{"name": "everything"}]})
    assert export_levels(doc) == {"system": True, "group": True, "patient": False}
    doc["rest"][0]["operation"] = []
    assert export_levels(doc)["system"] is False


def test_bundle_support_comes_from_the_system_interactions() -> None:
    doc = statement()
    assert bundle_support(doc) == {"batch": False, "transaction": False}
    doc["rest"][0]["interaction"] = [{"code": "transaction"}, {"code": "history-system"}]
    assert bundle_support(doc) == {"batch": False, "transaction": True}
    doc["rest"][0]["interaction"].append({"code": "batch"})
    assert bundle_support(doc) == {"batch": True, "transaction": True}
    client_side = {"rest": [{"mode": "client", "interaction": [{"code": "batch"}]}]}
    assert bundle_support(client_side) == {"batch": False, "transaction": False}
    assert bundle_support(None) == {"batch": None, "transaction": None}


def test_conditional_create_per_type() -> None:
    doc = statement(Task={**full_resource("create"), "conditionalCreate": True},
                    Communication=full_resource("create"))
    assert conditional_create(doc, "Task") is True
    assert conditional_create(doc, "Communication") is False  # absent means not supported
    assert conditional_create(doc, "Appointment") is False  # not listed at all
    assert conditional_create(None, "Task") is None


def test_bundle_type_for_writes_prefers_batch() -> None:
    assert bundle_type_for_writes({"bundles": {"batch": True, "transaction": True}}) == "batch"
    assert bundle_type_for_writes({"bundles": {"batch": False, "transaction": True}}) == "transaction"
    assert bundle_type_for_writes({"bundles": {"batch": False, "transaction": False}}) is None
    assert bundle_type_for_writes({"bundles": {"batch": None, "transaction": None}}) is None
    assert bundle_type_for_writes({"writes": {}}) is None  # a profile stored before bundles were checked


def test_page_size_limit() -> None:
    capped = {"entry": [{}] * 250, "link": [{"relation": "next", "url": "https://x/Encounter?_count=250&_offset=250"}]}
    assert page_size_limit(capped, 1000) == 250
    clamped_in_links = {"entry": [{}] * 3, "link": [{"relation": "self", "url": "https://x/Encounter?_count=500"}]}
    assert page_size_limit(clamped_in_links, 1000) == 500
    everything = {"entry": [{}] * 300, "link": [{"relation": "self", "url": "https://x/Patient?_count=1000"}]}
    assert page_size_limit(everything, 1000) == 1000


def test_sync_strategies_and_their_warnings() -> None:
    findings = Findings()
    assert choose_sync({"system": True, "group": True, "patient": True}, True, True, findings) == {
        "initial": "bulk-export-system", "incremental": "search-last-updated"}
    assert findings.warnings == []
    assert choose_sync({"system": False, "group": False, "patient": False}, True, True, findings)["initial"] == "search"
    assert findings.warnings == ["no Bulk Data $export: the first sync will page through searches instead (slower)"]
    scoped = Findings()
    assert choose_sync({"system": True, "group": False, "patient": False}, False, True, scoped) == {
        "initial": "bulk-export-system", "incremental": "patient-by-patient"}
    assert scoped.warnings[0].startswith("type-level searches must name a patient")


def test_a_named_export_group_is_preferred_and_a_missing_one_is_asked_for() -> None:
    both = {"system": True, "group": True, "patient": True}
    assert choose_sync(both, True, True, Findings(), export_group=True)["initial"] == "bulk-export-group"
    only_group = {"system": False, "group": True, "patient": False}
    unnamed = Findings()
    assert choose_sync(only_group, False, True, unnamed)["initial"] == "bulk-export-group"
    assert "--export-group" in unnamed.warnings[0]
    no_group_level = Findings()
    assert choose_sync({"system": True, "group": False, "patient": False}, True, True, no_group_level,
                       export_group=True)["initial"] == "bulk-export-system"
    assert no_group_level.warnings == ["an export Group is set but the EHR lists no Group-level $export: the first "
                                       "sync exports at system level (every patient's records cross, only the "
                                       "Group's are kept)"]


def test_subscriptions_are_usable_where_offered_topic_based_or_by_criteria_and_the_scope_granted() -> None:
    topics = ["http://ehr.example/topic/encounter-complete", "http://ehr.example/topic/appointment-booked"]
    creatable = [{"code": c} for c in ("create", "read", "update")]
    statement = {"fhirVersion": "4.0.1", "rest": [{"mode": "server", "resource": [
        {"type": "Subscription", "supportedProfile": [BACKPORT_SUBSCRIPTION], "interaction": creatable,
         "extension": [{"url": TOPIC_CANONICAL, "valueCanonical": t} for t in topics]}]}]}
    granted = f"{DEFAULT_BACKEND_SCOPES} system/Subscription.cru"
    assert subscription_support(statement, granted) == {
        "backport": True, "criteria": False, "mode": "backport", "topics": sorted(topics), "scope_granted": True,
        "usable": True}
    assert subscription_support(statement, DEFAULT_BACKEND_SCOPES)["usable"] is False  # IT has not opted in
    assert subscription_support(statement, None)["usable"] is False  # no backend token at all
    classic = {"rest": [{"mode": "server", "resource": [{"type": "Subscription", "interaction": creatable}]}]}
    assert subscription_support(classic, granted) == {  # plain R4: a search as criteria
        "backport": False, "criteria": True, "mode": "criteria", "topics": [], "scope_granted": True,
        "usable": True}
    listed_only = {"rest": [{"mode": "server", "resource": [{"type": "Subscription"}]}]}  # nothing we may create
    assert subscription_support(listed_only, granted)["mode"] is None
    assert subscription_support(listed_only, granted)["usable"] is False
    assert subscription_support(None, granted)["backport"] is False
