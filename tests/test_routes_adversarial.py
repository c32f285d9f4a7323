"""Every HTTP route under attack: no 500, nothing stored when refused, nothing reflected raw."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jwt
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select

from adapters.shopify.oauth import sign_query
from adapters.shopify.signature import sign_body
from connector.config import Settings
from connector.links import sign_admin_link
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Base, utcnow
from connector.web import create_app
from tests.conftest import fixture_bytes
from tests.fakes.woocommerce import woocommerce_signature

APP_URL = "https://connector.example"
API_KEY = "adv-api-key"
API_SECRET = "adv-api-secret-long-enough-for-hs256-keys"
META_DIALOG = "https://www.facebook.com"
SHOP = "adv-shop.myshopify.com"
WOO_STORE = "https://woo.example"
WOO_SECRET = "adv-woo-secret"
SCRIPT = "<script>alert(1)</script>"
#: a Shopify Admin API nobody listens on: no test may reach the network
DEAD_ADMIN = "http://127.0.0.1:9/{shop}"

GET_ROUTES = (
    "/healthz",
    "/metrics",
    "/admin",
    "/shopify/install",
    "/shopify/callback",
    "/shopify/app",
    "/shopify/status",
    "/woocommerce/connect",
    "/woocommerce/return",
    "/meta/connect",
    "/meta/callback",
)
POST_ROUTES = (
    "/webhooks/shopify",
    "/webhooks/woocommerce/{woo}",
    "/woocommerce/callback",
    "/meta/pixel",
    "/meta/disconnect",
)
EXPECTED_RULES = {
    "/": {"GET"},
    "/healthz": {"GET"},
    "/metrics": {"GET"},
    "/admin": {"GET"},
    "/shopify/install": {"GET"},
    "/shopify/callback": {"GET"},
    "/shopify/app": {"GET"},
    "/shopify/status": {"GET"},
    "/woocommerce/connect": {"GET"},
    "/woocommerce/callback": {"POST"},
    "/woocommerce/return": {"GET"},
    "/meta/connect": {"GET"},
    "/meta/callback": {"GET"},
    "/meta/pixel": {"POST"},
    "/meta/disconnect": {"POST"},
    "/webhooks/<platform>": {"POST"},
    "/webhooks/<platform>/<connection_id>": {"POST"},
    "/static/<path:filename>": {"GET"},
    # the dashboard (README "Dashboard")
    "/admin/connections/<connection_id>": {"GET"},
    "/admin/connections/<connection_id>/events": {"GET"},
    "/admin/connections/<connection_id>/events/<int:event_pk>": {"GET"},
    "/admin/connections/<connection_id>/replay": {"POST"},
    "/admin/connections/<connection_id>/quality": {"GET"},
    "/admin/connections/<connection_id>/settings": {"GET", "POST"},
    "/admin/connections/<connection_id>/pixel": {"GET"},
}
#: what each route reads from its query or form: the names an attacker fills first
PARAM_NAMES = (
    "shop",
    "store_url",
    "connection",
    "token",
    "state",
    "code",
    "error",
    "error_reason",
    "error_description",
    "hmac",
    "timestamp",
    "id_token",
    "user_id",
    "success",
    "pixel_id",
)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Every app configured, with no reachable platform: the attacks run against a full app."""
    return make_settings(
        app_url=APP_URL,
        shopify_api_key=API_KEY,
        shopify_api_secret=API_SECRET,
        shopify_admin_url_template=DEAD_ADMIN,
        meta_app_id="1234567890",
        meta_app_secret="adv-meta-secret",
        meta_graph_url="http://127.0.0.1:9",
        meta_dialog_url=META_DIALOG,
        http_timeout=1.0,
    )


@pytest.fixture
def seeded(runtime: Runtime) -> dict[str, str]:
    """One Shopify and one WooCommerce connection, so attacks can aim at real ids."""
    with runtime.sessions.begin() as s:
        shop = queries.upsert_connection(s, "shopify", SHOP)
        woo = queries.upsert_connection(
            s, "woocommerce", WOO_STORE, webhook_secret=WOO_SECRET
        )
        return {"shop": shop.id, "woo": woo.id}


def row_counts(runtime: Runtime) -> dict[str, int]:
    with runtime.sessions() as s:
        return {
            t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }


@pytest.fixture
def unchanged(runtime: Runtime, seeded: dict[str, str]) -> Iterator[None]:
    """The test's requests must leave every table as it found it."""
    before = row_counts(runtime)
    yield
    assert before == row_counts(runtime)


def _no_raw_script(rv: Any) -> None:
    if rv.mimetype == "text/html":
        body = rv.get_data(as_text=True).lower()
        assert "<script>alert" not in body
        # Only App Bridge's tags and the app's own static script, never one from a value.
        for tag in re.findall(r"<script [^>]*>", body):
            assert 'src="https://cdn.shopify.com/' in tag or 'src="/static/' in tag, tag


_SHOP_FRAMERS = re.compile(
    r"frame-ancestors https://[a-z0-9][a-z0-9-]*\.myshopify\.com https://admin\.shopify\.com;"
)


def _unframeable(rv: Any) -> None:
    """An HTML answer refuses framing, or allows exactly one shop's admin (the embedded page)."""
    if rv.mimetype != "text/html":
        return
    csp = rv.headers.get("Content-Security-Policy", "")
    if _SHOP_FRAMERS.fullmatch(csp):
        return
    assert ("frame-ancestors 'none'", "DENY") == (
        csp,
        rv.headers.get("X-Frame-Options"),
    )


def _sane(rv: Any) -> None:
    assert rv.status_code < 500, rv.get_data()[:300]
    _no_raw_script(rv)
    _unframeable(rv)


def _path(route: str, ids: dict[str, str]) -> str:
    return route.format(**ids)


# -- the route table ------------------------------------------------------------------


def test_the_url_map_is_exactly_the_documented_routes(app: Any) -> None:
    """The app answers on the documented routes and methods and nothing more."""
    rules: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        rules.setdefault(rule.rule, set()).update(
            (rule.methods or set()) - {"HEAD", "OPTIONS"}
        )
    assert EXPECTED_RULES == rules


_ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.mark.parametrize(
    ("route", "method"),
    [
        (route, method)
        for route in (*GET_ROUTES, *POST_ROUTES)
        for method in _ALL_METHODS
        if method not in (EXPECTED_RULES.get(route) or {"POST"})
    ],
)
def test_a_wrong_method_is_405_json(
    client: Any, seeded: dict[str, str], unchanged: None, route: str, method: str
) -> None:
    """A method a route does not take is a JSON 405 and stores nothing."""
    rv = client.open(_path(route, seeded), method=method, data=b"{}")
    assert 405 == rv.status_code
    assert "application/json" == rv.mimetype
    assert {"error", "detail"} <= set(rv.get_json())


@pytest.mark.parametrize("route", [*GET_ROUTES, *POST_ROUTES])
@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_never_fail(
    client: Any, seeded: dict[str, str], unchanged: None, route: str, method: str
) -> None:
    """HEAD and OPTIONS on every route answer without a 500 and store nothing."""
    rv = client.open(_path(route, seeded), method=method)
    assert rv.status_code < 500
    if method == "OPTIONS":
        assert 200 == rv.status_code
        assert rv.headers.get("Allow")
    else:
        assert b"" == rv.get_data()


