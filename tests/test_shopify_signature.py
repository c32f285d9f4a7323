"""Shopify's webhook HMAC: base64 HMAC-SHA256 of the raw body, any configured secret."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.shopify.signature import sign_body, verify_body
from connector.errors import SignatureError

SECRET = b"hush"
BODY = b'{"id":450789469,"total_price":"598.94"}'


def test_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    """The value is what Shopify documents: base64(HMAC-SHA256(secret, body))."""
    expected = base64.b64encode(hmac.new(SECRET, BODY, hashlib.sha256).digest())
    assert expected.decode() == sign_body(BODY, SECRET)


def test_the_previous_secret_still_verifies_during_a_rotation() -> None:
    """Shopify signs with the old secret for up to an hour after a rotation."""
    verify_body(BODY, sign_body(BODY, b"old"), [b"new", b"old"])


@pytest.mark.parametrize(
    ("signature", "secrets", "reason"),
    [
        pytest.param(None, [SECRET], "carries no HMAC", id="missing"),
        pytest.param("", [SECRET], "carries no HMAC", id="empty"),
        pytest.param(sign_body(BODY, SECRET), [], "no webhook secret", id="no-secret"),
        pytest.param(
            sign_body(BODY, SECRET), [b""], "no webhook secret", id="blank-secret"
        ),
        pytest.param("not base64!", [SECRET], "not base64", id="not-base64"),
        pytest.param("é" * 10, [SECRET], "not base64", id="not-ascii"),
        pytest.param("A" * 500, [SECRET], "malformed", id="too-long"),
        pytest.param(
            sign_body(BODY, b"other"), [SECRET], "does not match", id="wrong-secret"
        ),
        pytest.param(
            sign_body(BODY, SECRET).lower(),
            [SECRET],
            "does not match",
            id="case-changed",
        ),
        pytest.param(
            hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(),
            [SECRET],
            "does not match",  # hex digits are base64 too, but decode to other bytes
            id="hex-digest",
        ),
    ],
)
def test_bad_signatures_are_refused(
    signature: str | None, secrets: list[bytes], reason: str
) -> None:
    """Every way a signature can be wrong raises SignatureError with a reason."""
    with pytest.raises(SignatureError, match=reason):
        verify_body(BODY, signature, secrets)


@given(body=st.binary(max_size=2048), secret=st.binary(min_size=1, max_size=64))
def test_sign_then_verify_round_trips(body: bytes, secret: bytes) -> None:
    """Whatever the bytes, a body signed with a secret verifies with it."""
    verify_body(body, sign_body(body, secret), [secret])


@given(
    body=st.binary(min_size=1, max_size=2048),
    secret=st.binary(min_size=1, max_size=64),
    data=st.data(),
)
def test_any_changed_byte_is_refused(
    body: bytes, secret: bytes, data: st.DataObject
) -> None:
    """Changing one byte of the body breaks the signature."""
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with pytest.raises(SignatureError):
        verify_body(tampered, sign_body(body, secret), [secret])


@given(signature=st.text(max_size=200), body=st.binary(max_size=256))
def test_arbitrary_header_values_raise_only_signature_error(
    signature: str, body: bytes
) -> None:
    """No header value makes verification fail with anything but SignatureError."""
    with pytest.raises(SignatureError):
        verify_body(body, signature, [SECRET])
