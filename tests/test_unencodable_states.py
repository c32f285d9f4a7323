"""A state, nonce or link token no platform ever issues (a lone surrogate, non-ASCII text) is
refused as unknown (4xx with a clear message), never a 500 from encoding or comparing it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connector.errors import OAuthStateError
from connector.runtime import Runtime
from connector.store import queries

WOO_KEYS = {
    "consumer_key": "ck_1",
    "consumer_secret": "cs_1",
    "key_permissions": "read_write",
}


def _woo_body(user_id_json: str) -> bytes:
    rest = json.dumps(WOO_KEYS)[1:]
    return f'{{"user_id":{user_id_json},{rest}'.encode()


CASES = [
    # JSON escape of a lone high surrogate: Python's json decodes it to "\ud800"
    (
        "POST",
        "/woocommerce/callback",
        {"data": _woo_body('"\\ud800"'), "content_type": "application/json"},
        400,
    ),
    # raw bytes ED A0 80 (CESU/surrogate in UTF-8) inside the JSON string
    (
        "POST",
        "/woocommerce/callback",
        {
            "data": _woo_body('"x"').replace(b'"x"', b'"\xed\xa0\x80"'),
            "content_type": "application/json",
        },
        400,
    ),
    (
        "POST",
        "/woocommerce/callback",
        {"data": _woo_body('"\\u00e9t\\u00e9"'), "content_type": "application/json"},
        400,
    ),
    ("GET", "/meta/callback?code=x&state=%ED%A0%80", {}, 400),
    (
        "POST",
        "/meta/pixel",
        {
            "data": b"state=%ED%A0%80&pixel_id=1",
            "content_type": "application/x-www-form-urlencoded",
        },
        400,
    ),
    ("GET", "/meta/connect?connection=1&token=%ED%A0%80", {}, 401),
    # a well-formed expiry and nonce with a non-ASCII signature part
    ("GET", "/meta/connect?connection=1&token=9999999999.a.%C3%A9", {}, 401),
    ("GET", "/meta/connect?connection=1&token=9999999999.a.%ED%A0%80", {}, 401),
    ("GET", "/woocommerce/return?user_id=%ED%A0%80", {}, 400),
]


@pytest.mark.parametrize(("method", "path", "kw", "status"), CASES)
def test_unissuable_state_is_refused_not_500(
    client: Any, method: str, path: str, kw: dict[str, Any], status: int
) -> None:
    rv = client.open(path, method=method, **kw)
    assert rv.status_code == status, rv.data
    assert b"Internal Server Error" not in rv.data


def test_woocommerce_callback_says_the_link_is_not_valid(client: Any) -> None:
    rv = client.post(
        "/woocommerce/callback",
        data=_woo_body('"\\ud800"'),
        content_type="application/json",
    )
    assert rv.status_code == 400
    assert "not valid" in rv.get_json()["detail"]


@pytest.mark.parametrize("nonce", ["\ud800", chr(0xDFFF), "a\ud800b", "été", "\x00é"])
def test_consume_state_treats_unencodable_nonce_as_unknown(
    runtime: Runtime, nonce: str
) -> None:
    with runtime.sessions.begin() as db:
        queries.issue_state(db, "woocommerce-connect", store="https://shop.example")
    with runtime.sessions.begin() as db, pytest.raises(OAuthStateError):
        queries.consume_state(db, nonce, "woocommerce-connect")
