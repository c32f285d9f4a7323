"""WooCommerce webhook signatures, computed exactly as WooCommerce computes them (pure).

``WC_Webhook::generate_signature`` signs the delivery body with
``base64_encode(hash_hmac('sha256', $body, wp_specialchars_decode($secret, ENT_QUOTES), true))``.
The secret goes through WordPress's entity decoder first because a secret typed into the
WP admin may be stored entity-encoded (``&amp;`` for ``&``); the receiving end has to
decode the same five entities, in the same single pass, or such secrets never verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence

from connector.errors import SignatureError

#: WordPress first rewrites zero-padded numeric entities to one canonical spelling,
#: in this order (``wp_specialchars_decode``'s ``$translation_preg`` for ENT_QUOTES) ...
_CANONICAL_NUMERIC: tuple[tuple[re.Pattern[bytes], bytes], ...] = (
    (re.compile(rb"&#0*39;"), b"&#039;"),
    (re.compile(rb"&#x0*27;", re.IGNORECASE), b"&#x27;"),
    (re.compile(rb"&#0*34;"), b"&#034;"),
    (re.compile(rb"&#x0*22;", re.IGNORECASE), b"&#x22;"),
    (re.compile(rb"&#0*60;"), b"&#060;"),
    (re.compile(rb"&#0*62;"), b"&#062;"),
    (re.compile(rb"&#0*38;"), b"&#038;"),
    (re.compile(rb"&#x0*26;", re.IGNORECASE), b"&#x26;"),
)
#: ... then replaces these, once, left to right, never re-reading what it wrote (PHP's strtr).
_ENTITIES: dict[bytes, bytes] = {
    b"&#039;": b"'",
    b"&#x27;": b"'",
    b"&quot;": b'"',
    b"&#034;": b'"',
    b"&#x22;": b'"',
    b"&lt;": b"<",
    b"&#060;": b"<",
    b"&gt;": b">",
    b"&#062;": b">",
    b"&amp;": b"&",
    b"&#038;": b"&",
    b"&#x26;": b"&",
}
# strtr tries the longest key first at each position; an alternation ordered by length does too.
_ENTITY_RE = re.compile(
    b"|".join(re.escape(k) for k in sorted(_ENTITIES, key=len, reverse=True))
)


def wp_specialchars_decode(text: bytes) -> bytes:
    """WordPress's ``wp_specialchars_decode($text, ENT_QUOTES)``: five entities, one pass.

    Only ``&lt; &gt; &amp; &quot; &#039;`` and their numeric spellings are read back;
    ``&apos;``, ``&copy;`` and hex forms WordPress does not list (``&#x3c;``) stay as they are.
    """
    if b"&" not in text:
        return text
    for pattern, canonical in _CANONICAL_NUMERIC:
        text = pattern.sub(canonical, text)
    return _ENTITY_RE.sub(lambda m: _ENTITIES[m.group(0)], text)


def sign(body: bytes, secret: bytes) -> str:
    """The ``X-WC-Webhook-Signature`` WooCommerce sends for ``body`` under ``secret``."""
    key = wp_specialchars_decode(secret)
    digest = hmac.new(key, body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(
    body: bytes, signature: str | None, secrets: Sequence[bytes]
) -> None:
    """Accept ``body`` if any of ``secrets`` signs it as ``signature`` says.

    Raises:
        SignatureError: the signature is missing, or no secret produces it.
    """
    if not signature:
        raise SignatureError("the delivery carries no X-WC-Webhook-Signature")
    given = signature.strip().encode("ascii", "replace")
    matched = False
    for secret in secrets:
        expected = sign(body, secret).encode("ascii")
        # compare_digest: == leaks how many leading bytes matched; check every secret alike
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureError("the X-WC-Webhook-Signature does not match the body")
