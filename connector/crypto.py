"""Secrets at rest: MultiFernet encryption (first key encrypts, every key decrypts).

``CONNECTOR_ENCRYPTION_KEYS`` holds Fernet keys, or high-entropy secrets such as the one a
host generates for a one-click deploy (Heroku's app.json ``"generator": "secret"``); a secret
that is not a Fernet key becomes one through HKDF-SHA256 (RFC 5869) with the fixed salt and info
below, so the same secret always yields the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import threading
from collections.abc import Sequence

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from connector.errors import ConfigError, CryptoError

#: HKDF parameters; changing either would make every stored secret unreadable
KDF_SALT = b"capi-connector/encryption-keys"
KDF_INFO = b"fernet-key-v1"
#: a secret shorter than this, or with fewer distinct characters, is refused (a typo or a
#: placeholder, not a key): 32 hex characters already carry 128 bits
MIN_SECRET_LENGTH = 32
MIN_SECRET_DISTINCT = 10
#: bits a secret must carry, estimated from its length and alphabet
MIN_SECRET_BITS = 128


def _is_fernet_key(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value.encode("ascii"))) == 32
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def _estimated_bits(secret: str) -> float:
    """Length times the bits per character of the smallest common alphabet it fits."""
    chars = set(secret)
    if chars <= set("0123456789abcdef") or chars <= set("0123456789ABCDEF"):
        per_char = 4.0
    elif chars <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="
    ):
        per_char = 6.0
    else:
        per_char = math.log2(94)
    return len(secret) * per_char


def fernet_key(value: str) -> str:
    """The Fernet key for one ``CONNECTOR_ENCRYPTION_KEYS`` entry.

    A Fernet key (32 url-safe base64-encoded bytes) is used as it is, so every key in use
    today stays valid. Any other value must be a high-entropy secret (at least 32 characters,
    10 distinct, about 128 bits): the key is HKDF-SHA256 of its UTF-8 bytes, 32 bytes long,
    salt :data:`KDF_SALT`, info :data:`KDF_INFO`, url-safe base64-encoded.

    Raises:
        ValueError: the value is neither a Fernet key nor a secret strong enough to derive one.
    """
    value = value.strip()
    if _is_fernet_key(value):
        return value
    if (
        len(value) < MIN_SECRET_LENGTH
        or len(set(value)) < MIN_SECRET_DISTINCT
        or _estimated_bits(value) < MIN_SECRET_BITS
    ):
        raise ValueError(
            "neither a Fernet key nor a secret strong enough to derive one "
            f"(at least {MIN_SECRET_LENGTH} random characters)"
        )
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=KDF_SALT, info=KDF_INFO
    ).derive(value.encode("utf-8"))
    return base64.urlsafe_b64encode(derived).decode("ascii")


class KeyRing:
    """The process's encryption keys; installed once at start by the composition root."""

    def __init__(self) -> None:
        self._fernet: MultiFernet | None = None
        #: (key id, AES-256-GCM) per configured key, first one sealing
        self._body_keys: list[tuple[bytes, AESGCM]] = []

    def install(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError(
                "no encryption key configured (CONNECTOR_ENCRYPTION_KEYS)"
            )
        try:
            fernet_keys = [fernet_key(k) for k in keys]
            self._fernet = MultiFernet([Fernet(k) for k in fernet_keys])
            self._body_keys = [_body_key(k) for k in fernet_keys]
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "CONNECTOR_ENCRYPTION_KEYS holds a value that is neither a Fernet key nor a "
                "high-entropy secret"
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

    def seal(self, data: bytes, context: bytes) -> bytes:
        """``data`` compressed (Zstandard) and encrypted (AES-256-GCM) under the first key.

        For webhook bodies kept only until the worker has read them (:mod:`connector.inbox`):
        they hold personal data. ``context`` (the connection and delivery they belong to) is
        authenticated with them, so a sealed body opens only where it was sealed. The layout
        is :data:`SEALED_VERSION`, the key's id (4 bytes), a random 96-bit nonce and the
        ciphertext with its tag; a 28 kB order seals to under 5 kB. The key is HKDF-SHA256 of
        the configured key (:data:`BODY_KDF_INFO`), so one setting serves both uses.
        """
        key_id, aead = self._sealing_key()
        nonce = os.urandom(12)
        return (
            SEALED_VERSION
            + key_id
            + nonce
            + aead.encrypt(nonce, _ZSTD.compressor().compress(data), context)
        )

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        """What :meth:`seal` sealed with this ``context``, opened with whichever key sealed it.

        Raises:
            CryptoError: no configured key sealed it, it was changed, or ``context`` differs.
        """
        sealed = bytes(sealed)
        version, key_id = sealed[:1], sealed[1:5]
        nonce, ciphertext = sealed[5:17], sealed[17:]
        if version != SEALED_VERSION:
            raise CryptoError("a sealed body has an unknown layout")
        for candidate, aead in self._body_keys:
            if candidate == key_id:
                try:
                    plain = aead.decrypt(nonce, ciphertext, context)
                    return _ZSTD.decompressor().decompress(plain)
                except (InvalidTag, zstandard.ZstdError) as exc:
                    raise CryptoError(
                        "a sealed body was changed or belongs to another delivery"
                    ) from exc
        raise CryptoError(
            "a sealed body cannot be opened: CONNECTOR_ENCRYPTION_KEYS lacks the key it was "
            "sealed with"
        )

    def reseal(self, sealed: bytes, context: bytes) -> bytes:
        """``sealed`` under the first key (unchanged if it already is).

        Raises:
            CryptoError: as :meth:`unseal`.
        """
        if bytes(sealed[1:5]) == self._sealing_key()[0]:
            return bytes(sealed)
        return self.seal(self.unseal(sealed, context), context)

    def _sealing_key(self) -> tuple[bytes, AESGCM]:
        if not self._body_keys:
            raise ConfigError(
                "encryption keys were not installed before a secret was used"
            )
        return self._body_keys[0]

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the first key (decrypts with any)."""
        try:
            return self.fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise CryptoError(
                "a stored secret cannot be decrypted with any configured key"
            ) from exc


#: the first byte of a sealed body: its layout (see :meth:`KeyRing.seal`)
SEALED_VERSION = b"\x01"
#: HKDF info for the webhook-body key derived from each configured key
BODY_KDF_INFO = b"webhook-body-aes-256-gcm-v1"


class _Zstd(threading.local):
    """One Zstandard compressor and decompressor per thread (they are not thread-safe)."""

    def __init__(self) -> None:
        self._c: zstandard.ZstdCompressor | None = None
        self._d: zstandard.ZstdDecompressor | None = None

    def compressor(self) -> zstandard.ZstdCompressor:
        if self._c is None:
            self._c = zstandard.ZstdCompressor(level=1)
        return self._c

    def decompressor(self) -> zstandard.ZstdDecompressor:
        if self._d is None:
            self._d = zstandard.ZstdDecompressor()
        return self._d


_ZSTD = _Zstd()


def _body_key(fernet_key_text: str) -> tuple[bytes, AESGCM]:
    """(key id, AES-256-GCM) for webhook bodies, derived from one configured Fernet key."""
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=KDF_SALT, info=BODY_KDF_INFO
    ).derive(base64.urlsafe_b64decode(fernet_key_text))
    return hashlib.sha256(key).digest()[:4], AESGCM(key)


#: the process-wide key ring that the ``Encrypted`` column type uses
keyring = KeyRing()


def generate_key() -> str:
    """A new Fernet key, as CONNECTOR_ENCRYPTION_KEYS expects it."""
    return Fernet.generate_key().decode("ascii")
