"""CONNECTOR_ENCRYPTION_KEYS: Fernet keys as they are, high-entropy secrets through HKDF-SHA256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from connector.config import Settings
from connector.crypto import KDF_INFO, KDF_SALT, KeyRing, fernet_key
from connector.errors import ConfigError, CryptoError


def rfc5869_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF written out from RFC 5869 §2.2-2.3, independent of the code under test."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def test_a_fernet_key_is_used_as_it_is() -> None:
    """Every key in use today stays valid: tokens it made still decrypt."""
    key = Fernet.generate_key().decode()
    token = Fernet(key.encode()).encrypt(b"shpat_1").decode()
    ring = KeyRing()
    ring.install([key])
    assert key == fernet_key(key)
    assert "shpat_1" == ring.decrypt(token)


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(secrets.token_hex(32), id="64-hex-as-a-host-generates"),
        pytest.param(secrets.token_hex(64), id="128-hex"),
        pytest.param(secrets.token_urlsafe(32), id="urlsafe-base64"),
        pytest.param(secrets.token_hex(16), id="32-hex-128-bits"),
    ],
)
def test_a_high_entropy_secret_derives_the_documented_key(secret: str) -> None:
    """The key is HKDF-SHA256(secret, salt, info), 32 bytes, url-safe base64."""
    expected = base64.urlsafe_b64encode(
        rfc5869_hkdf_sha256(secret.encode(), KDF_SALT, KDF_INFO, 32)
    ).decode()
    assert expected == fernet_key(secret)
    Fernet(fernet_key(secret).encode())  # a usable key


def test_the_derived_key_is_stable_across_processes() -> None:
    """Documented constants: a token made today decrypts with the same secret tomorrow."""
    secret = "0123456789abcdef" * 4
    # A known-answer vector: changing the salt, the info or the encoding breaks it.
    assert "Z9yDuTJ9eYrcptnkHD3V6FZU0MQJvM9YlgQR1wXxmv0=" == fernet_key(secret)
    ring_a, ring_b = KeyRing(), KeyRing()
    ring_a.install([secret])
    ring_b.install([secret])
    assert "x" == ring_b.decrypt(ring_a.encrypt("x"))


def test_a_derived_key_first_and_an_old_fernet_key_after_rotate_cleanly() -> None:
    """A generated secret can take over from a Fernet key with the usual rotation."""
    old = Fernet.generate_key().decode()
    old_ring = KeyRing()
    old_ring.install([old])
    token = old_ring.encrypt("meta-token")
    ring = KeyRing()
    ring.install([secrets.token_hex(32), old])
    rotated = ring.rotate(token)
    assert "meta-token" == ring.decrypt(rotated)
    with pytest.raises(CryptoError):  # the old key alone cannot read the new token
        old_ring.decrypt(rotated)


@pytest.mark.parametrize(
    "weak",
    [
        pytest.param("changeme", id="short-placeholder"),
        pytest.param("a" * 64, id="one-character-repeated"),
        pytest.param("0123456789abcdef0123", id="twenty-hex"),
        pytest.param("ab" * 20, id="two-characters"),
    ],
)
def test_a_weak_secret_is_refused_at_start(weak: str) -> None:
    """A typo or a placeholder is a configuration problem, named, not a silent weak key."""
    with pytest.raises(
        ConfigError, match="CONNECTOR_ENCRYPTION_KEYS entry 1 is not a Fernet key"
    ):
        Settings.from_env({"CONNECTOR_ENCRYPTION_KEYS": weak})
    with pytest.raises(ValueError, match="neither a Fernet key"):
        fernet_key(weak)


@given(st.binary(min_size=24, max_size=64))
def test_any_random_secret_of_enough_bytes_works(raw: bytes) -> None:
    """Random bytes, hex-encoded as hosts generate them, always make a usable key."""
    secret = raw.hex()
    if len(set(secret)) < 10:  # vanishingly rare for random bytes; the guard refuses it
        return
    Fernet(fernet_key(secret).encode())
