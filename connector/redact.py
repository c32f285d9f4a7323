"""Secrets never reach a log line: urllib3 logs every request's query string at DEBUG."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

#: query parameters that carry a secret: Graph's tokens, codes and proofs, and the WooCommerce
#: key and signature of one-legged OAuth 1.0a (used for plain-http stores)
SECRET_PARAMS = (
    "access_token",
    "input_token",
    "fb_exchange_token",
    "client_secret",
    "code",
    "appsecret_proof",
    "oauth_consumer_key",
    "oauth_signature",
    "consumer_key",
    "consumer_secret",
)
_SECRET_IN_QUERY = re.compile(
    r"(?P<key>(?<![A-Za-z0-9_])(?:" + "|".join(SECRET_PARAMS) + r")=)[^&\s\"']*"
)


def redact_query(text: str) -> str:
    """``text`` with the values of :data:`SECRET_PARAMS` replaced, wherever they appear."""
    return _SECRET_IN_QUERY.sub(r"\g<key>[redacted]", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and arguments with :func:`redact_query`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.args, Mapping):
            record.args = {
                k: redact_query(v) if isinstance(v, str) else v
                for k, v in record.args.items()
            }
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True


_FILTER = RedactSecrets()


def install() -> None:
    """Put the filter on urllib3's request log (idempotent)."""
    logger = logging.getLogger("urllib3.connectionpool")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


install()
