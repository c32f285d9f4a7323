"""A local fake Shopify: OAuth consent and token endpoint, GraphQL webhook subscriptions.

Built from Shopify's documented answers. Every shop lives under ``/<shop>/`` so the
connector reaches it with ``SHOPIFY_ADMIN_URL_TEMPLATE = "http://127.0.0.1:PORT/{shop}"``.

- ``GET /<shop>/admin/oauth/authorize``: the merchant approves; redirects to
  ``redirect_uri`` with ``code``, ``hmac``, ``host``, ``shop``, ``state``, ``timestamp``
  signed with the client secret (hex HMAC-SHA256 of the sorted parameters).
- ``POST /<shop>/admin/oauth/access_token``: the authorization-code grant (a code works
  once), the token-exchange grant (the subject token is a session token for this shop)
  and the refresh-token grant. ``expiring=1`` answers ``access_token``, ``scope``,
  ``expires_in`` (3600), ``refresh_token``, ``refresh_token_expires_in`` (90 days).
  A refresh token is retired once its replacement is used (Shopify's 2026-08 rule); with
  ``strict_refresh`` any second use is refused, as before that rule. Refusals are
  ``400 {"error": "invalid_grant", "error_description": ...}``.
- ``POST /<shop>/admin/api/<version>/graphql.json``: ``webhookSubscriptions`` (with
  ``topics`` filter and cursor pages), ``webhookSubscriptionCreate`` (``userErrors`` when
  the address is taken or not https), ``webhookSubscriptionUpdate`` and
  ``webhookSubscriptionDelete``; ``X-Shopify-Access-Token`` must be a live token of the shop.
- The ``orders`` query (https://shopify.dev/docs/api/admin-graphql/latest/queries/orders):
  ``first``/``after`` cursor pages sorted by ``UPDATED_AT``, the ``query`` search filter on
  ``updated_at`` (``>``, ``>=``, ``<``, ``<=``, quoted ISO times, joined by ``AND``), nodes
  in the GraphQL ``Order`` shape as :meth:`FakeShopify.add_order` stored them.
- Cost-based throttling (https://shopify.dev/docs/api/usage/limits): every answer carries
  ``extensions.cost`` (``requestedQueryCost``, ``actualQueryCost``, ``throttleStatus``
  ``{maximumAvailable, currentlyAvailable, restoreRate}``); a query costing more than the
  bucket holds is answered ``200 {"errors": [{"message": "Throttled", "extensions":
  {"code": "THROTTLED"}}]}`` and one above 1,000 points with ``MAX_COST_EXCEEDED``. The
  bucket refills at ``restore_rate`` points per second of ``clock``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from flask import Flask, Response, jsonify, redirect, request

ACCESS_TTL = 3600
REFRESH_TTL = 90 * 24 * 3600
PAGE_SIZE = 2  # small pages, so clients must follow pageInfo


def sign_query(params: dict[str, str], secret: str) -> str:
    """Shopify's query HMAC: hex HMAC-SHA256 of ``k=v`` pairs sorted by key, ``hmac`` left out."""
    message = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "hmac")
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def make_session_token(
    *,
    secret: str,
    api_key: str,
    shop: str,
    now: float | None = None,
    ttl: int = 60,
    algorithm: str = "HS256",
    **overrides: Any,
) -> str:
    """A session token as App Bridge hands it to an embedded app (claims can be overridden)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": f"https://{shop}/admin",
        "dest": f"https://{shop}",
        "aud": api_key,
        "sub": "42",
        "exp": issued + ttl,
        "nbf": issued,
        "iat": issued,
        "jti": secrets.token_hex(8),
        "sid": secrets.token_hex(8),
    }
    claims.update(overrides)
    return jwt.encode(claims, secret, algorithm=algorithm)


@dataclass
class RefreshToken:
    shop: str
    expires_at: float
    uses: int = 0
    #: the refresh token this one's use produced, and whether that one was used since
    replacement: str | None = None
    retired: bool = False


@dataclass
class FakeShopify:
    """The fake's state; ``app()`` serves it."""

    api_key: str
    api_secret: str
    #: allowed redirect_uri prefixes (the app's /shopify/callback)
    redirect_prefixes: tuple[str, ...] = ()
    scopes: str = "read_orders"
    strict_refresh: bool = False
    clock: Callable[[], float] = time.time
    codes: dict[str, str] = field(default_factory=dict)
    access_tokens: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    #: shop -> subscription gid -> (topic enum, uri)
    subscriptions: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    #: what happened, for assertions: grants by type, mutations by name, API versions used
    grants: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    api_versions: set[str] = field(default_factory=set)
    #: shop -> GraphQL Order nodes (``legacyResourceId``, ``updatedAt``, ...)
    orders: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: the cost bucket: Shopify's standard plan
    bucket_max: float = 2000.0
    restore_rate: float = 100.0
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: orders queries answered, THROTTLED answers, and the lowest level the bucket reached
    order_pages: int = 0
    #: when set, the token endpoint waits for it before answering (a slow Shopify); and how
    #: many token requests are waiting
    token_gate: threading.Event | None = None
    token_waiting: int = 0
    #: the same for the ``orders`` query
    orders_gate: threading.Event | None = None
    orders_waiting: int = 0
    #: orders queries without a cursor: each starts a sweep
    order_sweeps: int = 0
    throttled: int = 0
    lowest_available: float = float("inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 1
    _version: int = 0
    _found_key: tuple[Any, ...] | None = None
    _found: list[dict[str, Any]] = field(default_factory=list)

    # -- helpers for tests -------------------------------------------------------------

    def topics(self, shop: str) -> dict[str, str]:
        """topic enum -> uri of the shop's subscriptions."""
        return {topic: uri for topic, uri in self.subscriptions.get(shop, {}).values()}

    def delete_topic(self, shop: str, topic_enum: str) -> None:
        """Remove a subscription, as Shopify does after repeated delivery failures."""
        subs = self.subscriptions.get(shop, {})
        for gid, (topic, _) in list(subs.items()):
            if topic == topic_enum:
                del subs[gid]

    def add_order(self, shop: str, node: dict[str, Any]) -> None:
        """Store (or replace) an order in the GraphQL ``Order`` shape."""
        with self._lock:
            self.orders.setdefault(shop, {})[str(node["legacyResourceId"])] = node
            self._version += 1

    def issue_expiring(
        self, shop: str, *, access_ttl: int = ACCESS_TTL
    ) -> dict[str, Any]:
        """Mint an expiring token pair for ``shop`` (the body the token endpoint answers)."""
        now = self.clock()
        access = "shpat_" + secrets.token_hex(16)
        refresh = "shprt_" + secrets.token_hex(16)
        self.access_tokens[access] = (shop, now + access_ttl)
        self.refresh_tokens[refresh] = RefreshToken(
            shop=shop, expires_at=now + REFRESH_TTL
        )
        return {
            "access_token": access,
            "scope": self.scopes,
            "expires_in": access_ttl,
            "refresh_token": refresh,
            "refresh_token_expires_in": REFRESH_TTL,
        }

    def _issue_permanent(self, shop: str) -> dict[str, Any]:
        access = "shpat_" + secrets.token_hex(16)
        self.access_tokens[access] = (shop, None)
        return {"access_token": access, "scope": self.scopes}

    # -- the HTTP face -------------------------------------------------------------------

    def app(self) -> Flask:
        app = Flask(__name__)

        @app.get("/<shop>/admin/oauth/authorize")
        def authorize(shop: str) -> Any:
            args = request.args
            if args.get("client_id") != self.api_key:
                return Response(
                    "Oauth error invalid_request: The client_id is invalid", 400
                )
            redirect_uri = args.get("redirect_uri", "")
            if not any(redirect_uri.startswith(p) for p in self.redirect_prefixes):
                return Response(
                    "Oauth error invalid_request: The redirect_uri is not whitelisted",
                    400,
                )
            code = secrets.token_hex(16)
            with self._lock:
                self.codes[code] = shop
            params = {
                "code": code,
                "host": "YWRtaW4uc2hvcGlmeS5jb20vc3RvcmUvZGVtbw",
                "shop": shop,
                "state": args.get("state", ""),
                "timestamp": str(int(self.clock())),
            }
            params["hmac"] = sign_query(params, self.api_secret)
            return redirect(f"{redirect_uri}?{urlencode(params)}", 302)

        @app.post("/<shop>/admin/oauth/access_token")
        def access_token(shop: str) -> Any:
            gate = self.token_gate
            if gate is not None:
                with self._lock:
                    self.token_waiting += 1
                gate.wait(30)
            body = request.get_json(silent=True) or request.form.to_dict()
            if (
                body.get("client_id") != self.api_key
                or body.get("client_secret") != self.api_secret
            ):
                return _error(400, "invalid_client", "Client credentials are invalid")
            grant = body.get("grant_type")
            expiring = body.get("expiring") == "1"
            with self._lock:
                if grant is None and "code" in body:
                    self.grants["authorization_code"] += 1
                    if self.codes.pop(body["code"], None) != shop:
                        return _error(
                            400,
                            "invalid_request",
                            "The authorization code was not found or was already used",
                        )
                    return jsonify(
                        self.issue_expiring(shop)
                        if expiring
                        else self._issue_permanent(shop)
                    )
                if grant == "urn:ietf:params:oauth:grant-type:token-exchange":
                    self.grants["token_exchange"] += 1
                    if not self._valid_subject(shop, body.get("subject_token", "")):
                        return _error(
                            400, "invalid_subject_token", "Session token is invalid"
                        )
                    return jsonify(
                        self.issue_expiring(shop)
                        if expiring
                        else self._issue_permanent(shop)
                    )
                if grant == "refresh_token":
                    self.grants["refresh_token"] += 1
                    return self._refresh(shop, body.get("refresh_token", ""))
            return _error(
                400, "unsupported_grant_type", "The grant type is not supported"
            )

        @app.post("/<shop>/admin/api/<version>/graphql.json")
        def graphql(shop: str, version: str) -> Any:
            gate = self.orders_gate
            if gate is not None and "orders(" in str(
                (request.get_json(silent=True) or {}).get("query", "")
            ):
                with self._lock:
                    self.orders_waiting += 1
                gate.wait(30)
            token = request.headers.get("X-Shopify-Access-Token", "")
            with self._lock:
                owner = self.access_tokens.get(token)
                if (
                    owner is None
                    or owner[0] != shop
                    or (owner[1] is not None and owner[1] <= self.clock())
                ):
                    return jsonify(
                        errors="[API] Invalid API key or access token (unrecognized login or wrong password)"
                    ), 401
                self.api_versions.add(version)
                payload = request.get_json(silent=True) or {}
                return jsonify(
                    self._graphql(
                        shop, payload.get("query", ""), payload.get("variables") or {}
                    )
                )

        return app

    # -- grants ------------------------------------------------------------------------

    def _valid_subject(self, shop: str, token: str) -> bool:
        try:
            claims = jwt.decode(
                token, self.api_secret, algorithms=["HS256"], audience=self.api_key
            )
        except jwt.PyJWTError:
            return False
        return bool(claims.get("dest") == f"https://{shop}")

    def _refresh(self, shop: str, token: str) -> Any:
        entry = self.refresh_tokens.get(token)
        if entry is None or entry.shop != shop or entry.expires_at <= self.clock():
            return _error(400, "invalid_grant", "Token has been expired or revoked.")
        if entry.retired or (self.strict_refresh and entry.uses):
            return _error(400, "invalid_grant", "Token has been expired or revoked.")
        entry.uses += 1
        # Using a replacement retires the token it replaced.
        for older in self.refresh_tokens.values():
            if older.replacement == token:
                older.retired = True
        body = self.issue_expiring(shop)
        entry.replacement = body["refresh_token"]
        return jsonify(body)

    # -- GraphQL -------------------------------------------------------------------------

    def _graphql(
        self, shop: str, query: str, variables: dict[str, Any]
    ) -> dict[str, Any]:
        if "orders(" in query:
            return self._orders(shop, variables)
        subs = self.subscriptions.setdefault(shop, {})
        if "webhookSubscriptionCreate" in query:
            self.mutations["webhookSubscriptionCreate"] += 1
            topic = variables.get("topic", "")
            uri = (variables.get("webhookSubscription") or {}).get("uri", "")
            errors = []
            if not uri.startswith("https://"):
                errors.append(
                    {
                        "field": ["webhookSubscription", "uri"],
                        "message": "Address is invalid",
                    }
                )
            elif (topic, uri) in subs.values():
                errors.append(
                    {
                        "field": ["webhookSubscription", "uri"],
                        "message": "Address for this topic has already been taken",
                    }
                )
            if errors:
                return {
                    "data": {
                        "webhookSubscriptionCreate": {
                            "webhookSubscription": None,
                            "userErrors": errors,
                        }
                    }
                }
            gid = f"gid://shopify/WebhookSubscription/{self._next_id}"
            self._next_id += 1
            subs[gid] = (topic, uri)
            node = {"id": gid, "topic": topic, "uri": uri}
            return {
                "data": {
                    "webhookSubscriptionCreate": {
                        "webhookSubscription": node,
                        "userErrors": [],
                    }
                }
            }
        if "webhookSubscriptionUpdate" in query:
            self.mutations["webhookSubscriptionUpdate"] += 1
            gid = variables.get("id", "")
            if gid not in subs:
                errors = [
                    {"field": ["id"], "message": "Webhook subscription does not exist"}
                ]
                return {
                    "data": {
                        "webhookSubscriptionUpdate": {
                            "webhookSubscription": None,
                            "userErrors": errors,
                        }
                    }
                }
            uri = (variables.get("webhookSubscription") or {}).get("uri", "")
            subs[gid] = (subs[gid][0], uri)
            node = {"id": gid, "topic": subs[gid][0], "uri": uri}
            return {
                "data": {
                    "webhookSubscriptionUpdate": {
                        "webhookSubscription": node,
                        "userErrors": [],
                    }
                }
            }
        if "webhookSubscriptionDelete" in query:
            self.mutations["webhookSubscriptionDelete"] += 1
            gid = variables.get("id", "")
            if subs.pop(gid, None) is None:
                errors = [
                    {"field": ["id"], "message": "Webhook subscription does not exist"}
                ]
                return {
                    "data": {
                        "webhookSubscriptionDelete": {
                            "deletedWebhookSubscriptionId": None,
                            "userErrors": errors,
                        }
                    }
                }
            return {
                "data": {
                    "webhookSubscriptionDelete": {
                        "deletedWebhookSubscriptionId": gid,
                        "userErrors": [],
                    }
                }
            }
        if "webhookSubscriptions" in query:
            wanted = variables.get("topics")
            rows = [
                {"id": gid, "topic": topic, "uri": uri}
                for gid, (topic, uri) in sorted(
                    subs.items(), key=lambda kv: int(kv[0].rsplit("/", 1)[1])
                )
                if not wanted or topic in wanted
            ]
            start = int(variables.get("after") or 0)
            page = rows[start : start + PAGE_SIZE]
            more = start + PAGE_SIZE < len(rows)
            return {
                "data": {
                    "webhookSubscriptions": {
                        "nodes": page,
                        "pageInfo": {
                            "hasNextPage": more,
                            "endCursor": str(start + PAGE_SIZE) if more else None,
                        },
                    }
                }
            }
        return {"errors": [{"message": "the fake does not know this query"}]}

    # -- orders and the cost bucket -------------------------------------------------------

    def _available(self, shop: str) -> float:
        level, at = self.buckets.get(shop, (self.bucket_max, self.clock()))
        now = self.clock()
        return min(self.bucket_max, level + max(now - at, 0.0) * self.restore_rate)

    def _cost(
        self, requested: float, actual: float | None, shop: str
    ) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": self.bucket_max,
                "currentlyAvailable": round(self._available(shop), 1),
                "restoreRate": self.restore_rate,
            },
        }

    def _orders(self, shop: str, variables: dict[str, Any]) -> dict[str, Any]:
        first = int(variables.get("first") or 0)
        lines = int(variables.get("lines") or 0)
        transactions = int(variables.get("transactions") or 0)
        if not 1 <= first <= 250:
            return {"errors": [{"message": "first must be between 1 and 250"}]}
        # Shopify's calculation: a connection costs 2 plus ``first`` times its node's cost.
        per_order = 6 + transactions + (2 + lines * 3)
        requested = float(2 + first * per_order)
        if requested > 1000:
            return {
                "errors": [
                    {
                        "message": f"Query cost is {requested:.0f}, which exceeds the single query max cost limit (1000).",
                        "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested},
                    }
                ]
            }
        available = self._available(shop)
        if requested > available:
            self.throttled += 1
            self.buckets[shop] = (available, self.clock())
            return {
                "errors": [
                    {"message": "Throttled", "extensions": {"code": "THROTTLED"}}
                ],
                "extensions": {"cost": self._cost(requested, None, shop)},
            }
        search = str(variables.get("query") or "")
        key = (shop, search, len(self.orders.get(shop, {})), self._version)
        if self._found_key != key:  # pages of one sweep share the search's result
            self._found = sorted(
                (n for n in self.orders.get(shop, {}).values() if _matches(n, search)),
                key=lambda n: (n["updatedAt"], int(n["legacyResourceId"])),
            )
            self._found_key = key
        found = self._found
        start = int(variables.get("after") or 0)
        page = found[start : start + first]
        more = start + first < len(found)
        actual = 2 + sum(
            6
            + len(n.get("transactions") or [])
            + 2
            + 3 * len((n.get("lineItems") or {}).get("nodes") or [])
            for n in page
        )
        left = available - actual
        self.lowest_available = min(self.lowest_available, available - requested)
        self.buckets[shop] = (left, self.clock())
        self.order_pages += 1
        if not variables.get("after"):
            self.order_sweeps += 1
        return {
            "data": {
                "orders": {
                    "nodes": [_select(n, lines, transactions) for n in page],
                    "pageInfo": {
                        "hasNextPage": more,
                        "endCursor": str(start + first) if more else None,
                    },
                }
            },
            "extensions": {"cost": self._cost(requested, float(actual), shop)},
        }


