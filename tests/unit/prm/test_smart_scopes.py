"""Scope algebra: a v1 grant covers the v2 scopes it implies; gaps are named with what they lack."""

from __future__ import annotations

from prm import smart_scopes
from prm.connections import DEFAULT_BACKEND_SCOPES


def test_an_exact_grant_misses_nothing() -> None:
    assert smart_scopes.missing(DEFAULT_BACKEND_SCOPES, DEFAULT_BACKEND_SCOPES) == []


def test_v1_and_wildcard_grants_cover_v2_requests() -> None:
    assert smart_scopes.missing("system/Patient.rs system/Task.crus", "system/Patient.read system/Task.*") == []
    assert smart_scopes.missing("system/Patient.rs system/Task.crus", "system/*.cruds") == []
    assert smart_scopes.missing("system/Task.crus", "system/Task.read system/Task.write") == []


def test_gaps_are_named_with_the_missing_permissions() -> None:
    assert smart_scopes.missing("system/Task.crus system/Encounter.rs openid", "system/Task.rs") == [
        "system/Task.crus (lacks cu)", "system/Encounter.rs", "openid"]
    assert smart_scopes.missing("system/Patient.rs", "patient/Patient.rs") == ["system/Patient.rs"]


def test_v1_spelling() -> None:
    assert smart_scopes.to_v1("system/Patient.rs system/Task.crus openid") == (
        "system/Patient.read system/Task.read system/Task.write openid")
    assert smart_scopes.to_v1("system/Task.read") == "system/Task.read"


def test_allows() -> None:
    assert smart_scopes.allows("system/Task.write", "Task", "c")
    assert not smart_scopes.allows("system/Task.rs", "Task", "c")
    assert smart_scopes.allows("system/*.cruds", "Communication", "u")
    assert not smart_scopes.allows("patient/Task.cruds", "Task", "c")
