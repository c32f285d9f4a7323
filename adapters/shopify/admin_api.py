"""Shopify Admin client: the OAuth token endpoint and the GraphQL webhook subscriptions.

Every request goes through :mod:`connector.outbound` (public addresses only, checked on the
address connected to); see :func:`connector.outbound.shopify_policy` for the one exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from adapters.shopify.oauth import (
    GRANT_TOKEN_EXCHANGE,
    TOKEN_TYPE_ID_TOKEN,
    TOKEN_TYPE_OFFLINE,
    TokenGrant,
    admin_base,
    parse_token_answer,
)
from connector.config import Settings
from connector.errors import ConfigError, PlatformError
from connector.outbound import (
    AddressPolicy,
    Resolver,
    shopify_policy,
    store_session,
)

log = logging.getLogger(__name__)

#: the one Admin API version the connector speaks (Shopify supports each for 12 months)
API_VERSION = "2026-10"

#: the topics registered per shop through the API; compliance topics live in shopify.app.toml
WEBHOOK_TOPICS = (
    "orders/create",
    "orders/paid",
    "checkouts/create",
    "checkouts/update",
    "app/uninstalled",
    "app/scopes_update",
)

_SUBSCRIPTIONS_QUERY = """
query ConnectorWebhooks($topics: [WebhookSubscriptionTopic!], $after: String) {
  webhookSubscriptions(first: 100, topics: $topics, after: $after) {
    nodes { id topic uri }
    pageInfo { hasNextPage endCursor }
  }
}
"""

_CREATE_MUTATION = """
mutation ConnectorWebhookCreate($topic: WebhookSubscriptionTopic!, $webhookSubscription: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) {
    webhookSubscription { id topic uri }
    userErrors { field message }
  }
}
"""

_UPDATE_MUTATION = """
mutation ConnectorWebhookUpdate($id: ID!, $webhookSubscription: WebhookSubscriptionInput!) {
  webhookSubscriptionUpdate(id: $id, webhookSubscription: $webhookSubscription) {
    webhookSubscription { id topic uri }
    userErrors { field message }
  }
}
"""


def topic_enum(topic: str) -> str:
    """``orders/create`` -> ``ORDERS_CREATE`` (GraphQL's WebhookSubscriptionTopic)."""
    return topic.replace("/", "_").upper()


def topic_name(enum: str) -> str:
    """``ORDERS_CREATE`` -> ``orders/create``, for the topics the connector registers."""
    for topic in WEBHOOK_TOPICS:
        if topic_enum(topic) == enum:
            return topic
    return enum.lower()


class TokenRequestError(PlatformError):
    """Shopify's token endpoint refused the grant (``error`` holds its OAuth error code)."""

    def __init__(self, message: str, *, error: str, status: int | None) -> None:
        super().__init__(message, status=status)
        self.error = error


@dataclass(frozen=True, kw_only=True)
class Subscription:
    """A webhook subscription as the GraphQL Admin API lists it."""

    id: str
    topic: str
    uri: str


class ShopifyAdmin:
    """Talks to one app's shops: token grants and webhook subscriptions."""

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        url_template: str,
        timeout: float,
        policy: AddressPolicy | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """``policy`` defaults to public addresses only; ``resolver`` to the system's."""
        self.api_key = api_key
        self._secret = api_secret
        self._template = url_template
        self._timeout = timeout
        self._http = store_session(policy or AddressPolicy(), resolver)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ShopifyAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_settings(cls, settings: Settings) -> ShopifyAdmin:
        if not settings.shopify_api_key or not settings.shopify_api_secret:
            raise ConfigError(
                "SHOPIFY_API_KEY and SHOPIFY_API_SECRET are needed to install the Shopify app"
            )
        return cls(
            api_key=settings.shopify_api_key,
            api_secret=settings.shopify_api_secret,
            url_template=settings.shopify_admin_url_template,
            timeout=settings.http_timeout,
            policy=shopify_policy(settings),
            resolver=settings.store_resolver,
        )

    def base(self, shop: str) -> str:
        return admin_base(self._template, shop)

    # -- tokens ---------------------------------------------------------------------

    def exchange_code(self, shop: str, code: str, now: datetime) -> TokenGrant:
        """Authorization-code grant, asking for an expiring offline token."""
        return self._grant(shop, {"code": code, "expiring": "1"}, now)

    def exchange_session_token(
        self, shop: str, session_token: str, now: datetime
    ) -> TokenGrant:
        """Token-exchange grant: an embedded app's session token -> an expiring offline token."""
        return self._grant(
            shop,
            {
                "grant_type": GRANT_TOKEN_EXCHANGE,
                "subject_token": session_token,
                "subject_token_type": TOKEN_TYPE_ID_TOKEN,
                "requested_token_type": TOKEN_TYPE_OFFLINE,
                "expiring": "1",
            },
            now,
        )

    def refresh(self, shop: str, refresh_token: str, now: datetime) -> TokenGrant:
        """Refresh-token grant: a new access token and a new refresh token."""
        return self._grant(
            shop, {"grant_type": "refresh_token", "refresh_token": refresh_token}, now
        )

    def _grant(self, shop: str, fields: Mapping[str, str], now: datetime) -> TokenGrant:
        url = f"{self.base(shop)}/admin/oauth/access_token"
        body = {"client_id": self.api_key, "client_secret": self._secret, **fields}
        try:
            rv = self._http.post(
                url,
                data=body,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise PlatformError(
                f"Shopify's token endpoint for {shop} did not answer"
            ) from exc
        answer = _json(rv)
        if rv.status_code != 200:
            error = str(answer.get("error") or f"http_{rv.status_code}")
            detail = answer.get("error_description") or error
            raise TokenRequestError(
                f"Shopify refused the token request for {shop}: {detail}",
                error=error,
                status=rv.status_code,
            )
        return parse_token_answer(answer, now)

    # -- GraphQL --------------------------------------------------------------------

    def graphql(
        self, shop: str, token: str, query: str, variables: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run one GraphQL Admin query; returns ``data``."""
        url = f"{self.base(shop)}/admin/api/{API_VERSION}/graphql.json"
        try:
            rv = self._http.post(
                url,
                json={"query": query, "variables": dict(variables)},
                headers={"X-Shopify-Access-Token": token, "Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise PlatformError(
                f"Shopify's Admin API for {shop} did not answer"
            ) from exc
        answer = _json(rv)
        if rv.status_code != 200:
            raise PlatformError(
                f"Shopify's Admin API answered {rv.status_code} for {shop}",
                status=rv.status_code,
            )
        errors = answer.get("errors")
        if errors:
            raise PlatformError(
                f"Shopify's Admin API refused a query for {shop}: {errors}"
            )
        data = answer.get("data")
        if not isinstance(data, dict):
            raise PlatformError(f"Shopify's Admin API answered {shop} without data")
        return data

    def list_subscriptions(self, shop: str, token: str) -> list[Subscription]:
        """The shop's API-created subscriptions for the connector's topics."""
        found: list[Subscription] = []
        after: str | None = None
        while True:
            data = self.graphql(
                shop,
                token,
                _SUBSCRIPTIONS_QUERY,
                {"topics": [topic_enum(t) for t in WEBHOOK_TOPICS], "after": after},
            )
            page = data.get("webhookSubscriptions") or {}
            for node in page.get("nodes") or []:
                found.append(
                    Subscription(
                        id=str(node["id"]),
                        topic=topic_name(str(node["topic"])),
                        uri=str(node.get("uri") or ""),
                    )
                )
            info = page.get("pageInfo") or {}
            if not info.get("hasNextPage"):
                return found
            after = info.get("endCursor")

    def create_subscription(
        self, shop: str, token: str, topic: str, uri: str
    ) -> Subscription:
        data = self.graphql(
            shop,
            token,
            _CREATE_MUTATION,
            {"topic": topic_enum(topic), "webhookSubscription": {"uri": uri}},
        )
        return _subscription(data.get("webhookSubscriptionCreate"), shop, topic)

    def update_subscription(
        self, shop: str, token: str, subscription_id: str, topic: str, uri: str
    ) -> Subscription:
        data = self.graphql(
            shop,
            token,
            _UPDATE_MUTATION,
            {"id": subscription_id, "webhookSubscription": {"uri": uri}},
        )
        return _subscription(data.get("webhookSubscriptionUpdate"), shop, topic)

    def ensure_subscriptions(self, shop: str, token: str, uri: str) -> dict[str, str]:
        """Make every connector topic deliver to ``uri``, creating only what is missing.

        Returns topic -> subscription id. Idempotent: a re-install or a reconciliation
        that finds everything in place makes no mutation.
        """
        existing: dict[str, Subscription] = {}
        for sub in self.list_subscriptions(shop, token):
            # Prefer the one already pointing at us if Shopify holds several.
            if sub.topic not in existing or sub.uri == uri:
                existing[sub.topic] = sub
        ids: dict[str, str] = {}
        for topic in WEBHOOK_TOPICS:
            found = existing.get(topic)
            if found is None:
                sub = self.create_subscription(shop, token, topic, uri)
                log.info(
                    "created webhook subscription %s for %s on %s", sub.id, topic, shop
                )
            elif found.uri != uri:
                # APP_URL moved: point the subscription at the new address.
                sub = self.update_subscription(shop, token, found.id, topic, uri)
                log.info(
                    "moved webhook subscription %s for %s on %s", sub.id, topic, shop
                )
            else:
                sub = found
            ids[topic] = sub.id
        return ids


def _subscription(payload: Any, shop: str, topic: str) -> Subscription:
    if not isinstance(payload, dict):
        raise PlatformError(f"Shopify did not answer the webhook mutation for {shop}")
    errors = payload.get("userErrors") or []
    if errors:
        messages = "; ".join(str(e.get("message")) for e in errors)
        raise PlatformError(
            f"Shopify refused the {topic} webhook subscription for {shop}: {messages}"
        )
    node = payload.get("webhookSubscription")
    if not isinstance(node, dict) or not node.get("id"):
        raise PlatformError(f"Shopify returned no webhook subscription for {shop}")
    return Subscription(id=str(node["id"]), topic=topic, uri=str(node.get("uri") or ""))


def _json(rv: requests.Response) -> dict[str, Any]:
    try:
        body = rv.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# -- order sweeps -------------------------------------------------------------------------

#: orders per page and line items per order: with the fields below a page's requested cost
#: stays under the 1,000-point single-query limit
#: (https://shopify.dev/docs/api/usage/limits#graphql-admin-api-rate-limits)
ORDERS_PAGE_SIZE = 10
ORDER_LINE_ITEMS = 25
ORDER_TRANSACTIONS = 10

ORDERS_QUERY = """
query ConnectorOrders($first: Int!, $after: String, $query: String, $lines: Int!, $transactions: Int!) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    nodes {
      legacyResourceId
      test
      displayFinancialStatus
      cancelledAt
      processedAt
      createdAt
      updatedAt
      currencyCode
      presentmentCurrencyCode
      totalPriceSet {
        shopMoney { amount currencyCode }
        presentmentMoney { amount currencyCode }
      }
      email
      phone
      sourceName
      clientIp
      statusPageUrl
      customAttributes { key value }
      customer { legacyResourceId email phone firstName lastName }
      billingAddress { firstName lastName city provinceCode zip countryCodeV2 phone }
      shippingAddress { firstName lastName city provinceCode zip countryCodeV2 phone }
      customerJourneySummary { lastVisit { landingPage } }
      transactions(first: $transactions) { kind status processedAt }
      lineItems(first: $lines) {
        nodes {
          quantity
          sku
          variant { legacyResourceId }
          product { legacyResourceId }
          originalUnitPriceSet {
            shopMoney { amount currencyCode }
            presentmentMoney { amount currencyCode }
          }
        }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}
"""


@dataclass(frozen=True, kw_only=True)
class Cost:
    """``extensions.cost`` of a GraphQL answer (points; ``restore_rate`` in points per second)."""

    requested: float
    actual: float | None
    available: float
    maximum: float
    restore_rate: float

    def wait_for(self, points: float) -> float:
        """Seconds until ``points`` are available again in the bucket (0 when they are).

        One point more than the deficit: the bucket's level is rounded in the answer.
        """
        if self.available >= points or self.restore_rate <= 0:
            return 0.0
        return (min(points, self.maximum) - self.available + 1) / self.restore_rate


@dataclass(frozen=True, kw_only=True)
class CostedAnswer:
    """A GraphQL answer with its cost; ``throttled`` when Shopify refused it for the bucket."""

    data: dict[str, Any]
    cost: Cost | None
    throttled: bool


def read_cost(answer: Mapping[str, Any]) -> Cost | None:
    """The ``extensions.cost`` block of an answer, or None when it has none (pure)."""
    cost = (answer.get("extensions") or {}).get("cost")
    if not isinstance(cost, Mapping):
        return None
    status = cost.get("throttleStatus") or {}
    try:
        return Cost(
            requested=float(cost.get("requestedQueryCost") or 0),
            actual=(
                float(cost["actualQueryCost"])
                if cost.get("actualQueryCost") is not None
                else None
            ),
            available=float(status.get("currentlyAvailable") or 0),
            maximum=float(status.get("maximumAvailable") or 0),
            restore_rate=float(status.get("restoreRate") or 0),
        )
    except (TypeError, ValueError):
        return None


def is_throttled(answer: Mapping[str, Any]) -> bool:
    """True for Shopify's ``THROTTLED`` error answer (HTTP 200, ``errors[].extensions.code``)."""
    errors = answer.get("errors")
    if not isinstance(errors, list):
        return False
    return any(
        isinstance(e, Mapping)
        and isinstance(e.get("extensions"), Mapping)
        and e["extensions"].get("code") == "THROTTLED"
        for e in errors
    )


def graphql_costed(
    admin: ShopifyAdmin,
    shop: str,
    token: str,
    query: str,
    variables: Mapping[str, Any],
) -> CostedAnswer:
    """Run one GraphQL Admin query and keep ``extensions.cost``; a THROTTLED answer is returned.

    Raises:
        PlatformError: Shopify is unreachable, answers non-200, or with another error.
    """
    url = f"{admin.base(shop)}/admin/api/{API_VERSION}/graphql.json"
    try:
        rv = admin._http.post(
            url,
            json={"query": query, "variables": dict(variables)},
            headers={"X-Shopify-Access-Token": token, "Accept": "application/json"},
            timeout=admin._timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise PlatformError(f"Shopify's Admin API for {shop} did not answer") from exc
    answer = _json(rv)
    if rv.status_code != 200:
        raise PlatformError(
            f"Shopify's Admin API answered {rv.status_code} for {shop}",
            status=rv.status_code,
        )
    cost = read_cost(answer)
    if is_throttled(answer):
        return CostedAnswer(data={}, cost=cost, throttled=True)
    errors = answer.get("errors")
    if errors:
        raise PlatformError(f"Shopify's Admin API refused a query for {shop}: {errors}")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise PlatformError(f"Shopify's Admin API answered {shop} without data")
    return CostedAnswer(data=data, cost=cost, throttled=False)


def orders_search(since: datetime, until: datetime) -> str:
    """The ``query`` argument selecting orders updated in ``[since, until]``.

    Shopify's search syntax: https://shopify.dev/docs/api/usage/search-syntax
    (``updated_at`` is one of the ``orders`` query's filters).
    """
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (
        f"updated_at:>='{since.astimezone(UTC).strftime(fmt)}' "
        f"AND updated_at:<='{until.astimezone(UTC).strftime(fmt)}'"
    )


def iter_orders(
    admin: ShopifyAdmin,
    shop: str,
    token: str,
    since: datetime,
    until: datetime,
    *,
    sleep: Callable[[float], bool],
    max_throttled: int = 20,
) -> Iterator[dict[str, Any]]:
    """Every order node updated in ``[since, until]``, page by page, within the cost budget.

    Before each page, when the bucket (as the last answer reported it) holds fewer points
    than the page's requested cost, waits for it to refill at the restore rate; a THROTTLED
    answer is waited out and asked again. ``sleep(seconds)`` returns True to stop early
    (the worker is shutting down). Source: https://shopify.dev/docs/api/usage/limits

    Raises:
        PlatformError: Shopify refuses the query, or stays throttled ``max_throttled`` times.
    """
    after: str | None = None
    last: Cost | None = None
    throttled = 0
    variables: dict[str, Any] = {
        "first": ORDERS_PAGE_SIZE,
        "query": orders_search(since, until),
        "lines": ORDER_LINE_ITEMS,
        "transactions": ORDER_TRANSACTIONS,
    }
    while True:
        if last is not None:
            wait = last.wait_for(last.requested)
            if wait > 0 and sleep(wait):
                return
        answer = graphql_costed(
            admin, shop, token, ORDERS_QUERY, {**variables, "after": after}
        )
        if answer.cost is not None:
            last = answer.cost
        if answer.throttled:
            throttled += 1
            if throttled > max_throttled:
                raise PlatformError(
                    f"Shopify kept throttling the order sweep of {shop}"
                )
            wait = last.wait_for(last.requested) if last is not None else 1.0
            if sleep(max(wait, 0.5)):
                return
            continue
        page = answer.data.get("orders") or {}
        for node in page.get("nodes") or []:
            if isinstance(node, dict):
                yield node
        info = page.get("pageInfo") or {}
        if not info.get("hasNextPage") or not info.get("endCursor"):
            return
        after = str(info["endCursor"])