def test_unknown_paths_and_platforms_are_404_without_echo(
    client: Any, unchanged: None
) -> None:
    """Unknown pages and webhook platforms are 404, and a script in the path is not echoed."""
    for path in (
        f"/{quote(SCRIPT)}",
        f"/shopify/{quote(SCRIPT)}",
        "/webhooks/%3Cscript%3E",
        "/webhooks/magento",
        "/webhooks/magento/123",
    ):
        for accept in ("text/html", "application/json", "*/*"):
            rv = client.post(path, data=b"{}", headers={"Accept": accept})
            assert 404 == rv.status_code or 405 == rv.status_code
            assert SCRIPT not in rv.get_data(as_text=True)


# -- absurd query strings -------------------------------------------------------------

_QUERIES = {
    "huge": "shop=" + "a" * 20000 + "&state=" + "b" * 20000,
    "many-keys": "&".join(f"k{i}=v{i}" for i in range(2000)),
    "repeated": "&".join(f"{name}=x&{name}=y" for name in PARAM_NAMES),
    "unicode": urlencode({name: "ünï¢ødé☃\U0001d518" for name in PARAM_NAMES}),
    "nul": "&".join(f"{name}=%00" for name in ("shop", "code", "hmac", "id_token")),
    "percent-garbage": "shop=%zz%&state=%&code=%%00%G1&token=%E2%82&connection=%FF%FE",
    "only-separators": "&&&===&;;;&=",
    "no-values": "&".join(PARAM_NAMES),
    "plus-and-spaces": "shop=+a+.myshopify.com+&state=+&code=%20",
    "script": urlencode({name: SCRIPT for name in PARAM_NAMES}),
    "error-script": urlencode(
        {"error": SCRIPT, "error_reason": SCRIPT, "error_description": SCRIPT}
    ),
    "json-ish": "shop[]=a&shop[x]=b&state={}&code=[]",
}


@pytest.mark.parametrize("route", GET_ROUTES)
@pytest.mark.parametrize("query", list(_QUERIES.values()), ids=list(_QUERIES))
def test_absurd_query_strings_never_fail_or_store(
    client: Any, unchanged: None, route: str, query: str
) -> None:
    """Huge, repeated, unicode, NUL and garbled query strings never 500 and store nothing."""
    for accept in ("text/html", "application/json"):
        rv = client.get(
            f"{route}?{query}",
            headers={"Accept": accept},
            environ_base={"REMOTE_ADDR": "203.0.113.9"},
        )
        _sane(rv)


_fuzz_text = st.text(
    # "No" holds digits like "²" that str.isdigit accepts and int() refuses.
    alphabet=st.characters(
        blacklist_categories=("Cs", "No"), blacklist_characters="\x00"
    ),
    max_size=80,
)


@hsettings(
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    route=st.sampled_from(GET_ROUTES),
    params=st.lists(
        st.tuples(st.sampled_from(PARAM_NAMES) | _fuzz_text, _fuzz_text), max_size=6
    ),
    html=st.booleans(),
)
def test_fuzzed_queries_never_fail(
    client: Any,
    runtime: Runtime,
    seeded: dict[str, str],
    route: str,
    params: list[tuple[str, str]],
    html: bool,
) -> None:
    """Arbitrary query parameters on any GET route never 500 nor reflect a script."""
    params = [*params, ("error_description", SCRIPT)]
    before = row_counts(runtime)
    rv = client.get(
        f"{route}?{urlencode(params)}",
        headers={"Accept": "text/html" if html else "application/json"},
    )
    _sane(rv)
    if rv.status_code >= 400:
        assert before == row_counts(runtime)


# -- bodies of every kind -------------------------------------------------------------

