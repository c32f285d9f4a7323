"""A small WooCommerce REST (wc/v3) client: Basic auth over https, one-legged OAuth 1.0a over http.

WooCommerce authenticates https requests with the consumer key and secret as Basic
credentials. Over plain http it accepts only OAuth 1.0a "one-legged" signatures: no token,
the ``oauth_*`` parameters in the query string, HMAC-SHA1 over ``METHOD&url&params``
where params are every query parameter (``$_GET`` and ``$_POST``), sorted and
RFC 3986-encoded, and the key is ``consumer_secret + "&"`` (``WC_REST_Authentication``).

Every request goes through :mod:`connector.outbound`: the store's name must lead to public
addresses only (loopback too under the development switch), checked on the address the
connection is opened to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from connector.config import Settings
from connector.errors import PlatformError
from connector.outbound import (
    AddressPolicy,
    Resolver,
    store_session,
    woocommerce_policy,
)

API_PREFIX = "/wp-json/wc/v3"


def rfc3986(value: str) -> str:
    """PHP's ``rawurlencode``: everything but ``A-Z a-z 0-9 - _ . ~`` is percent-encoded."""
    return quote(value, safe="~")


def oauth1_signature(
    method: str, url: str, params: Mapping[str, str], consumer_secret: str
) -> str:
    """The ``oauth_signature`` WooCommerce expects for a request (pure).

    ``url`` is the scheme, host and path without a query; ``params`` are every query
    parameter, the ``oauth_*`` ones included and ``oauth_signature`` excluded.
    """
    pairs = sorted((rfc3986(k), rfc3986(v)) for k, v in params.items())
    normalized = "&".join(f"{k}={v}" for k, v in pairs)
    base = "&".join((method.upper(), rfc3986(url), rfc3986(normalized)))
    key = f"{consumer_secret}&".encode()
    digest = hmac.new(key, base.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


class WooCommerceClient:
    """One store's REST API, with the key pair its owner granted."""

    def __init__(
        self,
        store_url: str,
        consumer_key: str,
        consumer_secret: str,
        *,
        timeout: float = 20.0,
        policy: AddressPolicy | None = None,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``policy`` defaults to public addresses only; ``resolver`` to the system's."""
        self.store_url = store_url.rstrip("/")
        self._key = consumer_key
        self._secret = consumer_secret
        self._timeout = timeout
        self._http = store_session(policy or AddressPolicy(), resolver)
        self._clock = clock
        self.uses_oauth1 = urlsplit(self.store_url).scheme != "https"

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        store_url: str,
        consumer_key: str,
        consumer_secret: str,
    ) -> WooCommerceClient:
        """A client with the deployment's timeout, address policy and resolver."""
        return cls(
            store_url,
            consumer_key,
            consumer_secret,
            timeout=settings.http_timeout,
            policy=woocommerce_policy(settings),
            resolver=settings.store_resolver,
        )

    def close(self) -> None:
        self._http.close()

    def probe(self, path: str) -> int:
        """The status of an unauthenticated GET of ``/wp-json/wc/v3{path}`` (no redirect followed).

        Raises:
            PlatformError: the store cannot be reached (or its address is not public).
        """
        try:
            rv = self._http.get(
                f"{self.store_url}{API_PREFIX}{path}",
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise PlatformError(self._unreachable()) from exc
        return rv.status_code

    def _unreachable(self) -> str:
        # The merchant reads this: never the socket's own words (they say what answered where).
        return (
            f"the store at {self.store_url} cannot be reached; check that the address is "
            "right and the site is online"
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> requests.Response:
        """Send one request to ``/wp-json/wc/v3{path}``; a non-2xx answer raises.

        Raises:
            PlatformError: the store is unreachable, redirects, or refuses the request.
        """
        url = f"{self.store_url}{API_PREFIX}{path}"
        query = dict(params or {})
        auth: tuple[str, str] | None = None
        if self.uses_oauth1:
            query.update(
                oauth_consumer_key=self._key,
                oauth_nonce=secrets.token_hex(16),
                oauth_signature_method="HMAC-SHA1",
                oauth_timestamp=str(int(self._clock())),
            )
            query["oauth_signature"] = oauth1_signature(
                method, url, query, self._secret
            )
        else:
            auth = (self._key, self._secret)
        try:
            rv = self._http.request(
                method,
                url,
                params=query,
                json=json,
                auth=auth,
                timeout=self._timeout,
                # A redirect would turn a POST into a GET and drop the credentials: report it.
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise PlatformError(self._unreachable()) from exc
        if 300 <= rv.status_code < 400:
            raise PlatformError(
                f"the store redirects its REST API to {rv.headers.get('Location', '?')}; "
                "connect it with the address it redirects to",
                status=rv.status_code,
            )
        if rv.status_code >= 400:
            raise PlatformError(_describe_error(rv), status=rv.status_code)
        return rv

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` and the answer's JSON.

        Raises:
            PlatformError: as ``request``, or the answer is not JSON.
        """
        rv = self.request(method, path, **kwargs)
        try:
            return rv.json()
        except ValueError as exc:
            raise PlatformError(
                f"the store answered {method} {path} with something that is not JSON",
                status=rv.status_code,
            ) from exc

    def list_webhooks(self) -> list[dict[str, Any]]:
        """Every webhook the store has, page by page.

        Raises:
            PlatformError: as ``request``.
        """
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            rv = self.request(
                "GET", "/webhooks", params={"per_page": "100", "page": str(page)}
            )
            try:
                batch = rv.json()
            except ValueError as exc:
                raise PlatformError("the store's webhook list is not JSON") from exc
            if not isinstance(batch, list):
                raise PlatformError("the store's webhook list is not a list")
            found.extend(w for w in batch if isinstance(w, dict))
            try:
                pages = int(rv.headers.get("X-WP-TotalPages", "1"))
            except ValueError:
                pages = 1
            if page >= pages or not batch:
                return found
            page += 1


def _describe_error(rv: requests.Response) -> str:
    # WP REST errors are {"code": ..., "message": ..., "data": {"status": N}}.
    try:
        body = rv.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        message = str(body.get("message") or "")[:200]
        return f"the store refused the request ({rv.status_code} {body['code'][:80]}: {message})"
    return f"the store answered {rv.status_code}"


#: orders per page: the REST API's maximum ``per_page``
ORDERS_PER_PAGE = 100


def orders_params(since: datetime, until: datetime, page: int) -> dict[str, str]:
    """The query of one page of orders modified in ``[since, until]`` (pure).

    ``modified_after``/``modified_before`` with ``dates_are_gmt`` (WooCommerce 5.8+), all
    statuses, oldest id first so pages stay put while orders change:
    https://woocommerce.github.io/woocommerce-rest-api-docs/#list-all-orders
    """
    fmt = "%Y-%m-%dT%H:%M:%S"
    return {
        "modified_after": since.astimezone(UTC).strftime(fmt),
        "modified_before": until.astimezone(UTC).strftime(fmt),
        "dates_are_gmt": "true",
        "status": "any",
        "orderby": "id",
        "order": "asc",
        "per_page": str(ORDERS_PER_PAGE),
        "page": str(page),
    }


def iter_orders(
    client: WooCommerceClient,
    since: datetime,
    until: datetime,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[dict[str, Any]]:
    """Every order modified in ``[since, until]``, following ``X-WP-TotalPages``.

    Raises:
        PlatformError: as ``WooCommerceClient.request``, or a page is not a JSON list.
    """
    page = 1
    while not stop():
        rv = client.request("GET", "/orders", params=orders_params(since, until, page))
        try:
            batch = rv.json()
        except ValueError as exc:
            raise PlatformError("the store's order list is not JSON") from exc
        if not isinstance(batch, list):
            raise PlatformError("the store's order list is not a list")
        yield from (o for o in batch if isinstance(o, dict))
        try:
            pages = int(rv.headers.get("X-WP-TotalPages", "1"))
        except ValueError:
            pages = 1
        if page >= pages or not batch:
            return
        page += 1
