"""Requests from the internet that once reached a 500: each now gets a clear 4xx."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from connector.config import Settings
from connector.redact import SECRET_PARAMS, redact_headers, redact_query
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Base
from connector.web import create_app


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Every app configured, so each route runs its real checks."""
    return make_settings(
        shopify_api_key="k",
        shopify_api_secret="s" * 32,
        shopify_admin_url_template="http://127.0.0.1:9/{shop}",
        meta_app_id="1",
        meta_app_secret="m",
    )


def row_count(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return sum(
            len(conn.execute(table.select()).all())
            for table in Base.metadata.sorted_tables
        )


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("%C2%B2.abc", id="superscript-digit"),
        pytest.param("9" * 5000 + ".abc", id="huge-number"),
    ],
)
@pytest.mark.parametrize("method", ["GET /meta/connect", "POST /meta/disconnect"])
def test_an_odd_admin_link_token_is_a_401(client: Any, method: str, token: str) -> None:
    """A token whose expiry is not a plain timestamp is simply not valid."""
    verb, path = method.split()
    rv = client.open(f"{path}?connection=abc&token={token}", method=verb)
    assert 401 == rv.status_code


def test_a_deeply_nested_key_callback_is_a_400(client: Any, runtime: Runtime) -> None:
    """WooCommerce never sends 200,000 nested brackets; nothing is stored."""
    rv = client.post(
        "/woocommerce/callback", data=b"[" * 200_000, content_type="application/json"
    )
    assert 400 == rv.status_code
    assert 0 == row_count(runtime)


def test_a_nul_in_the_connection_id_is_an_unknown_connection(client: Any) -> None:
    """PostgreSQL refuses NUL in text: such an id is refused before any query."""
    rv = client.post(
        "/webhooks/woocommerce/%00abc",
        data=b"{}",
        headers={"X-WC-Webhook-Signature": "x", "X-WC-Webhook-Topic": "order.updated"},
    )
    assert 401 == rv.status_code


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://shop.example/%00x", id="encoded-nul"),
        pytest.param("https://shop.example/" + "a" * 300, id="too-long"),
    ],
)
def test_a_store_url_the_database_cannot_keep_is_a_400(
    client: Any, runtime: Runtime, url: str
) -> None:
    """Control characters and over-long URLs are refused before a state is stored."""
    from urllib.parse import urlencode

    rv = client.get(f"/woocommerce/connect?{urlencode({'store_url': url})}")
    assert 400 == rv.status_code
    assert 0 == row_count(runtime)


def test_a_shop_name_longer_than_a_dns_label_is_a_400(
    client: Any, runtime: Runtime
) -> None:
    """A DNS label has at most 63 characters; a longer 'shop' is not one."""
    rv = client.get("/shopify/install?shop=" + "a" * 300 + ".myshopify.com")
    assert 400 == rv.status_code
    assert 0 == row_count(runtime)


@pytest.fixture
def unconfigured_client(make_settings: Callable[..., Settings]) -> Iterator[Any]:
    """An app without Shopify credentials (a WooCommerce-only deployment)."""
    rt = Runtime.from_settings(make_settings())
    try:
        yield create_app(runtime=rt).test_client()
    finally:
        rt.close()


@pytest.mark.parametrize(
    "path",
    [
        "/shopify/install?shop=a.myshopify.com",
        "/shopify/app?id_token=x",
        "/shopify/callback?hmac=x&shop=a.myshopify.com",
    ],
)
def test_an_unconfigured_app_route_is_a_404(
    unconfigured_client: Any, path: str
) -> None:
    """Without the Shopify app's credentials its routes are not there, not broken."""
    rv = unconfigured_client.get(path)
    assert 404 == rv.status_code
    assert "SHOPIFY_API_KEY" in rv.get_json()["detail"]


def test_a_405_names_the_allowed_methods(client: Any) -> None:
    """RFC 9110 requires Allow on a 405."""
    rv = client.put("/healthz")
    assert 405 == rv.status_code
    assert "GET" in rv.headers["Allow"]


# -- framing: every page refuses to be framed, except the Shopify page in the shop's admin ---

FRAME_NOBODY = "frame-ancestors 'none'"
HTML = {"Accept": "text/html"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/admin", 200, id="admin-page"),
        pytest.param("GET", "/meta/connect?connection=abc&token=1.x", 401, id="401"),
        pytest.param("GET", "/woocommerce/return?user_id=x&success=1", 400, id="400"),
        pytest.param("GET", "/no/such/page", 404, id="404"),
        pytest.param("PUT", "/admin", 405, id="405"),
        pytest.param("POST", "/meta/pixel", 413, id="413"),
    ],
)
def test_every_html_page_refuses_framing(
    client: Any, runtime: Runtime, method: str, path: str, status: int
) -> None:
    """Pages and error pages carry frame-ancestors 'none' and X-Frame-Options: DENY."""
    if path == "/admin":  # open without a password in local development only
        local = replace(runtime.settings, app_url="http://localhost:8000")
        client = create_app(runtime=replace(runtime, settings=local)).test_client()
    headers = dict(HTML)
    data = b"x" * (1024 * 1024 + 1) if status == 413 else None
    rv = client.open(path, method=method, headers=headers, data=data)
    assert (status, "text/html") == (rv.status_code, rv.mimetype)
    assert FRAME_NOBODY == rv.headers["Content-Security-Policy"]
    assert "DENY" == rv.headers["X-Frame-Options"]