_TERM = re.compile(r"updated_at:(>=|<=|>|<)'?([0-9T:.+\-Z]+)'?")


def _matches(node: dict[str, Any], query: str) -> bool:
    """Shopify search syntax, the part the connector uses: ``updated_at`` comparisons."""
    updated = datetime.fromisoformat(node["updatedAt"].replace("Z", "+00:00"))
    for op, raw in _TERM.findall(query):
        bound = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if bound.tzinfo is None:
            bound = bound.replace(tzinfo=UTC)
        ok = {
            ">": updated > bound,
            ">=": updated >= bound,
            "<": updated < bound,
            "<=": updated <= bound,
        }[op]
        if not ok:
            return False
    return True


def _select(node: dict[str, Any], lines: int, transactions: int) -> dict[str, Any]:
    rv = dict(node)
    rv["lineItems"] = {
        "nodes": list((node.get("lineItems") or {}).get("nodes") or [])[:lines]
    }
    rv["transactions"] = list(node.get("transactions") or [])[:transactions]
    return rv


def graphql_order(
    order_id: int,
    *,
    updated_at: datetime,
    created_at: datetime | None = None,
    processed_at: datetime | None = None,
    financial_status: str = "PAID",
    paid_at: datetime | None = None,
    email: str = "buyer@example.com",
    total: str = "49.90",
    currency: str = "EUR",
    test: bool = False,
) -> dict[str, Any]:
    """An order in the GraphQL Admin ``Order`` shape, with the fields the connector asks for."""
    created = created_at or updated_at
    processed = processed_at or created
    money = {"amount": total, "currencyCode": currency}
    paid = paid_at or processed
    iso = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "legacyResourceId": str(order_id),
        "test": test,
        "displayFinancialStatus": financial_status,
        "cancelledAt": None,
        "processedAt": processed.astimezone(UTC).strftime(iso),
        "createdAt": created.astimezone(UTC).strftime(iso),
        "updatedAt": updated_at.astimezone(UTC).strftime(iso),
        "currencyCode": currency,
        "presentmentCurrencyCode": currency,
        "totalPriceSet": {"shopMoney": money, "presentmentMoney": money},
        "email": email,
        "phone": None,
        "sourceName": "web",
        "clientIp": "203.0.113.7",
        "statusPageUrl": f"https://shop.example/123/orders/{order_id}/authenticate?key=k",
        "customAttributes": [],
        "customer": {
            "legacyResourceId": str(order_id + 1000),
            "email": email,
            "phone": None,
            "firstName": "Ada",
            "lastName": "Lovelace",
        },
        "billingAddress": {
            "firstName": "Ada",
            "lastName": "Lovelace",
            "city": "Paris",
            "provinceCode": None,
            "zip": "75001",
            "countryCodeV2": "FR",
            "phone": None,
        },
        "shippingAddress": None,
        "customerJourneySummary": None,
        "transactions": (
            [
                {
                    "kind": "SALE",
                    "status": "SUCCESS",
                    "processedAt": paid.astimezone(UTC).strftime(iso),
                }
            ]
            if financial_status == "PAID"
            else []
        ),
        "lineItems": {
            "nodes": [
                {
                    "quantity": 1,
                    "sku": "SKU-1",
                    "variant": {"legacyResourceId": "4400"},
                    "product": {"legacyResourceId": "3300"},
                    "originalUnitPriceSet": {
                        "shopMoney": money,
                        "presentmentMoney": money,
                    },
                }
            ]
        },
    }


def _error(status: int, error: str, description: str) -> Any:
    return jsonify(error=error, error_description=description), status
