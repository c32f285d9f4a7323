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
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 1

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


def _error(status: int, error: str, description: str) -> Any:
    return jsonify(error=error, error_description=description), status