_BODIES: dict[str, tuple[bytes, str | None]] = {
    "empty": (b"", None),
    "empty-json": (b"", "application/json"),
    "form": (
        b"state=x&pixel_id=1&connection=a&token=b",
        "application/x-www-form-urlencoded",
    ),
    "form-garbage": (b"%zz=%&&==&\xff=\xfe", "application/x-www-form-urlencoded"),
    "multipart": (
        b'--XX\r\nContent-Disposition: form-data; name="state"\r\n\r\nx\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="f"; filename="a.json"\r\n'
        b"Content-Type: application/json\r\n\r\n{}\r\n--XX--\r\n",
        "multipart/form-data; boundary=XX",
    ),
    "multipart-broken": (b"--XX\r\nnonsense", "multipart/form-data; boundary=XX"),
    "multipart-no-boundary": (b"abc", "multipart/form-data"),
    "binary": (bytes(range(256)) * 4, "application/octet-stream"),
    "binary-as-json": (b"\xff\xfe\x00\x01{", "application/json"),
    "utf16-json": ('{"a": 1}'.encode("utf-16"), "application/json"),
    "json-object": (b'{"user_id": "x", "consumer_key": "ck_1"}', "application/json"),
    "json-array": (b"[1, 2, {}]", "application/json"),
    "json-string": (b'"just a string"', "application/json"),
    "json-number": (b"12345678901234567890", "application/json"),
    "json-huge-number": (b"1" * 5000, "application/json"),
    "json-null": (b"null", "application/json"),
    "json-nan": (b'{"user_id": NaN, "x": Infinity}', "application/json"),
    "json-nested": (b'{"a":' * 50 + b"1" + b"}" * 50, "application/json"),
    "json-duplicate-keys": (
        b'{"consumer_key": "ck_1", "consumer_key": "ck_2"}',
        "application/json",
    ),
    "json-truncated": (b'{"user_id": "abc', "application/json"),
    "xml": (
        b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>",
        "application/xml",
    ),
    "script-html": (SCRIPT.encode(), "text/html"),
    "woo-ping-shaped": (b"webhook_id=abc", "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize(
    ("body", "content_type"), list(_BODIES.values()), ids=list(_BODIES)
)
def test_unsigned_bodies_of_every_kind_are_refused_and_store_nothing(
    client: Any,
    seeded: dict[str, str],
    unchanged: None,
    route: str,
    body: bytes,
    content_type: str | None,
) -> None:
    """Any unsigned body on a POST route is a 4xx, never a 500, and stores nothing."""
    headers = {"Content-Type": content_type} if content_type else {}
    rv = client.post(_path(route, seeded), data=body, headers=headers)
    assert 400 <= rv.status_code < 500, rv.get_data()[:300]
    _no_raw_script(rv)


@pytest.mark.parametrize("route", POST_ROUTES)
def test_a_body_over_the_route_limit_is_413(
    client: Any, seeded: dict[str, str], unchanged: None, route: str
) -> None:
    """A body past the route's limit (1 MiB, webhooks 10 MiB) is refused with 413."""
    from connector.web import MAX_BODY_BYTES, WEBHOOK_MAX_BODY_BYTES

    limit = WEBHOOK_MAX_BODY_BYTES if route.startswith("/webhooks/") else MAX_BODY_BYTES
    with client.session_transaction() as sess:
        sess["meta_connection"] = seeded[
            "shop"
        ]  # so /meta/pixel gets as far as its form
    rv = client.post(
        _path(route, seeded),
        data=b"{" + b" " * (limit + 1) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert 413 == rv.status_code


@hsettings(
    max_examples=50,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    route=st.sampled_from(POST_ROUTES),
    body=st.binary(max_size=400),
    content_type=st.sampled_from(
        [
            "",
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=b",
            "text/plain; charset=utf-7",
            "application/json; charset=latin-1",
        ]
    ),
)
def test_fuzzed_unsigned_bodies_never_fail_or_store(
    client: Any,
    runtime: Runtime,
    seeded: dict[str, str],
    route: str,
    body: bytes,
    content_type: str,
) -> None:
    """Random bytes under any content type on any POST route: a 4xx, nothing stored."""
    before = row_counts(runtime)
    rv = client.post(
        _path(route, seeded), data=body, headers={"Content-Type": content_type}
    )
    if route.startswith("/webhooks/woocommerce") and body.strip().startswith(
        b"webhook_id="
    ):
        assert rv.status_code in {200, 401}
    else:
        assert 400 <= rv.status_code < 500, rv.get_data()[:300]
    assert before == row_counts(runtime)


# -- webhook signatures and headers ---------------------------------------------------

_ORDER = fixture_bytes("shopify/order.json")
_WOO_ORDER = fixture_bytes("woocommerce/order-processing.json")


def _shopify_headers(body: bytes, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "X-Shopify-Hmac-Sha256": sign_body(body, API_SECRET.encode()),
        **extra,
    }


def _woo_headers(body: bytes, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-WC-Webhook-Topic": "order.updated",
        "X-WC-Webhook-Delivery-ID": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "X-WC-Webhook-Signature": woocommerce_signature(body, WOO_SECRET),
        **extra,
    }


_good_mac = sign_body(_ORDER, API_SECRET.encode())
_SHOPIFY_FORGERIES = {
    "missing": {"X-Shopify-Hmac-Sha256": ""},
    "empty": {"X-Shopify-Hmac-Sha256": " "},
    "other-secret": {"X-Shopify-Hmac-Sha256": sign_body(_ORDER, b"not-the-secret")},
    "truncated": {"X-Shopify-Hmac-Sha256": _good_mac[:-4]},
    "hex-instead-of-base64": {
        "X-Shopify-Hmac-Sha256": base64.b64decode(_good_mac).hex()
    },
    "not-base64": {"X-Shopify-Hmac-Sha256": "!!!!not base64!!!!"},
    "very-long": {"X-Shopify-Hmac-Sha256": "A" * 8000},
    "non-ascii": {"X-Shopify-Hmac-Sha256": "ÿÿÿÿ" + _good_mac[4:]},
    "signed-other-body": {
        "X-Shopify-Hmac-Sha256": sign_body(b"{}", API_SECRET.encode())
    },
    "no-topic": {"X-Shopify-Topic": ""},
    "bad-topic": {"X-Shopify-Topic": "../../etc/passwd"},
    "no-shop": {"X-Shopify-Shop-Domain": ""},
    "foreign-shop": {"X-Shopify-Shop-Domain": "evil.example.com"},
    "unknown-shop": {"X-Shopify-Shop-Domain": "nobody.myshopify.com"},
    "script-shop": {"X-Shopify-Shop-Domain": SCRIPT},
    "localhost-shop": {"X-Shopify-Shop-Domain": "localhost"},
    "long-webhook-id": {"X-Shopify-Webhook-Id": "x" * 5000},
}


@pytest.mark.parametrize(
    "changes", list(_SHOPIFY_FORGERIES.values()), ids=list(_SHOPIFY_FORGERIES)
)
def test_a_forged_shopify_delivery_is_401_and_stores_nothing(
    client: Any, unchanged: None, changes: dict[str, str]
) -> None:
    """A wrong, missing or malformed signature or envelope is 401, and no row is written."""
    headers = {k: v for k, v in _shopify_headers(_ORDER).items() if k not in changes}
    headers.update({k: v for k, v in changes.items() if v})
    if "X-Shopify-Hmac-Sha256" in changes and not changes["X-Shopify-Hmac-Sha256"]:
        headers.pop("X-Shopify-Hmac-Sha256", None)
    rv = client.post("/webhooks/shopify", data=_ORDER, headers=headers)
    assert 401 == rv.status_code
    assert "application/json" == rv.mimetype


def test_a_shopify_delivery_addressed_to_a_woocommerce_id_is_refused(
    client: Any, seeded: dict[str, str], unchanged: None
) -> None:
    """A genuine Shopify body sent to a WooCommerce connection's URL is refused."""
    rv = client.post(
        f"/webhooks/shopify/{seeded['woo']}",
        data=_ORDER,
        headers=_shopify_headers(_ORDER),
    )
    assert 401 == rv.status_code


_WOO_FORGERIES = {
    "missing": {"X-WC-Webhook-Signature": None},
    "other-secret": {"X-WC-Webhook-Signature": woocommerce_signature(_WOO_ORDER, "x")},
    "app-secret": {
        "X-WC-Webhook-Signature": woocommerce_signature(_WOO_ORDER, API_SECRET)
    },
    "garbage": {"X-WC-Webhook-Signature": "%%%"},
    "non-ascii": {"X-WC-Webhook-Signature": "é" * 44},
    "very-long": {"X-WC-Webhook-Signature": "A" * 8000},
    "no-topic": {"X-WC-Webhook-Topic": None},
    "bad-topic": {"X-WC-Webhook-Topic": SCRIPT},
    "ping-with-signature": {"X-WC-Webhook-Signature": "abc"},
}


@pytest.mark.parametrize(
    "changes", list(_WOO_FORGERIES.values()), ids=list(_WOO_FORGERIES)
)
def test_a_forged_woocommerce_delivery_is_refused_and_stores_nothing(
    client: Any, seeded: dict[str, str], unchanged: None, changes: dict[str, str | None]
) -> None:
    """A wrong or missing signature is 401 (a malformed topic 400), and no row is written."""
    headers = _woo_headers(_WOO_ORDER)
    for name, value in changes.items():
        headers.pop(name, None)
        if value is not None:
            headers[name] = value
    rv = client.post(
        f"/webhooks/woocommerce/{seeded['woo']}", data=_WOO_ORDER, headers=headers
    )
    assert rv.status_code in {400, 401}
    assert "application/json" == rv.mimetype
    if "X-WC-Webhook-Signature" in changes:
        assert 401 == rv.status_code


@pytest.mark.parametrize(
    "connection",
    [
        "nope",
        "1",
        "a" * 400,
        "..%2F..%2Fadmin",
        "%E2%98%83",
        "'%20OR%201=1--",
        "{shop}",
    ],
)
def test_a_woocommerce_delivery_for_an_unknown_connection_is_401(
    client: Any, seeded: dict[str, str], unchanged: None, connection: str
) -> None:
    """Validly signed deliveries to ids that are no WooCommerce connection are 401."""
    path = f"/webhooks/woocommerce/{connection.format(**seeded)}"
    rv = client.post(path, data=_WOO_ORDER, headers=_woo_headers(_WOO_ORDER))
    assert rv.status_code in {401, 404}


def test_duplicated_empty_non_ascii_and_long_headers_never_fail(
    client: Any, seeded: dict[str, str], unchanged: None
) -> None:
    """Odd header shapes on both webhook routes are refused without a 500 or a stored row."""
    odd: list[list[tuple[str, str]]] = [
        [("X-Shopify-Hmac-Sha256", "a"), ("X-Shopify-Hmac-Sha256", "b")],
        [("X-Shopify-Topic", "orders/paid"), ("X-Shopify-Topic", "app/uninstalled")],
        [("X-Shopify-Shop-Domain", ""), ("X-Shopify-Shop-Domain", SHOP)],
        [("X-Shopify-Hmac-Sha256", "")],
        [("X-Shopify-Shop-Domain", "ädv-shöp.myshopify.com")],
        [("X-Shopify-Triggered-At", "9" * 400), ("X-Shopify-API-Version", "é" * 50)],
        [("X-Long", "x" * 16000)],
        [("X-WC-Webhook-Signature", "a"), ("X-WC-Webhook-Signature", "b")],
        [("X-WC-Webhook-Topic", "order.updated"), ("X-WC-Webhook-Topic", "")],
        [("X-WC-Webhook-Delivery-ID", "d" * 5000)],
        [("Content-Type", "application/json"), ("Content-Type", "text/plain")],
        [("Content-Length", "5")],
    ]
    for headers in odd:
        for path in ("/webhooks/shopify", f"/webhooks/woocommerce/{seeded['woo']}"):
            rv = client.post(path, data=b'{"id": 1}', headers=headers)
            assert 400 <= rv.status_code < 500, (headers, rv.get_data()[:200])


def test_duplicated_signature_headers_cannot_smuggle_a_forgery(
    client: Any, unchanged: None
) -> None:
    """With two HMAC headers, a forged last one is refused even beside a genuine first."""
    headers = list(_shopify_headers(_ORDER).items())
    headers.append(("X-Shopify-Hmac-Sha256", sign_body(_ORDER, b"wrong")))
    rv = client.post("/webhooks/shopify", data=_ORDER, headers=headers)
    assert 401 == rv.status_code


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"\xff\xfe\x00", b"[" * 100000, b'{"a": 1} trailing'],
    ids=["empty", "truncated", "text", "binary", "deep", "trailing"],
)
def test_signed_malformed_json_is_400_and_stores_nothing(
    client: Any, seeded: dict[str, str], unchanged: None, body: bytes
) -> None:
    """A correctly signed body that is no JSON is 400 on both platforms, with no row written."""
    rv = client.post("/webhooks/shopify", data=body, headers=_shopify_headers(body))
    assert 400 == rv.status_code
    rv = client.post(
        f"/webhooks/woocommerce/{seeded['woo']}", data=body, headers=_woo_headers(body)
    )
    assert 400 == rv.status_code


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs",), blacklist_characters="\x00"
        ),
        max_size=40,
    )
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _mutate(doc: Any, path: list[int], value: Any) -> Any:
    """``doc`` with the node that ``path`` picks replaced by ``value``."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[key] = _mutate(doc[key], path[1:], value)  # type: ignore[index]
    return copy


@hsettings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    platform=st.sampled_from(["shopify", "woocommerce"]),
    path=st.lists(st.integers(min_value=0, max_value=200), max_size=4),
    value=_json_value,
    whole=st.booleans(),
)
def test_signed_but_strange_payloads_never_fail(
    client: Any,
    runtime: Runtime,
    seeded: dict[str, str],
    platform: str,
    path: list[int],
    value: Any,
    whole: bool,
) -> None:
    """A genuinely signed order with any field replaced by any JSON is answered, never 500."""
    base = json.loads(_ORDER if platform == "shopify" else _WOO_ORDER)
    doc = value if whole else _mutate(base, path, value)
    body = json.dumps(doc).encode()
    if platform == "shopify":
        rv = client.post(
            "/webhooks/shopify",
            data=body,
            headers=_shopify_headers(
                body, **{"X-Shopify-Webhook-Id": f"fuzz-{hash(body)}"}
            ),
        )
    else:
        rv = client.post(
            f"/webhooks/woocommerce/{seeded['woo']}",
            data=body,
            headers=_woo_headers(body),
        )
    assert rv.status_code in {200, 400}, rv.get_data()[:300]


# -- signed bodies holding what no column keeps ------------------------------------------

_RAW_SURROGATE = b"\xed\xa0\x80"  # U+D800 encoded as if it were a character


def _woo_with(**fields: Any) -> bytes:
    return json.dumps({**json.loads(_WOO_ORDER), **fields}).encode()


def _shopify_with(**fields: Any) -> bytes:
    return json.dumps({**json.loads(_ORDER), **fields}).encode()


def _raw_surrogate_in(body: bytes, field: bytes) -> bytes:
    """``body`` with a raw surrogate spliced into the string value of ``"field": "``."""
    marker = b'"' + field + b'": "'
    assert marker in body
    return body.replace(marker, marker + _RAW_SURROGATE, 1)


