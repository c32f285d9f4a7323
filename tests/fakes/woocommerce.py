"""A fake WooCommerce store, built from WooCommerce's own code (a Flask app served on loopback).

What it does, and where WooCommerce does it:

- ``/wc-auth/v1/authorize`` and ``/wc-auth/v1/access_granted`` (``class-wc-auth.php``): the
  parameters are validated as ``make_validation`` does, approval creates a key pair, POSTs
  ``{key_id, user_id, consumer_key, consumer_secret, key_permissions}`` as JSON to the
  ``callback_url``, deletes the key unless the answer is exactly 200, then redirects to
  ``return_url`` with ``success=1&user_id=...``.
- ``/wp-json/wc/v3/webhooks`` (``class-wc-rest-webhooks-v1-controller.php``): list (paged,
  ``X-WP-TotalPages``), create (201, then the ``webhook_id=N`` ping to the delivery URL before
  answering), update, delete (``force=true`` only).
- Authentication (``class-wc-rest-authentication.php``): Basic (or ``consumer_key`` /
  ``consumer_secret`` query parameters) when the store is on https, one-legged OAuth 1.0a
  (query ``oauth_*``, HMAC-SHA1/256 over every request parameter, key ``secret&``,
  15-minute timestamps, single-use nonces) otherwise; WooCommerce's error objects, 401.
- ``GET /wp-json/wc/v3/orders`` (``class-wc-rest-orders-controller.php``,
  https://woocommerce.github.io/woocommerce-rest-api-docs/#list-all-orders): ``modified_after``
  / ``modified_before`` (ISO 8601, compared with ``date_modified_gmt`` when ``dates_are_gmt``
  is true, else with the store-local ``date_modified``), ``status`` (``any`` by default),
  ``orderby`` ``id``/``date``/``modified``, ``order``, ``per_page`` (1-100, else 400
  ``rest_invalid_param``) and ``page``; ``X-WP-Total`` and ``X-WP-TotalPages`` headers.
- Webhook status (``active``, ``paused``, ``disabled``) is read with ``GET /webhooks/<id>``
  and set with ``PUT``; :meth:`FakeWooCommerce.fail_deliveries` disables a webhook as
  ``WC_Webhook::failed_delivery`` does after more than five failures in a row.
- :meth:`FakeWooCommerce.deliver` sends a webhook as ``WC_Webhook::deliver`` does, signed
  with ``wp_specialchars_decode($secret, ENT_QUOTES)``.

The one switch a real store lacks: ``require_https_callback=False`` lets the key exchange post
to a connector served over plain http on loopback (WooCommerce insists on an https callback).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import requests
from flask import Flask, Response, jsonify, redirect, request

VALID_RESOURCES = ("coupon", "customer", "order", "product")
VALID_EVENTS = ("created", "updated", "deleted", "restored")


def php_rawurlencode(text: str) -> str:
    return quote(text, safe="-_.~")


def php_strtr(text: str, table: dict[str, str]) -> str:
    """PHP's strtr with an array: longest key first at each position, no re-reading."""
    keys = sorted(table, key=len, reverse=True)
    out: list[str] = []
    i = 0
    while i < len(text):
        for key in keys:
            if text.startswith(key, i):
                out.append(table[key])
                i += len(key)
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def wp_specialchars_decode_quotes(text: str) -> str:
    """WordPress's wp_specialchars_decode($text, ENT_QUOTES), as formatting.php writes it."""
    if "&" not in text:
        return text
    preg = [
        (r"&#0*39;", "&#039;", 0),
        (r"&#x0*27;", "&#x27;", re.I),
        (r"&#0*34;", "&#034;", 0),
        (r"&#x0*22;", "&#x22;", re.I),
        (r"&#0*60;", "&#060;", 0),
        (r"&#0*62;", "&#062;", 0),
        (r"&#0*38;", "&#038;", 0),
        (r"&#x0*26;", "&#x26;", re.I),
    ]
    for pattern, repl, flags in preg:
        text = re.sub(pattern, repl, text, flags=flags)
    table = {
        "&#039;": "'",
        "&#x27;": "'",
        "&quot;": '"',
        "&#034;": '"',
        "&#x22;": '"',
        "&lt;": "<",
        "&#060;": "<",
        "&gt;": ">",
        "&#062;": ">",
        "&amp;": "&",
        "&#038;": "&",
        "&#x26;": "&",
    }
    return php_strtr(text, table)