def test_a_500_page_refuses_framing_too(
    make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    """An unexpected failure (here: a database without tables) still answers unframeable."""
    rt = Runtime.from_settings(
        make_settings(
            database_url=f"sqlite:///{tmp_path / 'empty.db'}",
            app_url="http://localhost:8000",
        )
    )
    try:
        rv = create_app(runtime=rt).test_client().get("/admin", headers=HTML)
    finally:
        rt.close()
    assert (500, "text/html") == (rv.status_code, rv.mimetype)
    assert FRAME_NOBODY == rv.headers["Content-Security-Policy"]
    assert "DENY" == rv.headers["X-Frame-Options"]


def test_the_shopify_page_may_be_framed_only_by_the_shops_admin(
    client: Any, runtime: Runtime
) -> None:
    """Shopify's rule: frame-ancestors is the shop's own domain and admin.shopify.com, exactly.

    https://shopify.dev/docs/apps/build/security/set-up-iframe-protection
    """
    shop = "frame-shop.myshopify.com"
    with runtime.sessions.begin() as s:
        queries.upsert_connection(s, "shopify", shop)
    with client.session_transaction() as sess:
        sess["shopify_shop"] = shop  # the browser that finished the install
    rv = client.get(f"/shopify/app?shop={shop}", headers=HTML)
    assert (200, "text/html") == (rv.status_code, rv.mimetype)
    directives = [d.strip() for d in rv.headers["Content-Security-Policy"].split(";")]
    assert [f"frame-ancestors https://{shop} https://admin.shopify.com"] == [
        d for d in directives if d.startswith("frame-ancestors")
    ]
    assert "X-Frame-Options" not in rv.headers  # it would forbid what the policy allows


# -- session cookies ----------------------------------------------------------------------


def test_the_session_cookie_is_samesite_lax_secure_and_http_only(
    client: Any, runtime: Runtime
) -> None:
    """Starting the Meta sign-in sets the session; it never travels on cross-site subrequests."""
    from connector.links import sign_admin_link
    from connector.store.models import utcnow

    with runtime.sessions.begin() as s:
        cid = queries.upsert_connection(s, "shopify", "cookie-shop.myshopify.com").id
    token = sign_admin_link(runtime.settings.secret_key, cid, utcnow())
    rv = client.get(f"/meta/connect?connection={cid}&token={token}")
    assert 302 == rv.status_code
    cookie = rv.headers["Set-Cookie"]
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")}
    assert "SameSite=Lax" == attrs["samesite"]
    assert {"secure", "httponly"} <= attrs.keys()


# -- /admin login throttle ----------------------------------------------------------------


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def admin_client(
    make_settings: Callable[..., Settings], clock: Clock
) -> Iterator[Callable[..., Any]]:
    """Clients of one app with ADMIN_PASSWORD set and the login throttle on ``clock``."""
    from connector.web.login_throttle import LoginThrottle

    made: list[Runtime] = []

    def factory(**overrides: Any) -> Any:
        rt = Runtime.from_settings(
            make_settings(admin_password="correct horse", **overrides)
        )
        made.append(rt)
        throttle = LoginThrottle(per_client=5, overall=50, window=900, clock=clock)
        return create_app(runtime=rt, login_throttle=throttle)

    yield factory
    for rt in made:
        rt.close()


def _login(client: Any, password: str, ip: str = "203.0.113.7", **headers: str) -> Any:
    from werkzeug.datastructures import Authorization

    return client.get(
        "/admin",
        auth=Authorization("basic", {"username": "admin", "password": password}),
        environ_base={"REMOTE_ADDR": ip},
        headers=headers,
    )


def test_failed_logins_from_one_address_are_throttled_then_released(
    admin_client: Callable[..., Any], clock: Clock
) -> None:
    """After 5 wrong passwords in 15 minutes, even the right one gets 429 until the window passes."""
    client = admin_client().test_client()
    for _ in range(5):
        clock.now += 10
        assert 401 == _login(client, "guess").status_code
    clock.now += 100
    rv = _login(client, "correct horse")
    assert 429 == rv.status_code
    # the first failure (at +10 s) leaves the 900 s window at +910 s: 760 s from now (+150 s)
    assert "760" == rv.headers["Retry-After"]
    assert 200 == _login(client, "correct horse", ip="198.51.100.1").status_code
    clock.now += 760
    assert 200 == _login(client, "correct horse").status_code


def test_failed_logins_spread_over_many_addresses_are_throttled_overall(
    admin_client: Callable[..., Any], clock: Clock
) -> None:
    """50 failures from 50 addresses stop every login, wherever it comes from."""
    client = admin_client().test_client()
    for i in range(50):
        assert 401 == _login(client, "guess", ip=f"192.0.2.{i}").status_code
    rv = _login(client, "correct horse", ip="198.51.100.2")
    assert 429 == rv.status_code
    assert 900 == int(rv.headers["Retry-After"])
    clock.now += 900
    assert 200 == _login(client, "correct horse", ip="198.51.100.2").status_code


def test_a_browsers_first_request_without_credentials_is_no_failure(
    admin_client: Callable[..., Any],
) -> None:
    """The 401 challenge a browser gets before asking for the password costs nothing."""
    client = admin_client().test_client()
    for _ in range(20):
        rv = client.get("/admin", environ_base={"REMOTE_ADDR": "203.0.113.9"})
        assert 401 == rv.status_code
    assert 200 == _login(client, "correct horse", ip="203.0.113.9").status_code


@pytest.mark.parametrize(
    ("trusted_proxies", "throttled"),
    [
        pytest.param(0, True, id="no-proxy: forged X-Forwarded-For changes nothing"),
        pytest.param(1, False, id="one-proxy: the router's last hop is the client"),
    ],
)
def test_the_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    admin_client: Callable[..., Any], trusted_proxies: int, throttled: bool
) -> None:
    """CONNECTOR_TRUSTED_PROXIES=1 (Heroku's router) believes one X-Forwarded-For hop, 0 none."""
    client = admin_client(trusted_proxies=trusted_proxies).test_client()
    for i in range(5):
        rv = _login(
            client, "guess", ip="10.0.0.1", **{"X-Forwarded-For": f"192.0.2.{i}"}
        )
        assert 401 == rv.status_code
    rv = _login(
        client, "correct horse", ip="10.0.0.1", **{"X-Forwarded-For": "192.0.2.99"}
    )
    assert (429 if throttled else 200) == rv.status_code


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        pytest.param("production", None, 1, id="production-behind-heroku-router"),
        pytest.param("production", "0", 0, id="production-exposed-directly"),
        pytest.param("production", "2", 2, id="production-behind-a-cdn-too"),
        pytest.param("development", None, 0, id="development-trusts-nobody"),
    ],
)
def test_trusted_proxy_hops_default_to_the_hosts_router_in_production(
    env: str, value: str | None, expected: int
) -> None:
    """CONNECTOR_TRUSTED_PROXIES: one hop (Heroku's router) in production unless set."""
    from cryptography.fernet import Fernet

    environ = {
        "CONNECTOR_ENV": env,
        "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "SECRET_KEY": "s",
        "APP_URL": "https://connector.example",
    }
    if value is not None:
        environ["CONNECTOR_TRUSTED_PROXIES"] = value
    assert expected == Settings.from_env(environ).trusted_proxies