def _number_as(body: bytes, field: str, literal: bytes) -> bytes:
    """``body`` with ``field`` (set to the placeholder 7) written as the JSON number ``literal``."""
    marker = f'"{field}": 7'.encode()
    assert marker in body
    return body.replace(marker, f'"{field}": '.encode() + literal, 1)


_UNSTORABLE_BODIES = {
    "woo-raw-surrogate-in-status": (
        "woocommerce",
        _raw_surrogate_in(_woo_with(), b"status"),
    ),
    "woo-raw-surrogate-in-billing-name": (
        "woocommerce",
        _raw_surrogate_in(_woo_with(), b"first_name"),
    ),
    "woo-escaped-surrogate": ("woocommerce", _woo_with(status="processing\ud800")),
    "woo-escaped-nul": ("woocommerce", _woo_with(customer_note="a\x00b")),
    "woo-escaped-nul-in-id": (
        "woocommerce",
        b'{"id": "\\u0000", "status": "processing"}',
    ),
    "woo-id-65-digits": ("woocommerce", _woo_with(id=int("9" * 65))),
    "woo-customer-id-65-digits": ("woocommerce", _woo_with(customer_id=int("9" * 65))),
    "woo-id-1e308": ("woocommerce", _number_as(_woo_with(id=7), "id", b"1e308")),
    "woo-customer-id-1e308": (
        "woocommerce",
        _number_as(_woo_with(customer_id=7), "customer_id", b"1e308"),
    ),
    "woo-negative-70-digits": ("woocommerce", _woo_with(id=-int("9" * 70))),
    "shopify-raw-surrogate-in-email": (
        "shopify",
        _raw_surrogate_in(_shopify_with(), b"email"),
    ),
}
#: Shopify's translation refuses an order id that is no int64 as a bad payload (400), before
#: anything reaches a column; these must stay 400, not turn into a 500 on PostgreSQL.
_REFUSED_BODIES = {
    "shopify-id-65-digits": ("shopify", _shopify_with(id=int("9" * 65))),
    "shopify-id-1e308": ("shopify", _number_as(_shopify_with(id=7), "id", b"1e308")),
}


def _receipts(runtime: Runtime) -> list[Any]:
    from connector.store.models import WebhookReceipt

    with runtime.sessions() as s:
        return list(s.scalars(select(WebhookReceipt)))


