"""Secrets never reach a log line.

urllib3 logs every outgoing request's query string at DEBUG, and a web server's access log
records every incoming one: admin-link tokens, OAuth codes, states and HMACs, session-token
JWTs. :func:`redact_query` blanks the values of the parameters that carry them wherever they
appear in a line; :class:`RedactSecrets` applies it to log records, and
:func:`redact_headers` blanks whole header values that are secrets by nature (cookies,
credentials, webhook signatures).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from urllib.parse import unquote_plus

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
    # incoming: admin links, OAuth callbacks (Shopify's and Meta's), WooCommerce's connect
    # flow (its ``user_id`` is our state), App Bridge session tokens, cookies in any text
    "token",
    "id_token",
    "session_token",
    "refresh_token",
    "state",
    "hmac",
    "signature",
    "session",
    "user_id",
    "password",
    # the dashboard: a store's link token and the forms' CSRF token
    "t",
    "csrf_token",
)
#: request and response headers whose whole value is a secret
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "set-cookie",
        "proxy-authorization",
        "x-shopify-hmac-sha256",
        "x-wc-webhook-signature",
        "x-shopify-access-token",
    }
)
_SECRET_NAMES = frozenset(SECRET_PARAMS)
#: any ``name=value``: the name as sent, percent-encoding and ``+`` included
_PARAM = re.compile(r"(?P<key>(?<![A-Za-z0-9_%+])(?P<name>[A-Za-z0-9_%+]+)=)[^&\s\"']*")


def _secret_name(raw: str) -> bool:
    # The web framework decodes ``%74oken`` to ``token`` before the app reads it, so the
    # name is judged decoded (and whatever its case), not as it was spelled.
    return unquote_plus(raw).strip().lower() in _SECRET_NAMES


def _blank(m: re.Match[str]) -> str:
    return m["key"] + "[redacted]" if _secret_name(m["name"]) else m[0]


def redact_query(text: str) -> str:
    """``text`` with the values of :data:`SECRET_PARAMS` replaced, wherever they appear,
    however the parameter's name is percent-encoded (``%74oken=``, ``t%6Fken=``)."""
    if "=" not in text:  # no parameter at all: most header and environ values
        return text
    return _PARAM.sub(_blank, text)


def redact_headers(name: str, value: str) -> str:
    """``value`` blanked when header ``name`` carries a secret, else with its query redacted."""
    if name.lower() in SECRET_HEADERS:
        return "[redacted]"
    return redact_query(value)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and arguments with :func:`redact_query`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.args, MutableMapping):
            # in place: gunicorn's access atoms are a dict that answers "-" for absent keys
            # (``%({x-request-id}i)s``); a plain copy would fail the line with KeyError
            for k, v in list(record.args.items()):
                if isinstance(v, str):
                    record.args[k] = redact_query(v)
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
    """Put the filter on urllib3's request log and on the root logger's handlers (idempotent).

    A filter on a logger sees only records logged there, not those propagated from its
    children; a filter on a handler sees every record the handler writes.
    """
    logger = logging.getLogger("urllib3.connectionpool")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


install()