def woocommerce_signature(body: bytes, secret: str) -> str:
    key = wp_specialchars_decode_quotes(secret).encode()
    return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()


def wc_error(code: str, message: str, status: int) -> tuple[Response, int]:
    return jsonify(code=code, message=message, data={"status": status}), status


@dataclass
class ApiKey:
    key_id: int
    consumer_key: str
    consumer_secret: str
    permissions: str
    description: str
    nonces: dict[int, str] = field(default_factory=dict)


class FakeWooCommerce:
    """One store: its API keys, its webhooks, and what it sent."""

    def __init__(
        self,
        *,
        is_ssl: bool = False,
        require_https_callback: bool = True,
        callback_timeout: float = 60.0,
    ) -> None:
        self.is_ssl = is_ssl
        self.require_https_callback = require_https_callback
        self.callback_timeout = callback_timeout
        self.keys: dict[str, ApiKey] = {}
        self.deleted_keys: list[ApiKey] = []
        self.callback_answers: list[int] = []
        self.webhooks: dict[int, dict[str, Any]] = {}
        self.pings: list[tuple[str, int | None]] = []
        self.rest_calls: list[tuple[str, str, str]] = []  # (method, path, auth method)
        #: order id -> a wc/v3 order (what GET /orders/<id> would answer)
        self.orders: dict[int, dict[str, Any]] = {}
        self.order_pages = 0
        #: first pages of the order list: each starts a sweep
        self.order_sweeps = 0
        self._ids = itertools.count(100)
        self._lock = threading.Lock()
        self.app = self._build_app()

    # -- helpers a test uses ------------------------------------------------------

    def add_key(self, permissions: str = "read_write") -> ApiKey:
        key = ApiKey(
            key_id=next(self._ids),
            consumer_key="ck_" + secrets.token_hex(20),
            consumer_secret="cs_" + secrets.token_hex(20),
            permissions=permissions,
            description="added by hand",
        )
        self.keys[key.consumer_key] = key
        return key

    def deliver(
        self, webhook_id: int, body: bytes, *, topic: str | None = None
    ) -> requests.Response:
        """POST ``body`` to the webhook's delivery URL as ``WC_Webhook::deliver`` does."""
        hook = self.webhooks[webhook_id]
        topic = topic or hook["topic"]
        resource, _, event = topic.partition(".")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "WooCommerce/9.9.0 Hookshot (WordPress/6.8)",
            "X-WC-Webhook-Source": "https://store.example/",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": woocommerce_signature(body, hook["secret"]),
            "X-WC-Webhook-ID": str(webhook_id),
            # wp_hash( id . strtotime('now') ): the same for every delivery in one second
            "X-WC-Webhook-Delivery-ID": hashlib.md5(
                f"{webhook_id}{int(time.time())}".encode(), usedforsecurity=False
            ).hexdigest(),
        }
        return requests.post(
            hook["delivery_url"],
            data=body,
            headers=headers,
            timeout=60,
            allow_redirects=False,
        )

    def add_order(self, order: dict[str, Any]) -> None:
        """Store (or replace) a wc/v3 order; it needs ``id`` and ``date_modified_gmt``."""
        with self._lock:
            self.orders[int(order["id"])] = order

    def fail_deliveries(self, webhook_id: int) -> None:
        """What WooCommerce does after a sixth failed delivery in a row: status ``disabled``."""
        with self._lock:
            self.webhooks[webhook_id]["status"] = "disabled"

    def webhooks_for(self, delivery_url: str) -> list[dict[str, Any]]:
        return [w for w in self.webhooks.values() if w["delivery_url"] == delivery_url]

    # -- the app ------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask("fake_woocommerce")
        app.add_url_rule("/wc-auth/v1/<route>", view_func=self._wc_auth)
        app.add_url_rule(
            "/wp-json/wc/v3/webhooks",
            view_func=self._webhooks,
            methods=["GET", "POST"],
        )
        app.add_url_rule(
            "/wp-json/wc/v3/webhooks/<int:webhook_id>",
            view_func=self._webhook,
            methods=["GET", "PUT", "POST", "PATCH", "DELETE"],
        )
        app.add_url_rule("/wp-json/wc/v3/orders", view_func=self._orders)
        return app

    # wc-auth ----------------------------------------------------------------------

    def _wc_auth(self, route: str) -> Any:
        data = {}
        for param in ("app_name", "user_id", "return_url", "callback_url", "scope"):
            value = request.args.get(param, "")
            if not value:
                return self._die(f"Missing parameter {param}")
            data[param] = value
        if data["scope"] not in ("read", "write", "read_write"):
            return self._die(f"Invalid scope {data['scope']}")
        for param in ("return_url", "callback_url"):
            parts = urlsplit(data[param])
            if parts.scheme not in ("http", "https") or not parts.netloc:
                return self._die(f"The {data[param]} is not a valid URL")
        if self.require_https_callback and not data["callback_url"].lower().startswith(
            "https://"
        ):
            return self._die("The callback_url needs to be over SSL")
        if route == "authorize":
            query = urlencode({**data, "wc_auth_nonce": self._nonce(data)})
            granted = f"/wc-auth/v1/access_granted?{query}"
            denied = _add_query_arg(
                data["return_url"], {"success": "0", "user_id": data["user_id"]}
            )
            page = (
                f"<h1>{data['app_name']} would like to connect to your store</h1>"
                f"<a id='approve' href='{granted}'>Approve</a>"
                f"<a id='deny' href='{denied}'>Deny</a>"
            )
            return Response(page, mimetype="text/html")
        if route != "access_granted":
            return self._die("You do not have permission to access this page")
        if not hmac.compare_digest(
            request.args.get("wc_auth_nonce", ""), self._nonce(data)
        ):
            return self._die("Invalid nonce verification")
        key = ApiKey(
            key_id=next(self._ids),
            consumer_key="ck_" + secrets.token_hex(20),
            consumer_secret="cs_" + secrets.token_hex(20),
            permissions=data["scope"],
            description=f"{data['app_name']} - API",
        )
        with self._lock:
            self.keys[key.consumer_key] = key
        consumer_data = {
            "key_id": key.key_id,
            "user_id": data["user_id"],
            "consumer_key": key.consumer_key,
            "consumer_secret": key.consumer_secret,
            "key_permissions": key.permissions,
        }
        try:
            answer = requests.post(
                data["callback_url"],
                json=consumer_data,
                headers={"Content-Type": "application/json;charset=UTF-8"},
                timeout=self.callback_timeout,
            )
            status: int | None = answer.status_code
        except requests.RequestException:
            status = None
        self.callback_answers.append(status or 0)
        if status != 200:
            with self._lock:
                self.deleted_keys.append(self.keys.pop(key.consumer_key))
            return self._die(
                "An error occurred in the request and at the time were unable to send the consumer data"
            )
        return redirect(
            _add_query_arg(
                data["return_url"], {"success": "1", "user_id": data["user_id"]}
            ),
            code=302,
        )

    def _nonce(self, data: dict[str, str]) -> str:
        msg = "|".join(data[k] for k in sorted(data)).encode()
        return hmac.new(b"fake-wp-nonce", msg, hashlib.sha256).hexdigest()[:10]

    def _die(self, message: str) -> Response:
        return Response(
            f"<title>Access denied</title><p>Error: {message}.</p>",
            status=401,
            mimetype="text/html",
        )

    # REST authentication ----------------------------------------------------------

    def _authenticate(self) -> tuple[ApiKey | None, tuple[Response, int] | None, str]:
        """(key, error, method) the way WC_REST_Authentication decides."""
        if self.is_ssl:
            ck = request.args.get("consumer_key", "")
            cs = request.args.get("consumer_secret", "")
            if not (ck and cs) and request.authorization is not None:
                ck = request.authorization.username or ""
                cs = request.authorization.password or ""
            if ck and cs:
                key = self.keys.get(ck)
                if key is None:
                    pass  # WooCommerce falls through to OAuth, which finds no parameters
                elif not hmac.compare_digest(key.consumer_secret, cs):
                    return (
                        None,
                        wc_error(
                            "woocommerce_rest_authentication_error",
                            "Consumer secret is invalid.",
                            401,
                        ),
                        "basic_auth",
                    )
                else:
                    return key, None, "basic_auth"
        return self._oauth()

    def _oauth(self) -> tuple[ApiKey | None, tuple[Response, int] | None, str]:
        params = dict(parse_qsl(request.query_string.decode(), keep_blank_values=True))
        if request.mimetype == "application/x-www-form-urlencoded":
            params.update(request.form.to_dict())
        required = (
            "oauth_consumer_key",
            "oauth_timestamp",
            "oauth_nonce",
            "oauth_signature",
            "oauth_signature_method",
        )
        missing = [p for p in required if not params.get(p)]
        if len(missing) == len(required):
            return None, None, "oauth1"
        if missing:
            return (
                None,
                wc_error(
                    "woocommerce_rest_authentication_missing_parameter",
                    f"Missing OAuth parameters {', '.join(missing)}",
                    401,
                ),
                "oauth1",
            )
        key = self.keys.get(params["oauth_consumer_key"])
        if key is None:
            return (
                None,
                wc_error(
                    "woocommerce_rest_authentication_error",
                    "Consumer key is invalid.",
                    401,
                ),
                "oauth1",
            )
        scheme = "https" if self.is_ssl else "http"
        base_uri = php_rawurlencode(f"{scheme}://{request.host}{request.path}")
        given = params.pop("oauth_signature").replace(" ", "+")
        ordered = sorted(params.items(), key=lambda kv: kv[0].encode())
        pieces = [
            php_rawurlencode(f"{php_rawurlencode(k)}={php_rawurlencode(v)}")
            for k, v in ordered
        ]
        to_sign = f"{request.method}&{base_uri}&{'%26'.join(pieces)}"
        method = params["oauth_signature_method"]
        if method not in ("HMAC-SHA1", "HMAC-SHA256"):
            return (
                None,
                wc_error(
                    "woocommerce_rest_authentication_error",
                    "Invalid signature - signature method is invalid.",
                    401,
                ),
                "oauth1",
            )
        algo = hashlib.sha1 if method == "HMAC-SHA1" else hashlib.sha256
        expected = base64.b64encode(
            hmac.new(
                f"{key.consumer_secret}&".encode(), to_sign.encode(), algo
            ).digest()
        ).decode()
        if not hmac.compare_digest(expected, given):
            return (
                None,
                wc_error(
                    "woocommerce_rest_authentication_error",
                    "Invalid signature - provided signature does not match.",
                    401,
                ),
                "oauth1",
            )
        try:
            stamp = int(params["oauth_timestamp"])
        except ValueError:
            stamp = 0
        if abs(stamp - time.time()) > 15 * 60:
            return (
                None,
                wc_error(
                    "woocommerce_rest_authentication_error", "Invalid timestamp.", 401
                ),
                "oauth1",
            )
        with self._lock:
            if params["oauth_nonce"] in key.nonces.values():
                return (
                    None,
                    wc_error(
                        "woocommerce_rest_authentication_error",
                        "Invalid nonce - nonce has already been used.",
                        401,
                    ),
                    "oauth1",
                )
            key.nonces[len(key.nonces)] = params["oauth_nonce"]
        return key, None, "oauth1"

    def _authorize(self, action: str) -> tuple[Response, int] | None:
        key, error, method = self._authenticate()
        self.rest_calls.append((request.method, request.path, method))
        if error is not None:
            return error
        if key is None:
            code, message = {
                "read": (
                    "woocommerce_rest_cannot_view",
                    "Sorry, you cannot list resources.",
                ),
                "create": (
                    "woocommerce_rest_cannot_create",
                    "Sorry, you are not allowed to create resources.",
                ),
                "edit": (
                    "woocommerce_rest_cannot_edit",
                    "Sorry, you are not allowed to edit this resource.",
                ),
                "delete": (
                    "woocommerce_rest_cannot_delete",
                    "Sorry, you are not allowed to delete this resource.",
                ),
            }[action]
            return wc_error(code, message, 401)
        needs_write = request.method in ("POST", "PUT", "PATCH", "DELETE")
        if needs_write and key.permissions not in ("write", "read_write"):
            return wc_error(
                "woocommerce_rest_authentication_error",
                "The API key provided does not have write permissions.",
                401,
            )
        if not needs_write and key.permissions not in ("read", "read_write"):
            return wc_error(
                "woocommerce_rest_authentication_error",
                "The API key provided does not have read permissions.",
                401,
            )
        return None

    # REST webhooks ----------------------------------------------------------------

    def _webhooks(self) -> Any:
        if request.method == "GET":
            denied = self._authorize("read")
            if denied:
                return denied
            per_page = max(1, min(int(request.args.get("per_page", "10")), 100))
            page = max(1, int(request.args.get("page", "1")))
            hooks = sorted(self.webhooks.values(), key=lambda w: w["id"])
            pages = max(1, -(-len(hooks) // per_page))
            chunk = hooks[(page - 1) * per_page : page * per_page]
            rv = jsonify([self._public(w) for w in chunk])
            rv.headers["X-WP-Total"] = str(len(hooks))
            rv.headers["X-WP-TotalPages"] = str(pages)
            return rv
        denied = self._authorize("create")
        if denied:
            return denied
        body = request.get_json(silent=True) or {}
        if body.get("id"):
            return wc_error(
                "woocommerce_rest_shop_webhook_exists",
                "Cannot create existing shop_webhook.",
                400,
            )
        topic = str(body.get("topic") or "").lower()
        if not _valid_topic(topic):
            return wc_error(
                "woocommerce_rest_shop_webhook_invalid_topic",
                "Webhook topic is required and must be valid.",
                400,
            )
        url = str(body.get("delivery_url") or "")
        if urlsplit(url).scheme not in ("http", "https"):
            return wc_error(
                "woocommerce_rest_shop_webhook_invalid_delivery_url",
                "Webhook delivery URL must be a valid URL starting with http:// or https://.",
                400,
            )
        status = str(body.get("status") or "active")
        hook = {
            "id": next(self._ids),
            "name": str(body.get("name") or "Webhook created by the REST API"),
            "status": status
            if status in ("active", "paused", "disabled")
            else "disabled",
            "topic": topic,
            "resource": topic.partition(".")[0],
            "event": topic.partition(".")[2],
            "delivery_url": url,
            "secret": str(body.get("secret") or secrets.token_urlsafe(38)),
            "api_version": "wp_api_v3",
            "pending_delivery": True,
        }
        with self._lock:
            self.webhooks[hook["id"]] = hook
        # create_item sends the ping before it answers (WC_Webhook::deliver_ping).
        try:
            ping = requests.post(
                url,
                data=f"webhook_id={hook['id']}",
                headers={"User-Agent": "WooCommerce/9.9.0 Hookshot (WordPress/6.8)"},
                timeout=60,
            )
            self.pings.append((url, ping.status_code))
            if ping.status_code == 200:
                hook["pending_delivery"] = False
        except requests.RequestException:
            self.pings.append((url, None))
        rv = jsonify(self._public(hook, edit=True))
        rv.status_code = 201
        rv.headers["Location"] = f"/wp-json/wc/v3/webhooks/{hook['id']}"
        return rv

    def _webhook(self, webhook_id: int) -> Any:
        action = {"GET": "read", "DELETE": "delete"}.get(request.method, "edit")
        denied = self._authorize(action)
        if denied:
            return denied
        hook = self.webhooks.get(webhook_id)
        if request.method == "GET":
            if hook is None:
                return wc_error(
                    "woocommerce_rest_shop_webhook_invalid_id", "Invalid ID.", 404
                )
            return jsonify(self._public(hook))
        if request.method == "DELETE":
            if request.args.get("force") not in ("true", "1"):
                return wc_error(
                    "woocommerce_rest_trash_not_supported",
                    "Webhooks do not support trashing.",
                    501,
                )
            if hook is None:
                return wc_error(
                    "woocommerce_rest_shop_webhook_invalid_id", "Invalid ID.", 404
                )
            with self._lock:
                del self.webhooks[webhook_id]
            return jsonify(self._public(hook, edit=True))
        if hook is None:
            return wc_error(
                "woocommerce_rest_shop_webhook_invalid_id", "ID is invalid.", 400
            )
        body = request.get_json(silent=True) or {}
        if body.get("topic"):
            topic = str(body["topic"]).lower()
            if not _valid_topic(topic):
                return wc_error(
                    "woocommerce_rest_shop_webhook_invalid_topic",
                    "Webhook topic must be valid.",
                    400,
                )
            hook.update(
                topic=topic,
                resource=topic.partition(".")[0],
                event=topic.partition(".")[2],
            )
        if body.get("delivery_url"):
            hook["delivery_url"] = str(body["delivery_url"])
        if body.get("secret"):
            hook["secret"] = str(body["secret"])
        if body.get("status"):
            if body["status"] not in ("active", "paused", "disabled"):
                return wc_error(
                    "woocommerce_rest_shop_webhook_invalid_status",
                    "Webhook status must be valid.",
                    400,
                )
            hook["status"] = body["status"]
        if body.get("name"):
            hook["name"] = str(body["name"])
        return jsonify(self._public(hook, edit=True))

    # REST orders ------------------------------------------------------------------

    def _orders(self) -> Any:
        denied = self._authorize("read")
        if denied:
            return denied
        args = request.args
        try:
            per_page = int(args.get("per_page", "10"))
            page = int(args.get("page", "1"))
        except ValueError:
            return wc_error("rest_invalid_param", "Invalid parameter(s): per_page", 400)
        if not 1 <= per_page <= 100 or page < 1:
            return wc_error(
                "rest_invalid_param", "Invalid parameter(s): per_page, page", 400
            )
        gmt = args.get("dates_are_gmt", "false").lower() in ("1", "true")
        field_name = "date_modified_gmt" if gmt else "date_modified"
        bounds = {}
        for name in ("modified_after", "modified_before"):
            if name in args:
                try:
                    bounds[name] = _naive(args[name])
                except ValueError:
                    return wc_error(
                        "rest_invalid_param", f"Invalid parameter(s): {name}", 400
                    )
        status = args.get("status", "any")
        with self._lock:
            found = []
            for order in self.orders.values():
                modified = _naive(order.get(field_name) or order["date_modified_gmt"])
                if (
                    "modified_after" in bounds
                    and not modified > bounds["modified_after"]
                ):
                    continue
                if (
                    "modified_before" in bounds
                    and not modified < bounds["modified_before"]
                ):
                    continue
                if status != "any" and order.get("status") not in status.split(","):
                    continue
                if status == "any" and order.get("status") == "checkout-draft":
                    continue
                found.append(order)
            self.order_pages += 1
            if page == 1:
                self.order_sweeps += 1
        key = {
            "id": lambda o: o["id"],
            "date": lambda o: (o.get("date_created_gmt") or "", o["id"]),
            "modified": lambda o: (o.get("date_modified_gmt") or "", o["id"]),
        }.get(args.get("orderby", "date"), lambda o: o["id"])
        found.sort(key=key, reverse=args.get("order", "desc") == "desc")
        pages = -(-len(found) // per_page)
        rv = jsonify(found[(page - 1) * per_page : page * per_page])
        rv.headers["X-WP-Total"] = str(len(found))
        rv.headers["X-WP-TotalPages"] = str(pages)
        return rv

    @staticmethod
    def _public(hook: dict[str, Any], *, edit: bool = False) -> dict[str, Any]:
        rv = {
            k: hook[k]
            for k in (
                "id",
                "name",
                "status",
                "topic",
                "resource",
                "event",
                "delivery_url",
            )
        }
        rv["hooks"] = []
        rv["date_created"] = rv["date_created_gmt"] = "2026-01-01T00:00:00"
        if edit:
            rv["secret"] = hook["secret"]
        return rv


def _naive(value: str) -> datetime:
    """A WordPress date as the REST API compares them: to the second, no offset."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed.replace(microsecond=0)


def _valid_topic(topic: str) -> bool:
    if topic.startswith(("action.woocommerce_", "action.wc_")):
        return True
    resource, _, event = topic.partition(".")
    return resource in VALID_RESOURCES and event in VALID_EVENTS


def _add_query_arg(url: str, args: dict[str, str]) -> str:
    sep = "&" if urlsplit(url).query else "?"
    return f"{url}{sep}{urlencode(args)}"