@pytest.mark.parametrize(
    ("platform", "body"),
    list(_UNSTORABLE_BODIES.values()),
    ids=list(_UNSTORABLE_BODIES),
)
def test_a_signed_body_the_database_cannot_keep_is_recorded_as_unusable(
    client: Any,
    runtime: Runtime,
    seeded: dict[str, str],
    platform: str,
    body: bytes,
) -> None:
    """Raw or escaped surrogates, NUL, ids of 65 digits or 1e308: 200, recorded with the reason.

    PostgreSQL refuses such values where SQLite keeps them; either way the delivery gets no
    5xx (WooCommerce counts those towards disabling the webhook and never retries), no
    event, and a receipt saying why.
    """
    before = row_counts(runtime)
    if platform == "shopify":
        rv = client.post("/webhooks/shopify", data=body, headers=_shopify_headers(body))
    else:
        rv = client.post(
            f"/webhooks/woocommerce/{seeded['woo']}",
            data=body,
            headers=_woo_headers(body),
        )
    assert 200 == rv.status_code, rv.get_data()[:300]
    assert {"status": "skipped", "new_events": 0} == rv.get_json()
    after = row_counts(runtime)
    assert before["events"] == after["events"]
    (receipt,) = _receipts(runtime)
    assert "skipped" == receipt.outcome
    assert receipt.detail


@pytest.mark.parametrize(
    ("platform", "body"), list(_REFUSED_BODIES.values()), ids=list(_REFUSED_BODIES)
)
def test_a_signed_shopify_order_without_a_usable_id_is_a_400(
    client: Any, unchanged: None, platform: str, body: bytes
) -> None:
    """An id no int64 holds is Shopify's bad payload: 400 and nothing stored, on both databases."""
    rv = client.post("/webhooks/shopify", data=body, headers=_shopify_headers(body))
    assert 400 == rv.status_code


#: values that once reached a column they do not fit, on PostgreSQL
_POISON = [
    10**64,
    10**65,
    -(10**65),
    2**63,
    1e308,
    -1e308,
    float("inf"),
    float("nan"),
    "\ud800",
    "tail \udfff",
    "a\x00b",
    "x" * 300,
    "9" * 65,
]
_odd_leaf = st.one_of(
    st.sampled_from(_POISON),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # NaN and infinities included: Python's JSON reader accepts them
    st.text(max_size=300),  # surrogates and NUL included
    st.text(alphabet=st.characters(codec="utf-8"), min_size=60, max_size=600),
)
_odd_value = st.recursive(
    _odd_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
#: the fields that reach a column: ids and references the adapters keep
_KEY_FIELDS = {
    "shopify": ["id", "checkout_token", "token", "email", "customer", "order_number"],
    "woocommerce": ["id", "customer_id", "status", "date_modified_gmt", "billing"],
}


@hsettings(
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    platform=st.sampled_from(["shopify", "woocommerce"]),
    data=st.data(),
    raw=st.booleans(),
)
def test_signed_bodies_with_odd_text_and_numbers_never_fail(
    client: Any,
    runtime: Runtime,
    seeded: dict[str, str],
    platform: str,
    data: st.DataObject,
    raw: bool,
) -> None:
    """Any id, reference or field set to huge numbers, NaN, surrogates, NUL or long text: no 5xx.

    ``raw`` writes the text as UTF-8 bytes with surrogates passed through (bytes ``ED A0 80``),
    which Python's JSON reader accepts; otherwise they are ``\\uD800`` escapes. Run on
    PostgreSQL (TEST_DATABASE_URL) this is the check that matters: it enforces lengths, text
    encoding and JSON numbers where SQLite does not.
    """
    doc = json.loads(_ORDER if platform == "shopify" else _WOO_ORDER)
    for name in data.draw(
        st.lists(st.sampled_from(_KEY_FIELDS[platform]), min_size=1, max_size=3)
    ):
        doc[name] = data.draw(st.one_of(_odd_leaf, _odd_value))
    if data.draw(st.booleans()):
        path = data.draw(st.lists(st.integers(min_value=0, max_value=200), max_size=4))
        doc = _mutate(doc, path, data.draw(_odd_value))
    if raw:
        body = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    else:
        body = json.dumps(doc).encode()
    if platform == "shopify":
        rv = client.post(
            "/webhooks/shopify",
            data=body,
            headers=_shopify_headers(
                body, **{"X-Shopify-Webhook-Id": f"odd-{hash(body)}"}
            ),
        )
    else:
        rv = client.post(
            f"/webhooks/woocommerce/{seeded['woo']}",
            data=body,
            headers=_woo_headers(body),
        )
    assert rv.status_code in {200, 400}, rv.get_data()[:300]


# -- OAuth states: forged, expired, replayed ------------------------------------------


def _shopify_callback_query(state: str, shop: str = SHOP, **extra: str) -> str:
    params = {
        "code": "abc",
        "shop": shop,
        "state": state,
        "timestamp": str(int(utcnow().timestamp())),
        **extra,
    }
    params["hmac"] = sign_query(list(params.items()), API_SECRET)
    return urlencode(params)


def _issue(
    runtime: Runtime, purpose: str, *, age: timedelta = timedelta(0), **kw: Any
) -> str:
    with runtime.sessions.begin() as s:
        return queries.issue_state(s, purpose, now=utcnow() - age, **kw)


def _spend(runtime: Runtime, nonce: str, purpose: str) -> None:
    with runtime.sessions.begin() as s:
        queries.consume_state(s, nonce, purpose)


@pytest.mark.parametrize(
    "kind", ["forged", "expired", "replayed", "other-shop", "empty"]
)
def test_shopify_callback_refuses_bad_states_without_storing(
    client: Any, runtime: Runtime, seeded: dict[str, str], kind: str
) -> None:
    """A signed callback whose state is forged, expired, spent or foreign is 400, no token stored."""
    nonce = {
        "forged": "forged-state",
        "empty": "",
        "expired": _issue(
            runtime, "shopify_install", store=SHOP, age=timedelta(hours=1)
        ),
        "replayed": _issue(runtime, "shopify_install", store=SHOP),
        "other-shop": _issue(runtime, "shopify_install", store="other.myshopify.com"),
    }[kind]
    if kind == "replayed":
        _spend(runtime, nonce, "shopify_install")
    before = row_counts(runtime)
    rv = client.get(f"/shopify/callback?{_shopify_callback_query(nonce)}")
    assert 400 == rv.status_code
    assert before == row_counts(runtime)
    with runtime.sessions() as s:
        assert queries.find_connection(s, "shopify", SHOP).platform_token is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "query",
    [
        "shop=" + SHOP,
        f"shop={SHOP}&hmac=00&timestamp=1&code=x&state=y",
        f"shop={SHOP}&hmac=&code=x&state=y",
        f"shop={SHOP}&hmac=a&hmac=b&code=x&state=y",
        f"shop={SHOP}&hmac=%E2%98%83&code=x&state=y",
        f"shop={SHOP}&hmac={'f' * 64}&timestamp=%C2%B2&code=x&state=y",
    ],
)
def test_shopify_callback_without_a_valid_hmac_is_401(
    client: Any, unchanged: None, query: str
) -> None:
    """A callback with a missing, repeated, non-ASCII or wrong hmac is 401 and stores nothing."""
    rv = client.get(f"/shopify/callback?{query}")
    assert 401 == rv.status_code


def test_a_stale_signed_shopify_callback_is_401(client: Any, unchanged: None) -> None:
    """A correctly signed callback from long ago is refused as too old."""
    query = _shopify_callback_query("s", timestamp="1000000000")
    assert 401 == client.get(f"/shopify/callback?{query}").status_code


