"""Shopify's webhook signature: base64 HMAC-SHA256 of the raw body, keyed by the app secret (pure).

Shopify signs the exact bytes it sends, so the body is checked before it is parsed and
never re-serialized. During a client-secret rotation Shopify may sign with the old
secret for up to an hour, so any of several secrets may match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from connector.errors import SignatureError

#: a SHA-256 digest in base64 is 44 characters; anything much longer is not a signature
_MAX_SIGNATURE_CHARS = 128


def sign_body(body: bytes, secret: bytes) -> str:
    """The value Shopify puts in ``X-Shopify-Hmac-Sha256`` for ``body``."""
    digest = hmac.new(secret, body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_body(body: bytes, signature: str | None, secrets: Sequence[bytes]) -> None:
    """Return if any of ``secrets`` signs ``body`` as ``signature`` says.

    Raises:
        SignatureError: the signature is missing, malformed, or matches no secret.
    """
    if not signature:
        raise SignatureError("the delivery carries no HMAC signature")
    usable = [s for s in secrets if s]
    if not usable:
        raise SignatureError("no webhook secret is configured for this shop")
    if len(signature) > _MAX_SIGNATURE_CHARS:
        raise SignatureError("the HMAC signature is malformed")
    try:
        claimed = base64.b64decode(signature.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise SignatureError("the HMAC signature is not base64") from exc
    matched = False
    for secret in usable:
        expected = hmac.new(secret, body, hashlib.sha256).digest()
        # compare_digest: == leaks how many leading bytes matched; every secret is tried
        # so the time taken does not tell which one (if any) was close.
        matched |= hmac.compare_digest(expected, claimed)
    if not matched:
        raise SignatureError("the HMAC signature does not match the body")
