"""Named EHR behaviours, data-driven so a new quirk of a real EHR is one line here plus the switch it uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Profile:
    """Behaviour switches read by the authorization server and the FHIR proxy."""

    name: str
    description: str = ""
    discovery: bool = True  # serve /fhir/.well-known/smart-configuration
    v1_scopes_only: bool = False  # advertise and grant SMART v1 scopes only
    access_token_lifetime_s: int | None = None  # overrides SandboxConfig.token_lifetime_s
    refresh_reuse_detection: bool = False  # reusing a rotated refresh token revokes the whole family
    # where $export may be asked (system, group, patient); none: no $export, bulk status or files at all
    export_levels: frozenset[str] = frozenset({"system", "group", "patient"})
    patient_scoped_searches_only: bool = False  # type-level searches need patient/subject (_id for Patient)
    # a patient/subject search naming several patients (`patient=A,B`): "any" answers them all (FHIR's OR, as
    # sekmet does), "refused" is a 400 (one patient a search, as large hospital EHRs allow), "first-only"
    # silently answers the first patient's records alone (a server that drops the rest of the list)
    patient_lists: Literal["any", "refused", "first-only"] = "any"
    refused_writes: frozenset[str] = field(default_factory=frozenset)  # resource types whose create/update -> 403
    id_token_fault: str | None = None  # expired | wrong-aud | bad-signature | wrong-issuer: a broken id_token
    history: bool = True  # _history interactions (404 and left out of the CapabilityStatement when False)
    # If-None-Exist done non-atomically, as racing EHRs do: search, wait this many seconds, then create blindly
    conditional_create_race_s: float | None = None
    # type-level searches ignore `_sort` and answer newest first, as EHRs without `_sort` answer in an order
    # of their own (the `self` link then names no `_sort`)
    ignores_sort: bool = False
    ignores_last_updated: bool = False  # type-level searches ignore `_lastUpdated` (every window answers it all)
    last_updated_to_the_second: bool = False  # `_lastUpdated` search values lose their fraction of a second
    # Subscriptions as the CapabilityStatement lists them: "backport" (topic-based, R4 Backport IG) or "criteria"
    # (plain R4 only: a search as criteria, empty rest-hook notifications; the backport is not listed)
    subscriptions: str = "backport"
    # resource types the EHR does not hold: left out of the CapabilityStatement, and 404 (not-supported) if asked
    unserved_types: frozenset[str] = field(default_factory=frozenset)


PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("default", "A well-behaved SMART App Launch 2 EHR."),
    Profile("no-discovery", ".well-known/smart-configuration is 404; only the CapabilityStatement has the oauth-uris",
            discovery=False),
    Profile("v1-scopes", "Understands SMART v1 scopes only; v2 requests get their v1 equivalents", v1_scopes_only=True),
    Profile("short-token", "Access tokens live 5 seconds", access_token_lifetime_s=5),
    Profile("refresh-reuse-detection", "A reused rotated refresh token revokes the whole token family",
            refresh_reuse_detection=True),
    Profile("no-export", "No Bulk Data $export", export_levels=frozenset()),
    Profile("system-export-only", "$export only at system level (no Group or Patient level)",
            export_levels=frozenset({"system"})),
    Profile("patient-scoped-only", "Type-level searches must name a patient", patient_scoped_searches_only=True),
    Profile("group-export-only", "$export only for a Group, and type-level searches must name a patient (as large "
            "hospital EHRs do), one patient a search", export_levels=frozenset({"group"}),
            patient_scoped_searches_only=True, patient_lists="refused"),
    Profile("patient-lists-first-only", "Type-level searches must name a patient, and a list of patients is "
            "answered with the first one's records alone", patient_scoped_searches_only=True,
            patient_lists="first-only"),
    Profile("task-writes-refused", "Task create/update is forbidden", refused_writes=frozenset({"Task"})),
    Profile("short-token-reuse-detection", "Access tokens live 5 seconds and a reused refresh token revokes all",
            access_token_lifetime_s=5, refresh_reuse_detection=True),
    Profile("id-token-expired", "id_tokens that expired an hour ago", id_token_fault="expired"),
    Profile("id-token-wrong-aud", "id_tokens addressed to another client", id_token_fault="wrong-aud"),
    Profile("id-token-bad-signature", "id_tokens signed with a key the JWKS does not hold",
            id_token_fault="bad-signature"),
    Profile("id-token-wrong-issuer", "id_tokens claiming another issuer", id_token_fault="wrong-issuer"),
    Profile("no-history", "No _history interactions: the sync must find changes by _lastUpdated", history=False),
    Profile("ignores-sort", "Searches ignore _sort and answer newest first: a page's newest instant says nothing "
            "about the next page", ignores_sort=True),
    Profile("second-precision", "_lastUpdated searches compare to the second (ge12:00:00.9 answers from 12:00:00)",
            last_updated_to_the_second=True),
    Profile("unsorted-second-precision", "Searches ignore _sort (newest first) and compare _lastUpdated to the "
            "second", ignores_sort=True, last_updated_to_the_second=True),
    Profile("ignores-last-updated", "Searches ignore _lastUpdated and _sort, and the CapabilityStatement lists no "
            "_lastUpdated search: no window can find what changed", ignores_sort=True, ignores_last_updated=True),
    Profile("criteria-subscriptions", "Plain R4 Subscriptions only (a search as criteria, empty notifications), "
            "no topic-based ones", subscriptions="criteria"),
    Profile("no-related-person", "Holds no RelatedPerson (no guardians or carers): unlisted, and 404 if asked",
            unserved_types=frozenset({"RelatedPerson"})),
    Profile("racy-conditional-create", "If-None-Exist is a search, a pause and a blind create: parallel conditional "
            "creates make duplicates, then every one for that identifier is 412", conditional_create_race_s=0.3),
]}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown sandbox profile {name!r}; known: {', '.join(PROFILES)}") from None