@pytest.mark.parametrize("kind", ["forged", "expired", "replayed", "other-connection"])
def test_meta_callback_refuses_bad_states_without_storing(
    client: Any, runtime: Runtime, seeded: dict[str, str], kind: str
) -> None:
    """Meta's callback with a forged, expired, spent or foreign state is 400 and stores nothing."""
    cid = seeded["shop"]
    nonce = {
        "forged": "forged",
        "expired": _issue(
            runtime, "meta_connect", connection_id=cid, age=timedelta(hours=2)
        ),
        "replayed": _issue(runtime, "meta_connect", connection_id=cid),
        "other-connection": _issue(
            runtime, "meta_connect", connection_id=seeded["woo"]
        ),
    }[kind]
    if kind == "replayed":
        _spend(runtime, nonce, "meta_connect")
    with client.session_transaction() as sess:
        sess["meta_connection"] = cid
    before = row_counts(runtime)
    rv = client.get(f"/meta/callback?{urlencode({'code': 'c', 'state': nonce})}")
    assert 400 == rv.status_code
    assert before == row_counts(runtime)


def test_meta_callback_from_another_browser_is_refused(
    client: Any, runtime: Runtime, seeded: dict[str, str]
) -> None:
    """A genuine state used without the starting browser's session is refused and stays usable."""
    nonce = _issue(runtime, "meta_connect", connection_id=seeded["shop"])
    rv = client.get(f"/meta/callback?{urlencode({'code': 'c', 'state': nonce})}")
    assert 400 == rv.status_code
    with runtime.sessions.begin() as s:
        assert (
            queries.consume_state(s, nonce, "meta_connect").connection_id
            == seeded["shop"]
        )


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"state": "forged", "pixel_id": "1"},
        {"state": "", "pixel_id": ""},
        {"state": SCRIPT, "pixel_id": SCRIPT},
    ],
)
@pytest.mark.parametrize("with_session", [False, True])
def test_pixel_choice_with_a_bad_state_is_refused(
    client: Any,
    seeded: dict[str, str],
    unchanged: None,
    form: dict[str, str],
    with_session: bool,
) -> None:
    """POST /meta/pixel without the browser's session or a genuine state is 400."""
    if with_session:
        with client.session_transaction() as sess:
            sess["meta_connection"] = seeded["shop"]
    rv = client.post("/meta/pixel", data=form, headers={"Accept": "text/html"})
    assert 400 == rv.status_code
    _no_raw_script(rv)


@pytest.mark.parametrize(
    ("connection", "token"),
    [
        ("", ""),
        ("{shop}", ""),
        ("{shop}", "abc"),
        ("{shop}", "1.abc"),
        ("{shop}", "9999999999.deadbeef"),
        ("{shop}", "expired"),
        ("{woo}", "signed-for-shop"),
        ("{shop}", "-1.abc"),
        ("{shop}", " 9999999999.abc"),
        (SCRIPT, SCRIPT),
    ],
)
@pytest.mark.parametrize("route", ["/meta/connect", "/meta/disconnect"])
def test_meta_admin_routes_need_a_genuine_signed_link(
    client: Any,
    runtime: Runtime,
    seeded: dict[str, str],
    unchanged: None,
    route: str,
    connection: str,
    token: str,
) -> None:
    """Connect and disconnect refuse forged, expired or foreign admin links with 401."""
    now = utcnow()
    token = {
        "expired": sign_admin_link(
            runtime.settings.secret_key, seeded["shop"], now - timedelta(hours=2)
        ),
        "signed-for-shop": sign_admin_link(
            runtime.settings.secret_key, seeded["shop"], now
        ),
    }.get(token, token)
    query = urlencode({"connection": connection.format(**seeded), "token": token})
    rv = client.open(
        f"{route}?{query}",
        method="GET" if route == "/meta/connect" else "POST",
        headers={"Accept": "text/html"},
    )
    assert 401 == rv.status_code
    _no_raw_script(rv)


def test_a_genuine_meta_link_redirects_only_to_the_dialog(
    client: Any, runtime: Runtime, seeded: dict[str, str]
) -> None:
    """A signed admin link sends the browser to Facebook's dialog and nowhere else."""
    token = sign_admin_link(runtime.settings.secret_key, seeded["shop"], utcnow())
    query = urlencode(
        {"connection": seeded["shop"], "token": token, "next": "https://evil.example"}
    )
    rv = client.get(f"/meta/connect?{query}")
    assert 302 == rv.status_code
    location = urlsplit(rv.headers["Location"])
    assert "www.facebook.com" == location.netloc
    assert "https" == location.scheme
    assert "evil" not in rv.headers["Location"]


@pytest.mark.parametrize(
    "body",
    [
        {
            "user_id": "forged",
            "consumer_key": "ck_1",
            "consumer_secret": "cs_1",
            "key_permissions": "read_write",
        },
        {
            "user_id": "expired",
            "consumer_key": "ck_1",
            "consumer_secret": "cs_1",
            "key_permissions": "read_write",
        },
        {
            "user_id": "replayed",
            "consumer_key": "ck_1",
            "consumer_secret": "cs_1",
            "key_permissions": "read_write",
        },
        {
            "user_id": "fresh",
            "consumer_key": "ck_1",
            "consumer_secret": "cs_1",
            "key_permissions": "read",
        },
        {
            "user_id": "fresh",
            "consumer_key": "x",
            "consumer_secret": "cs_1",
            "key_permissions": "read_write",
        },
        {
            "user_id": "fresh",
            "consumer_key": "ck_" + "a" * 300,
            "consumer_secret": "cs_1",
            "key_permissions": "read_write",
        },
        {
            "user_id": True,
            "consumer_key": "ck_1",
            "consumer_secret": "cs_1",
            "key_permissions": "read_write",
        },
        {
            "user_id": ["fresh"],
            "consumer_key": "ck_1",
            "consumer_secret": "cs_1",
            "key_permissions": "read_write",
        },
        {
            "user_id": 12345,
            "consumer_key": "ck_1",
            "consumer_secret": "cs_1",
            "key_permissions": "read_write",
        },
        {
            "user_id": "fresh",
            "consumer_key": ["ck_1"],
            "consumer_secret": {"a": 1},
            "key_permissions": "read_write",
        },
    ],
)
def test_woocommerce_callback_refuses_bad_states_and_keys(
    client: Any, runtime: Runtime, seeded: dict[str, str], body: dict[str, Any]
) -> None:
    """Keys posted with a forged, expired or spent state, or malformed keys, are 400 and stored nowhere."""
    nonces = {
        "fresh": _issue(runtime, "woocommerce_connect", store="https://new.example"),
        "expired": _issue(
            runtime,
            "woocommerce_connect",
            store="https://new.example",
            age=timedelta(hours=3),
        ),
        "replayed": _issue(runtime, "woocommerce_connect", store="https://new.example"),
    }
    _spend(runtime, nonces["replayed"], "woocommerce_connect")
    if isinstance(body["user_id"], str):
        body = {**body, "user_id": nonces.get(body["user_id"], body["user_id"])}
    before = row_counts(runtime)
    rv = client.post("/woocommerce/callback", json=body)
    assert 400 == rv.status_code
    assert before == row_counts(runtime)
    with runtime.sessions() as s:
        assert queries.find_connection(s, "woocommerce", "https://new.example") is None


