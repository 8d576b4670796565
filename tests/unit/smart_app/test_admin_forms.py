"""The connection form's text fields map onto ConnectionSpec; a bad line is named; profiles read defensively."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from prm.connections import validate
from prm.errors import ValidationError
from smart_app import admin_forms, admin_present


def posted(**values: str) -> MultiDict[str, str]:
    base = {"name": "riverside", "iss": "https://riverside.example/fhir/", "client_id": "prm", "client_auth": "public",
            "scopes": "launch  openid", "default_role": "clinician", "signing_alg": "RS384", "backend_scopes": ""}
    return MultiDict({**base, **values})


def test_lines_become_lists_mappings_and_clinics() -> None:
    spec = validate(admin_forms.spec_from_form(posted(
        frame_origins="https://a.example\n\n https://b.example/ \n",
        role_mapping="Practitioner = clinician\nPractitioner/p-1=it_admin",
        clinics="Organization/o-1 | North | Europe/London\nOrganization/o-2 |  | Pacific/Auckland",
        enabled="on", backend_auth="", client_secret="")))
    assert spec.frame_origins == ("https://a.example", "https://b.example")
    assert spec.role_mapping == {"Practitioner": "clinician", "Practitioner/p-1": "it_admin"}
    assert [c["timezone"] for c in spec.clinics] == ["Europe/London", "Pacific/Auckland"]
    assert spec.enabled and spec.backend_auth is None and spec.client_secret is None
    assert spec.iss == "https://riverside.example/fhir" and spec.scopes == "launch openid"


def test_on_edit_the_name_and_enabled_state_come_from_the_row() -> None:
    spec = admin_forms.spec_from_form(posted(name="other"), name="riverside", enabled=False)
    assert spec.name == "riverside" and spec.enabled is False


@pytest.mark.parametrize(("field", "value", "message"), [
    ("role_mapping", "Practitioner clinician", "KEY=ROLE"),
    ("clinics", "Organization/o-1, Europe/London", "Organization/id | name | time zone"),
])
def test_a_malformed_line_is_named(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        admin_forms.spec_from_form(posted(**{field: value}))


def test_secrets_are_never_echoed_back() -> None:
    values = admin_forms.values_from_form(posted(client_secret="s3cret", backend_client_secret="b4ckend"))
    assert "s3cret" not in values.values() and "b4ckend" not in values.values()


def test_changed_names_fields_not_values() -> None:
    before = {"scopes": "a", "client_secret_enc": "x", "enabled": True}
    after = {"scopes": "b", "client_secret_enc": "y", "enabled": True}
    assert admin_forms.changed(before, after) == ["client_secret", "scopes"]


@pytest.mark.parametrize(("profile", "status", "errors", "warnings"), [
    ({}, "not checked", (), ()),
    ({"ok": True, "errors": [], "warnings": ["slow"]}, "ok", (), ("slow",)),
    ({"ok": False, "errors": [], "warnings": []}, "errors", (), ()),
    ({"errors": [{"message": "no Task writes"}, "no _count"], "warnings": "odd"}, "errors",
     ("no Task writes", "no _count"), ()),
])
def test_capability_summary(profile: dict[str, object], status: str, errors: tuple[str, ...],
                            warnings: tuple[str, ...]) -> None:
    summary = admin_present.capability(profile)
    assert (summary.status, summary.errors, summary.warnings) == (status, errors, warnings)
