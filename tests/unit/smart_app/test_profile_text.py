"""The printed profile: a coloured summary line, then each error (red) and warning (yellow) on its own line."""

from __future__ import annotations

from smart_app.profile_text import render


def test_each_error_and_warning_has_its_own_line() -> None:
    profile = {"ok": False, "checked_at": "2026-11-20T12:00:00+00:00", "errors": ["SMART discovery failed: x"],
               "warnings": ["scopes_supported is not published: scopes will be judged at first use", "w2"],
               "discovery": {"ok": False, "error": "x"}, "backend": {}, "resources": {}, "writes": {}, "sync": {},
               "bundles": {"batch": None, "transaction": None}}  # as connector.capability leaves it: nothing read
    lines = render("hudson", profile)
    assert lines[0] == ("connection hudson: PROBLEMS  (1 error, 2 warnings; checked 2026-11-20T12:00:00+00:00)",
                        "red")
    assert lines[1:] == [("ERROR   SMART discovery failed: x", "red"),
                         ("WARNING scopes_supported is not published: scopes will be judged at first use", "yellow"),
                         ("WARNING w2", "yellow")]


def test_a_green_profile_summarises_its_sections() -> None:
    profile = {"ok": True, "checked_at": "t", "errors": [], "warnings": [],
               "discovery": {"source": "well-known", "smart_version": "v2", "fhir_version": "4.0.1",
                             "token_endpoint": "https://ehr.example/token"},
               "backend": {"configured": True, "client_id": "b", "auth": "private_key_jwt", "alg": "RS384",
                           "kid": "abcdefghijklmnop", "token": True, "requested": ["a", "b"], "missing": [],
                           "test_read": {"request": "Patient?_count=1", "ok": True, "entries": 1}},
               "resources": {"Task": {"listed": True, "read": True, "search": True, "create": True, "update": False}},
               "writes": {"Task": {"ok": True, "probe": "accepted"}},
               "sync": {"export": {"system": True, "group": False, "patient": False},
                        "strategy": {"initial": "bulk-export-system", "incremental": "search-last-updated"}},
               "count_limit": 1000}
    text = [t for t, _ in render("x", profile)]
    assert text[0].startswith("connection x: OK  (0 errors, 0 warnings")
    assert ("b (private_key_jwt RS384, kid abcdefghijkl…): token with 2/2 scopes; Patient?_count=1 -> 1 resource"
            in text[2])
    assert text[3].endswith("Task rsc") and text[4].endswith("Task yes (probe accepted)")
    assert text[5].endswith("initial bulk-export-system, incremental search-last-updated; $export system; "
                            "_count limit 1000")


def test_bundles_and_conditional_create_per_written_type() -> None:
    profile = {"ok": True, "checked_at": "t", "errors": [], "warnings": [],
               "discovery": {"source": "well-known", "smart_version": "v2"},
               "writes": {"Task": {"ok": False, "probe": "refused", "conditional_create": True},
                          "Communication": {"ok": True, "probe": "accepted", "conditional_create": False}},
               "bundles": {"batch": True, "transaction": False}}
    text = [t for t, _ in render("x", profile)]
    assert text[2] == ("  writes      Task no (probe refused, conditional create yes); "
                       "Communication yes (probe accepted, conditional create no)")
    assert text[3] == "  bundles     batch yes, transaction no"


def test_unknown_bundles_and_conditional_create_say_so() -> None:
    """No CapabilityStatement read (SMART discovery came from .well-known, the statement failed): unknown."""
    profile = {"ok": False, "checked_at": "t", "errors": ["the CapabilityStatement could not be read: 500"],
               "warnings": [], "discovery": {"source": "well-known", "smart_version": "v2"},
               "writes": {"Task": {"ok": True, "probe": "accepted", "conditional_create": None}},
               "bundles": {"batch": None, "transaction": None}}
    text = [t for t, _ in render("x", profile)]
    assert text[2] == "  writes      Task yes (probe accepted, conditional create unknown)"
    assert text[3] == "  bundles     unknown (no CapabilityStatement was read)"
    assert text[4].startswith("ERROR   the CapabilityStatement")


def test_one_bundle_type_known_the_other_not() -> None:
    text = [t for t, _ in render("x", {"ok": True, "bundles": {"batch": False, "transaction": None}})]
    assert text[1:] == ["  bundles     batch no, transaction unknown"]


def test_notifications_say_whether_they_are_in_use_and_what_to_grant() -> None:
    base = {"ok": True, "checked_at": "t", "errors": [], "warnings": [],
            "discovery": {"source": "well-known", "smart_version": "v2", "token_endpoint": "https://e/token"}}

    def line(subscriptions: dict[str, object]) -> str:
        return next(t for t, _ in render("x", {**base, "subscriptions": subscriptions}) if "notify" in t)

    assert line({"backport": True, "topics": ["a", "b"], "usable": True}).endswith(
        "rest-hook, 2 topics: in use (changes arrive within seconds)")
    assert line({"backport": True, "topics": ["a"], "usable": False}).endswith(
        "rest-hook, 1 topic: not in use until the backend client is granted system/Subscription.cru")
    assert "changes arrive by polling" in line({"backport": False, "topics": [], "usable": False})
    assert line({"backport": False, "criteria": True, "topics": [], "usable": True}).endswith(
        "rest-hook, plain R4 (by search criteria): in use (changes arrive within seconds)")
