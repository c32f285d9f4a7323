"""WooCommerce webhook signatures: WordPress's entity decoding of the secret, HMAC, compare."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.woocommerce.signature import (
    sign,
    verify_signature,
    wp_specialchars_decode,
)
from connector.errors import SignatureError
from tests.fakes.woocommerce import woocommerce_signature, wp_specialchars_decode_quotes

BODY = b'{"id":727,"status":"processing","_links":{"self":[{"href":"https:\\/\\/example.com"}]}}'


@pytest.mark.parametrize(
    ("stored", "decoded"),
    [
        pytest.param("plain", "plain", id="no-entities"),
        pytest.param("a&amp;b", "a&b", id="amp"),
        pytest.param("&lt;tag&gt;", "<tag>", id="lt-gt"),
        pytest.param("say &quot;hi&quot;", 'say "hi"', id="double-quote"),
        pytest.param("it&#039;s", "it's", id="single-quote-decimal"),
        pytest.param("it&#39;s", "it's", id="single-quote-unpadded"),
        pytest.param("it&#0000039;s", "it's", id="single-quote-zero-padded"),
        pytest.param("it&#X27;s", "it's", id="single-quote-hex-upper"),
        pytest.param("&#x22;&#34;&#034;", '"""', id="double-quote-numeric"),
        pytest.param("&#60;&#62;&#38;&#x26;", "<>&&", id="numeric-others"),
        # strtr reads once: the & it writes does not start a new entity
        pytest.param("&amp;amp;", "&amp;", id="single-pass"),
        pytest.param("&amp;lt;", "&lt;", id="no-double-decode"),
        # what WordPress does not list stays as typed
        pytest.param("&apos;", "&apos;", id="apos-untouched"),
        pytest.param("&copy;&nbsp;", "&copy;&nbsp;", id="named-untouched"),
        pytest.param("&#x3c;", "&#x3c;", id="hex-lt-untouched"),
        pytest.param("&AMP;", "&AMP;", id="case-sensitive-names"),
        pytest.param("a & b < c > d ' \"", "a & b < c > d ' \"", id="raw-specials"),
    ],
)
def test_secret_decodes_as_wordpress_does(stored: str, decoded: str) -> None:
    """The secret is read back through exactly WordPress's five entities, once."""
    assert decoded.encode() == wp_specialchars_decode(stored.encode())


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("s3cr3t", id="alphanumeric"),
        pytest.param("a&b<c>d\"e'f", id="raw-specials"),
        pytest.param("a&amp;b&lt;c&gt;d&quot;e&#039;f", id="entity-encoded"),
        pytest.param("&amp;amp;&#0039;", id="nested-and-padded"),
        pytest.param("ünïcødé&amp;", id="unicode"),
    ],
)
def test_secrets_with_specials_verify_as_woocommerce_signs(secret: str) -> None:
    """A body WooCommerce signs with a secret holding &, <, >, quotes or entities verifies."""
    header = woocommerce_signature(BODY, secret)
    verify_signature(BODY, header, [secret.encode()])


def test_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    """The header is base64 of the binary HMAC-SHA256 digest, not hex."""
    expected = base64.b64encode(
        hmac.new(b"key", BODY, hashlib.sha256).digest()
    ).decode()
    assert expected == sign(BODY, b"key")


def test_a_re_serialized_body_does_not_verify() -> None:
    """Unescaping WooCommerce's \\/ changes the bytes, so the signature fails."""
    header = sign(BODY, b"key")
    with pytest.raises(SignatureError):
        verify_signature(BODY.replace(b"\\/", b"/"), header, [b"key"])


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("not base64 at all", id="garbage"),
        pytest.param("ÿÿÿ", id="non-ascii"),
    ],
)
def test_missing_or_malformed_signature_is_refused(header: str | None) -> None:
    """No signature, or one that is not WooCommerce's, raises SignatureError."""
    with pytest.raises(SignatureError):
        verify_signature(BODY, header, [b"key"])


def test_any_of_several_secrets_may_sign() -> None:
    """A delivery verifies when one of the candidate secrets signed it."""
    verify_signature(BODY, sign(BODY, b"new"), [b"old", b"new"])


def test_no_secret_means_no_delivery_verifies() -> None:
    """With no secret to try, every delivery is refused."""
    with pytest.raises(SignatureError):
        verify_signature(BODY, sign(BODY, b""), [])


@given(st.text(alphabet="&#x0123456789;amplgtquo'\"<>AX", max_size=40))
def test_decoder_agrees_with_a_literal_port_of_wordpress(secret: str) -> None:
    """Our decoder and a line-by-line port of formatting.php agree on entity soup."""
    assert wp_specialchars_decode_quotes(secret).encode() == wp_specialchars_decode(
        secret.encode()
    )


@given(body=st.binary(max_size=512), secret=st.text(min_size=1, max_size=60))
def test_sign_then_verify_round_trips(body: bytes, secret: str) -> None:
    """Whatever WooCommerce signs with a secret verifies with that secret."""
    verify_signature(body, woocommerce_signature(body, secret), [secret.encode()])


@given(
    body=st.binary(min_size=1, max_size=256),
    flip=st.integers(min_value=0, max_value=255),
    secret=st.text(min_size=1, max_size=40),
)
def test_a_tampered_body_is_refused(body: bytes, flip: int, secret: str) -> None:
    """Changing any byte of the body breaks the signature."""
    header = woocommerce_signature(body, secret)
    index = flip % len(body)
    tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    with pytest.raises(SignatureError):
        verify_signature(tampered, header, [secret.encode()])
