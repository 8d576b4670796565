"""CSRF tokens: valid only for the handle/session and purpose they were issued for."""

from __future__ import annotations

import pytest

from prm.errors import ValidationError
from smart_app import csrf

SECRET = "x" * 40


def test_a_token_works_for_its_binding_and_purpose_only() -> None:
    token = csrf.issue(SECRET, "handle-a", "end-session")
    csrf.check(SECRET, token, "handle-a", "end-session")
    for bound_to, purpose in (("handle-b", "end-session"), ("handle-a", "other-form")):
        with pytest.raises(ValidationError, match="another session"):
            csrf.check(SECRET, token, bound_to, purpose)


def test_missing_forged_and_foreign_secret_tokens_are_refused() -> None:
    with pytest.raises(ValidationError, match="no CSRF token"):
        csrf.check(SECRET, None, "h", "p")
    with pytest.raises(ValidationError, match="not valid"):
        csrf.check(SECRET, "forged", "h", "p")
    with pytest.raises(ValidationError, match="not valid"):
        csrf.check(SECRET, csrf.issue("y" * 40, "h", "p"), "h", "p")
