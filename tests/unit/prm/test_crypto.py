"""Secrets at rest: sealed text never equals the secret, and keys rotate without losing anything."""

from __future__ import annotations

import pytest

from prm.crypto import SecretBox, new_key
from prm.errors import ConfigError


def test_seal_and_open() -> None:
    box = SecretBox((new_key(),))
    sealed = box.seal("access-token-123")
    assert sealed is not None and "access-token-123" not in sealed
    assert box.open(sealed) == "access-token-123"
    assert box.seal(None) is None and box.open(None) is None


def test_rotation_keeps_old_secrets_readable_and_reencrypts_with_the_new_key() -> None:
    old, new = new_key(), new_key()
    sealed_old = SecretBox((old,)).seal("refresh")
    both = SecretBox((new, old))
    assert both.open(sealed_old) == "refresh"
    rotated = both.rotate(sealed_old)
    assert SecretBox((new,)).open(rotated) == "refresh"


def test_wrong_key_is_a_clear_error() -> None:
    sealed = SecretBox((new_key(),)).seal("x")
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        SecretBox((new_key(),)).open(sealed)
