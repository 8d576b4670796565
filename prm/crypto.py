"""Secrets at rest (tokens, client secrets, PKCE verifiers) encrypted with Fernet.

PRM_ENCRYPTION_KEYS is a comma-separated list: the first key encrypts, all keys decrypt, so a key
is rotated by putting a new one first, running `prm keys reencrypt`, then dropping the old one.
"""

from __future__ import annotations

import base64
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from prm.errors import ConfigError


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


class SecretBox:
    """Encrypts and decrypts short secrets with the configured keys."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ConfigError("PRM_ENCRYPTION_KEYS is empty")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def seal(self, plaintext: str | None) -> str | None:
        if plaintext is None:
            return None
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, ciphertext: str | None) -> str | None:
        if ciphertext is None:
            return None
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ConfigError("a stored secret cannot be decrypted with PRM_ENCRYPTION_KEYS") from exc

    def rotate(self, ciphertext: str | None) -> str | None:
        """Re-encrypt with the first (newest) key."""
        if ciphertext is None:
            return None
        return self._fernet.rotate(ciphertext.encode()).decode()