@pytest.mark.parametrize("kind", ["none", "other-state", "expired", "not-a-dict"])
def test_woocommerce_return_page_needs_the_starting_browser(
    client: Any, unchanged: None, kind: str
) -> None:
    """The return page shows nothing of a connection to a browser that did not start it."""
    started: Any = {
        "none": None,
        "other-state": {"state": "abc", "store": WOO_STORE, "at": utcnow().isoformat()},
        "expired": {
            "state": "abc",
            "store": WOO_STORE,
            "at": (utcnow() - timedelta(hours=2)).isoformat(),
        },
        "not-a-dict": ["abc"],
    }[kind]
    if started is not None:
        with client.session_transaction() as sess:
            sess["woocommerce_connect"] = started
    rv = client.get(
        "/woocommerce/return?user_id=abc&success=1"
        if kind == "expired"
        else "/woocommerce/return?user_id=zzz&success=1"
    )
    assert 400 == rv.status_code
    assert "(connection " not in rv.get_data(as_text=True)
    assert "/meta/connect" not in rv.get_data(as_text=True)


def test_woocommerce_return_page_escapes_the_store_address(client: Any) -> None:
    """A store address carrying markup is shown escaped on the return page."""
    with client.session_transaction() as sess:
        sess["woocommerce_connect"] = {
            "state": "abc",
            "store": f"https://shop.example/{SCRIPT}",
            "at": utcnow().isoformat(),
        }
    for success in ("0", "1"):
        rv = client.get(f"/woocommerce/return?user_id=abc&success={success}")
        assert 200 == rv.status_code
        _no_raw_script(rv)
        assert "&lt;script&gt;" in rv.get_data(as_text=True)


# -- XSS ------------------------------------------------------------------------------

_XSS = [
    SCRIPT,
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "</title><script>alert(1)</script>",
    "%3Cscript%3Ealert(1)%3C/script%3E",
]


@pytest.mark.parametrize("payload", _XSS)
@pytest.mark.parametrize("route", GET_ROUTES)
def test_no_route_echoes_markup_from_any_parameter(
    client: Any, seeded: dict[str, str], unchanged: None, route: str, payload: str
) -> None:
    """Markup in every parameter a page might echo comes back escaped, if at all."""
    query = urlencode({name: payload for name in PARAM_NAMES})
    rv = client.get(f"{route}?{query}", headers={"Accept": "text/html"})
    _sane(rv)
    if rv.mimetype == "text/html":
        body = rv.get_data(as_text=True)
        assert "<img src=x" not in body
        assert "<script>alert" not in body


def test_meta_denied_page_escapes_metas_error_text(
    client: Any, unchanged: None
) -> None:
    """The error Facebook passes back is shown as text, never as markup."""
    for reason in ("user_denied", "other", SCRIPT):
        query = urlencode(
            {"error": SCRIPT, "error_reason": reason, "error_description": SCRIPT}
        )
        rv = client.get(f"/meta/callback?{query}")
        assert rv.status_code in {200, 400}
        assert "text/html" == rv.mimetype
        _no_raw_script(rv)


def test_the_admin_page_escapes_stored_store_names(
    client: Any, runtime: Runtime, make_settings: Callable[..., Settings]
) -> None:
    """A connection whose store name carries markup is listed escaped on /admin."""
    with runtime.sessions.begin() as s:
        queries.upsert_connection(s, "woocommerce", f"https://x.example/{SCRIPT}")
    # the test client is 127.0.0.1, no password is set, APP_URL is local: development
    local = dataclasses.replace(runtime.settings, app_url="http://localhost:8000")
    app = create_app(runtime=dataclasses.replace(runtime, settings=local))
    rv = app.test_client().get("/admin")
    assert 200 == rv.status_code
    _no_raw_script(rv)
    assert "&lt;script&gt;" in rv.get_data(as_text=True)


# -- open redirects and SSRF ----------------------------------------------------------

_BAD_SHOPS = [
    "evil.example",
    "evil.example/.myshopify.com",
    f"{SHOP}.evil.example",
    f"{SHOP}@evil.example",
    f"evil.example@{SHOP}",
    f"{SHOP}:8080",
    f"{SHOP}/../evil",
    f"//evil.example/{SHOP}",
    f"https://{SHOP}",
    f"{SHOP}%0d%0aLocation:%20https://evil.example",
    f"{SHOP}\\@evil.example",
    "127.0.0.1",
    "localhost",
    "169.254.169.254",
    "[::1]",
    "xn--bcher-kva.myshopify.com.evil",
    "bücher.myshopify.com",
    "-bad.myshopify.com",
    ".myshopify.com",
    SCRIPT,
    "",
]


@pytest.mark.parametrize("shop", _BAD_SHOPS)
@pytest.mark.parametrize("route", ["/shopify/install", "/shopify/app"])
def test_a_shop_that_is_not_a_myshopify_domain_is_400(
    client: Any, unchanged: None, route: str, shop: str
) -> None:
    """Install and app links refuse any shop but NAME.myshopify.com, and redirect nowhere."""
    rv = client.get(
        f"{route}?shop={quote(shop, safe='')}", headers={"Accept": "text/html"}
    )
    assert 400 == rv.status_code
    assert "Location" not in rv.headers
    _no_raw_script(rv)


@pytest.mark.parametrize(
    "shop", [SHOP, "  ADV-Shop.MyShopify.com ", "a-1.myshopify.com"]
)
def test_install_redirects_only_to_the_shop_itself(
    client: Any, runtime: Runtime, shop: str
) -> None:
    """A valid install link redirects to the named shop's consent page, and back only to APP_URL."""
    rv = client.get(
        f"/shopify/install?{urlencode({'shop': shop, 'redirect_uri': 'https://evil.example'})}"
    )
    assert 302 == rv.status_code
    location = urlsplit(rv.headers["Location"])
    expected = shop.strip().lower()
    assert f"http://127.0.0.1:9/{expected}/admin/oauth/authorize" == (
        f"{location.scheme}://{location.netloc}{location.path}"
    )
    assert (
        f"redirect_uri={quote(APP_URL + '/shopify/callback', safe='')}"
        in location.query
    )
    assert "evil" not in rv.headers["Location"]


def test_the_app_page_redirects_only_to_the_local_install(
    client: Any, unchanged: None
) -> None:
    """An unproven app-page visit is sent to this app's own install route."""
    rv = client.get(f"/shopify/app?shop={SHOP}&next=https://evil.example")
    assert 302 == rv.status_code
    location = urlsplit(rv.headers["Location"])
    assert location.netloc in {"", "localhost"}
    assert "/shopify/install" == location.path


_SSRF_URLS = [
    "http://shop.example",
    "https://127.0.0.1",
    "https://127.1",
    "https://2130706433",
    "https://0x7f000001",
    "https://0177.0.0.1",
    "https://10.0.0.5",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]",
    "https://[::ffff:127.0.0.1]",
    "https://[fd00::1]",
    "https://localhost",
    "https://shop.localhost",
    "https://metadata.internal",
    "https://printer.local",
    "https://router.localhost.",
    "https://user:pass@shop.example",
    "https://shop.example@evil.example",
    "https://evil.example\\@shop.example",
    "https://shop.example:8443",
    "https://shop.example:0",
    "https://shop.example:99999",
    "https://shop.example:abc",
    "https://bücher.example",
    "https://shop.example?x=1",
    "https://shop.example#frag",
    "https://[::1",
    "file:///etc/passwd",
    "gopher://shop.example",
    "javascript:alert(1)",
    "//shop.example",
    "shop.example",
    "https://",
    "https://-bad-.example",
    "https://singlelabel",
    SCRIPT,
]