@pytest.mark.parametrize("value", ["-1", "6", "one"])
def test_a_trusted_proxy_count_out_of_range_is_refused(value: str) -> None:
    """A count that no deployment has is a configuration error, named."""
    from connector.errors import ConfigError

    with pytest.raises(ConfigError, match="CONNECTOR_TRUSTED_PROXIES"):
        Settings.from_env({"CONNECTOR_TRUSTED_PROXIES": value})


# -- redaction ------------------------------------------------------------------------------


@given(
    name=st.sampled_from(SECRET_PARAMS),
    value=st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%+/=",
        min_size=8,
        max_size=200,
    ),
    position=st.sampled_from(["first", "middle", "last"]),
)
def test_a_secret_query_value_never_survives_redaction(
    name: str, value: str, position: str
) -> None:
    """Wherever a secret parameter sits in a request line, its value is gone, its name kept."""
    skeleton = (
        f'"GET /shopify/callback?{name}=[redacted]&shop=a.myshopify.com&timestamp=1'
    )
    assume(
        value not in skeleton + ' HTTP/1.1" 302 0'
    )  # else it is there for other reasons
    params = {
        "first": f"{name}={value}&shop=a.myshopify.com",
        "middle": f"shop=a.myshopify.com&{name}={value}&timestamp=1",
        "last": f"shop=a.myshopify.com&{name}={value}",
    }[position]
    line = redact_query(f'"GET /shopify/callback?{params} HTTP/1.1" 302 0')
    assert value not in line
    assert f"{name}=[redacted]" in line
    assert "shop=a.myshopify.com" in line


@pytest.mark.parametrize(
    "header",
    ["Cookie", "Authorization", "X-Shopify-Hmac-Sha256", "X-WC-Webhook-Signature"],
)
def test_secret_headers_are_blanked_whole(header: str) -> None:
    """Cookies, credentials and webhook signatures carry no structure worth keeping."""
    assert "[redacted]" == redact_headers(header, "session=abc; other=def")
