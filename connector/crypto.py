"""Secrets at rest: MultiFernet encryption (first key encrypts, every key decrypts)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from connector.errors import ConfigError, CryptoError


class KeyRing:
    """The process's encryption keys; installed once at start by the composition root."""

    def __init__(self) -> None:
        self._fernet: MultiFernet | None = None

    def install(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError(
                "no encryption key configured (CONNECTOR_ENCRYPTION_KEYS)"
            )
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "CONNECTOR_ENCRYPTION_KEYS holds a value that is not a Fernet key"
            ) from exc

    @property
    def fernet(self) -> MultiFernet:
        if self._fernet is None:
            raise ConfigError(
                "encryption keys were not installed before a secret was used"
            )
        return self._fernet

    def encrypt(self, plaintext: str) -> str:
        return self.fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self.fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken as exc:
            raise CryptoError(
                "a stored secret cannot be decrypted: CONNECTOR_ENCRYPTION_KEYS lacks the key it was "
                "encrypted with (keep the old key in the list until `connector keys rotate` has run)"
            ) from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the first key (decrypts with any)."""
        try:
            return self.fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise CryptoError(
                "a stored secret cannot be decrypted with any configured key"
            ) from exc


#: the process-wide key ring that the ``Encrypted`` column type uses
keyring = KeyRing()


def generate_key() -> str:
    """A new Fernet key, as CONNECTOR_ENCRYPTION_KEYS expects it."""
    return Fernet.generate_key().decode("ascii")