@pytest.mark.parametrize("url", _SSRF_URLS)
def test_woocommerce_connect_refuses_non_public_store_urls(
    client: Any, unchanged: None, url: str
) -> None:
    """IP literals, local names, credentials, odd ports and schemes are 400 with no state issued."""
    rv = client.get(
        f"/woocommerce/connect?{urlencode({'store_url': url})}",
        headers={"Accept": "text/html"},
    )
    assert 400 == rv.status_code, rv.headers.get("Location")
    assert "Location" not in rv.headers
    _no_raw_script(rv)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://Shop.Example", "https://shop.example"),
        ("  https://shop.example/store/  ", "https://shop.example/store"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
        ("https://shop.example:443", "https://shop.example"),
        (f"https://shop.example/{SCRIPT}", "https://shop.example/"),
    ],
)
def test_woocommerce_connect_redirects_only_to_the_store_itself(
    client: Any, runtime: Runtime, url: str, base: str
) -> None:
    """The connect redirect goes to the named store's key page, with callbacks on APP_URL."""
    rv = client.get(
        f"/woocommerce/connect?{urlencode({'store_url': url, 'return_url': 'https://evil.example'})}"
    )
    assert 302 == rv.status_code
    location = rv.headers["Location"]
    parts = urlsplit(location)
    assert (
        f"{parts.scheme}://{parts.netloc}"
        == base.rstrip("/").split("/", 3)[0] + "//" + base.split("/")[2]
    )
    assert parts.path.endswith("/wc-auth/v1/authorize")
    assert "evil" not in location
    assert quote(f"{APP_URL}/woocommerce/callback", safe="") in parts.query
    _no_raw_script(rv)


# -- admin, status, health ------------------------------------------------------------


def test_admin_without_a_password_is_hidden_from_remote_addresses(
    client: Any, unchanged: None
) -> None:
    """Without ADMIN_PASSWORD the page is 404 to anyone not on localhost, X-Forwarded-For or not."""
    for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"X-Real-IP": "::1"}):
        rv = client.get(
            "/admin", headers=headers, environ_base={"REMOTE_ADDR": "203.0.113.9"}
        )
        assert 404 == rv.status_code


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Basic",
        "Basic !!!",
        "Basic " + base64.b64encode(b"admin:wrong").decode(),
        "Basic " + base64.b64encode(b"admin").decode(),
        "Basic " + base64.b64encode("admin:pässwörd".encode()).decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(),
        "Bearer s3cret",
        "Digest username=admin",
        "Basic " + "A" * 10000,
    ],
)
def test_admin_with_a_password_refuses_anything_but_it(
    make_settings: Callable[..., Settings],
    runtime: Runtime,
    authorization: str | None,
) -> None:
    """With ADMIN_PASSWORD set, a missing, malformed or wrong Basic header is 401."""
    rt = Runtime.from_settings(make_settings(admin_password="s3cret"))
    try:
        client = create_app(runtime=rt).test_client()
        headers = {"Authorization": authorization} if authorization is not None else {}
        rv = client.get("/admin", headers=headers)
        assert 401 == rv.status_code
        assert rv.headers["WWW-Authenticate"].startswith("Basic")
        good = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
        assert 200 == client.get("/admin", headers={"Authorization": good}).status_code
    finally:
        rt.close()


def _session_token(secret: str, **claims: Any) -> str:
    now = int(utcnow().timestamp())
    body = {
        "iss": f"https://{SHOP}/admin",
        "dest": f"https://{SHOP}",
        "aud": API_KEY,
        "exp": now + 60,
        "nbf": now - 5,
        "sub": "1",
        **claims,
    }
    return jwt.encode(body, secret, algorithm="HS256")


def _alg_none() -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'dest': f'https://{SHOP}', 'iss': f'https://{SHOP}/admin', 'aud': API_KEY, 'exp': 9999999999, 'nbf': 0})}."


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x",
        "a.b.c",
        "é.é.é",
        "A" * 20000,
        "alg-none",
        "wrong-secret",
        "wrong-audience",
        "expired",
        "foreign-dest",
        "mismatched-iss",
        "http-dest",
        "dest-with-port",
        "dest-with-userinfo",
    ],
)
@pytest.mark.parametrize("route", ["/shopify/status", "/shopify/app"])
def test_shopify_session_tokens_that_are_not_genuine_are_401(
    client: Any, seeded: dict[str, str], unchanged: None, route: str, token: str
) -> None:
    """Forged, expired, foreign or malformed session tokens are 401 on the app and status routes."""
    token = {
        "alg-none": _alg_none(),
        "wrong-secret": _session_token(
            "not-the-secret-but-just-as-long-as-the-real-one"
        ),
        "wrong-audience": _session_token(API_SECRET, aud="someone-else"),
        "expired": _session_token(API_SECRET, exp=1000, nbf=0),
        "foreign-dest": _session_token(
            API_SECRET, dest="https://evil.example", iss="https://evil.example/admin"
        ),
        "mismatched-iss": _session_token(
            API_SECRET, iss="https://other.myshopify.com/admin"
        ),
        "http-dest": _session_token(
            API_SECRET, dest=f"http://{SHOP}", iss=f"http://{SHOP}/admin"
        ),
        "dest-with-port": _session_token(
            API_SECRET, dest=f"https://{SHOP}:8443", iss=f"https://{SHOP}:8443/admin"
        ),
        "dest-with-userinfo": _session_token(
            API_SECRET, dest=f"https://u@{SHOP}", iss=f"https://u@{SHOP}/admin"
        ),
    }.get(token, token)
    if route == "/shopify/status":
        for header in (f"Bearer {token}", f"bearer  {token}", token, f"Basic {token}"):
            rv = client.get(route, headers={"Authorization": header})
            assert 401 == rv.status_code
    else:
        rv = client.get(
            f"{route}?{urlencode({'id_token': token})}", headers={"Accept": "text/html"}
        )
        assert rv.status_code in {400, 401}


def test_status_for_a_shop_that_never_installed_is_404(
    client: Any, unchanged: None
) -> None:
    """A genuine session token of a shop without a connection is 404, not a crash."""
    token = _session_token(
        API_SECRET,
        dest="https://newcomer.myshopify.com",
        iss="https://newcomer.myshopify.com/admin",
    )
    rv = client.get("/shopify/status", headers={"Authorization": f"Bearer {token}"})
    assert 404 == rv.status_code


def test_health_and_metrics_ignore_junk_and_reveal_no_secret(
    client: Any, seeded: dict[str, str], unchanged: None
) -> None:
    """Health and metrics answer junk requests normally and never show a secret."""
    for route in ("/healthz", "/metrics"):
        rv = client.get(
            f"{route}?{_QUERIES['huge']}",
            headers={"Accept": "text/html", "X-Forwarded-For": "1.2.3.4" * 100},
        )
        assert 200 == rv.status_code
        text = rv.get_data(as_text=True)
        for secret in (WOO_SECRET, API_SECRET, "adv-meta-secret", "test-secret-key"):
            assert secret not in text
